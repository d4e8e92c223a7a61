"""The Triton path of the attention ops, forward and backward: kernel calls, and the autograd Functions that make
``ops.scaled_dot_product_attention`` and ``ops.varlen_attention`` differentiable on that path.

Forward with grad: the flash kernel also stores each query row's softmax statistics ``lse`` ((2, B, H, Nq) /
(2, H, total_q) fp32: row max and log2 of the row sum, base 2); the Function saves q, k, v, the output and lse (O(N) beyond the inputs, never N x N), and its backward runs
``engine.kernels.attention.bwd`` (Delta preprocess, dK/dV kernel, dQ kernel). Masks get no gradient (a mask that
requires grad is sent to the PyTorch path by the op). Dropout: one Philox seed per call, drawn from torch's default
generator (``dropout_seed``: ``torch.manual_seed`` reproduces the masks); the backward regenerates the forward's
keep mask from it.

``engine.ops.library_attention`` registers the same forward / backward as custom ops with ``register_autograd`` so
torch.compile traces calls that need grad (without dropout: see there).
"""
from __future__ import annotations

import torch


def dropout_seed() -> int:
    """A Philox seed for one call's attention dropout, from torch's default CPU generator (no device sync)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def _dropout(dropout_p: float, seed: int | None) -> tuple[int, float] | None:
    if dropout_p <= 0.0:
        return None
    return (dropout_seed() if seed is None else seed, float(dropout_p))


def sdpa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                 scale: float | None, dropout_p: float = 0.0, *, seed: int | None = None,
                 with_lse: bool = False, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The flash forward of ``scaled_dot_product_attention`` (arguments checked; mask 4-D or None): returns
    (out (B, H, Nq, D), lse (2, B, H, Nq) fp32 when ``with_lse`` else None). ``seed``: the dropout seed (None: draw).
    bias: a relative position table covering the call (forward only: no backward reads it)."""
    from engine.kernels.attention import attention_fwd
    from engine.ops.attention import output_like

    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    out = output_like(q, (b, h, n_q, d))
    lse = torch.empty(2, b, h, n_q, dtype=torch.float32, device=q.device) if with_lse else None
    mask4 = None if mask is None else mask.expand(b, h, n_q, n_k)
    attention_fwd(q, k, v, out, mask=mask4, causal=is_causal, scale=d ** -0.5 if scale is None else scale, lse=lse,
                  dropout=_dropout(dropout_p, seed), relative_position_bias=bias)
    return out, lse


def sdpa_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, scale: float | None,
                  dropout_p: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``sdpa_forward`` for the output gradient ``grad`` (B, H, Nq, D), any strides."""
    from engine.kernels.attention import attention_bwd

    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask4 = None if mask is None else mask.expand(b, h, n_q, n_k)
    attention_bwd(grad, q, k, v, out, lse, dq, dk, dv, mask=mask4, causal=is_causal,
                  scale=d ** -0.5 if scale is None else scale,
                  dropout=(seed, float(dropout_p)) if dropout_p > 0.0 else None)
    return dq, dk, dv


def varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                   max_q: int, causal: bool, scale: float, dropout_p: float = 0.0, *, seed: int | None = None,
                   with_lse: bool = False, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The flash forward of ``varlen_attention`` (checked; scale resolved): (out (total_q, H, D), lse (2, H, total_q)
    fp32 or None). bias: as for ``sdpa_forward``."""
    from engine.kernels.attention import varlen_fwd

    total_q, h, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(2, h, total_q, dtype=torch.float32, device=q.device) if with_lse else None
    if total_q == 0 or max_q == 0 or k.shape[0] == 0:  # nothing to attend (and no empty pointers to launch)
        if lse is not None:
            lse[0].fill_(float("inf"))
            lse[1].zero_()
        return out.zero_(), lse
    varlen_fwd(q, k, v, out, cu_q, cu_k, max_q, causal=causal, scale=scale, lse=lse,
               dropout=_dropout(dropout_p, seed), relative_position_bias=bias)
    return out, lse


def varlen_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int, causal: bool,
                    scale: float, dropout_p: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv) of ``varlen_forward`` for ``grad`` (total_q, H, D)."""
    from engine.kernels.attention import varlen_bwd

    dq, dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if q.shape[0] == 0 or k.shape[0] == 0 or max_q == 0 or max_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    varlen_bwd(grad, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, causal=causal, scale=scale,
               dropout=(seed, float(dropout_p)) if dropout_p > 0.0 else None)
    return dq, dk, dv


class FlashSDPA(torch.autograd.Function):
    """``FlashSDPA.apply(q, k, v, mask, is_causal, scale, dropout_p)``: the flash kernel with its backward."""

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale, dropout_p):
        seed = dropout_seed() if dropout_p > 0.0 else 0
        out, lse = sdpa_forward(q, k, v, mask, is_causal, scale, dropout_p, seed=seed, with_lse=True)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.args = (is_causal, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = sdpa_backward(grad, q, k, v, out, lse, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None


class FlashVarlen(torch.autograd.Function):
    """``FlashVarlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, dropout_p)``."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, dropout_p):
        seed = dropout_seed() if dropout_p > 0.0 else 0
        out, lse = varlen_forward(q, k, v, cu_q, cu_k, max_q, causal, scale, dropout_p, seed=seed, with_lse=True)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, causal, scale, dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = varlen_backward(grad, q, k, v, out, lse, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None


# ---- the differentiable custom ops' bodies (engine.ops.library_attention: torch.compile with grad, no dropout) -
# The op decides Triton or PyTorch at run time, like the public functions; its backward makes the same decision
# (same environment, device and shapes), so a kernel forward always meets the kernel backward. On the PyTorch path
# the forward's lse is an unused placeholder, zeros (not torch.empty: an op's output is never uninitialised memory,
# which would differ from call to call), and the backward computes the PyTorch path's gradients by the explicit
# formulas (attention_grads_torch): autograd does not record inside a registered op's backward.

def sdpa_lse_op(q, k, v, mask, is_causal, scale):
    """(out, lse) for ``torch.ops.engine.scaled_dot_product_attention_lse`` (arguments checked)."""
    from engine.ops.attention import _sdpa_torch, output_like, sdpa_route

    if sdpa_route(q, k, v, mask, 0.0, is_causal, scale, needs_backward=True):
        return sdpa_forward(q, k, v, mask, is_causal, scale, with_lse=True)

    y = _sdpa_torch(q, k, v, mask, 0.0, is_causal, scale)
    out = output_like(q, y.shape)  # the layout the fake implementation promises
    return out.copy_(y), torch.zeros(2, *q.shape[:3], dtype=torch.float32, device=q.device)


def sdpa_backward_op(grad, q, k, v, out, lse, mask, is_causal, scale):
    """(dq, dk, dv) for ``torch.ops.engine.scaled_dot_product_attention_backward``."""
    from engine.ops.attention import sdpa_route

    if sdpa_route(q, k, v, mask, 0.0, is_causal, scale, needs_backward=True):
        return sdpa_backward(grad, q, k, v, out, lse, mask, is_causal, scale)
    return attention_grads_torch(grad, q, k, v, mask, is_causal, scale)


def varlen_lse_op(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, validate):
    """(out, lse) for ``torch.ops.engine.varlen_attention_lse``."""
    from engine.ops.varlen import _validate_cu_values, _varlen_torch, varlen_route

    scale = q.shape[2] ** -0.5 if scale is None else scale
    if validate:
        _validate_cu_values(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)
    if varlen_route(q, k, v, cu_q, cu_k, max_q, max_k, scale, needs_backward=True):
        return varlen_forward(q, k, v, cu_q, cu_k, max_q, causal, scale, with_lse=True)
    out = _varlen_torch(q, k, v, cu_q.tolist(), cu_k.tolist(), causal, scale)
    return out, torch.zeros(2, q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)


def varlen_backward_op(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale):
    """(dq, dk, dv) for ``torch.ops.engine.varlen_attention_backward``."""
    from engine.ops.attention import _causal_keep
    from engine.ops.varlen import varlen_route

    scale = q.shape[2] ** -0.5 if scale is None else scale
    if varlen_route(q, k, v, cu_q, cu_k, max_q, max_k, scale, needs_backward=True):
        return varlen_backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for (qs, qe), (ks, ke) in zip(zip(cq[:-1], cq[1:]), zip(ck[:-1], ck[1:])):
        if qe == qs or ke == ks:
            continue
        keep = _causal_keep(qe - qs, ke - ks, q.device, bottom_right=True) if causal else None
        heads = [t.transpose(0, 1).unsqueeze(0) for t in (grad[qs:qe], q[qs:qe], k[ks:ke], v[ks:ke])]
        for full, part in zip((dq[qs:qe], dk[ks:ke], dv[ks:ke]), attention_grads_torch(*heads, keep, False, scale)):
            full.copy_(part.squeeze(0).transpose(0, 1))
    return dq, dk, dv


def attention_grads_torch(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          mask: torch.Tensor | None, is_causal: bool, scale: float | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the PyTorch path's attention (q (B, H, Nq, D), k / v (B, H, Nk, D), mask None, bool or
    additive, broadcastable to (B, H, Nq, Nk); causal top-left) by the explicit formulas, in fp32 (float64 for
    float64): P = softmax(S), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q * scale.
    Rows that see no key (zeros in the forward) get zero gradients. No autograd: this runs inside registered ops'
    backward, where autograd does not record."""
    from engine.ops.attention import _causal_keep

    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    g, qf, kf, vf = (t.to(wide) for t in (grad, q, k, v))
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)) * sc
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(wide)
    if is_causal:
        s = s.masked_fill(~_causal_keep(s.shape[-2], s.shape[-1], s.device, bottom_right=False), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(nan=0.0)  # a row of -inf only: NaN -> 0 (its output is zeros)
    dv = p.transpose(-1, -2) @ g
    dp = g @ vf.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq, dk = (ds @ kf) * sc, (ds.transpose(-1, -2) @ qf) * sc
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

