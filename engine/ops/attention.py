"""Attention: torch-shaped SDPA, and what engine's attention ops share (engine/ops/varlen.py: packed varlen attention
and the unpad / pad helpers; engine/ops/decode.py: attention over a KV cache).

Both attention functions run the flash kernel in ``engine.kernels.attention`` when ``engine.backend`` picks Triton,
and PyTorch otherwise (float64, head dims above 256, a mask that requires grad, CPU...). Inputs that require grad
stay on the kernels: the forward saves the log-sum-exp and Triton backward kernels compute dq, dk, dv
(``engine.ops.attention_grad``; masks get no gradient). Dropout runs inside the kernel (a Philox mask seeded from
torch's default generator per call, so ``torch.manual_seed`` reproduces it; a different mask than PyTorch's own
for the same seed). Semantics shared by both paths:

* A query row that can see no key (every key masked out) returns zeros. (PyTorch's SDPA returns NaN there on some
  backends and versions; the fallback path here zeroes such rows too, so both backends agree.)
* ``attn_mask`` together with ``is_causal=True`` applies both (logical AND), on both paths.
* Causal alignment: ``scaled_dot_product_attention`` is top-left aligned like PyTorch (query i sees keys j <= i);
  ``varlen_attention`` is bottom-right aligned per sequence like FlashAttention >= 2.1 (query i sees keys
  j <= i + len_k - len_q). They agree when the query and key lengths are equal.
* Host syncs: none in ``scaled_dot_product_attention``; ``varlen_attention`` makes one (a single copy of a few
  cu_seqlens statistics) to validate its inputs unless ``validate=False``; ``unpad_input`` makes one to return
  ``max_seqlen`` as an int.
* The first CUDA call of each (head dim, dtype, causal, mask kind, sequence-length bucket) autotunes over at most
  three configurations (each compiled once, a few seconds each); fp32 uses one fixed configuration.
* ``relative_position_bias`` (T5's learned bias by distance, a (H, 2L - 1) table: see engine.ops.position_bias) is
  added to the scores after the scale. The flash kernel gathers it tile by tile from the table (no (Nq, Nk) block
  in memory), with every mask kind and causal; the PyTorch path builds only the (H, Nq, Nk) block the call needs.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from engine import backend
from engine.ops._checks import FAST_FLOAT_DTYPES, KERNEL_DTYPES, same_cuda_device
from engine.ops._checks import compiling as _compiling  # torch.compiler.is_compiling, cheaper
from engine.ops.attention_grad import sdpa_forward
from engine.ops.position_bias import bias_block, relative_position_bias_ok
from engine.ops.sdpa_args import _check_sdpa  # SDPA's full check (torch's signature); the cheap path is below

MAX_HEAD_DIM = 256  # largest head dim the kernel tiles
_MAX_GRID_Y = 65535  # CUDA grid dim 1 limit: batch * heads per launch
_Tensor = torch.Tensor
_INF = math.inf
_BOOL, _F32 = torch.bool, torch.float32
_F_SDPA = F.scaled_dot_product_attention


def torch_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """torch's SDPA with only the arguments that differ from its defaults, positionally where it allows (its argument
    parser charges for every argument given, ~1.4k instructions for an explicit None, 0.0, False; ~0.5 us for a
    keyword); scale, keyword-only in torch, only when given (None: torch's 1 / sqrt(D))."""
    if dropout_p == 0.0 and not is_causal:  # the common inference call: no dropout, causality (if any) in the mask
        if mask is None:
            return _F_SDPA(q, k, v) if scale is None else _F_SDPA(q, k, v, scale=scale)
        return _F_SDPA(q, k, v, mask) if scale is None else _F_SDPA(q, k, v, mask, scale=scale)
    if scale is None:
        return _F_SDPA(q, k, v, mask, dropout_p, is_causal)
    return _F_SDPA(q, k, v, mask, dropout_p, is_causal, scale=scale)


# Dispatch (engine.backend), cached per device kind and key = (dtype, mask dtype or None, shape class), where the
# shape class is True when the kernel covers the call's sizes and options, a relative position bias included
# (see the callers).
_SDPA = backend.Route("scaled_dot_product_attention",
                      lambda key: key[2] and key[0] in KERNEL_DTYPES
                      and (key[1] is None or key[1] == torch.bool or key[1] in KERNEL_DTYPES), differentiable=True)
_RNG_LIMIT = 2 ** 31  # dropout in the kernel: Nq * Nk per sequence below this (common.dropout_keep's counter)
_FP32_BWD_MAX_HEAD_DIM = 64  # engine.kernels.attention.bwd.FP32_MAX_HEAD_DIM (not imported: kernels load lazily)


def _backward_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, needs_backward: bool) -> bool:
    """False when the call needs a backward (``needs_backward``, or it records grad) that the backward kernels do not
    cover (fp32 above head dim 64)."""
    return (q.dtype is not torch.float32 or q.shape[-1] <= _FP32_BWD_MAX_HEAD_DIM
            or not (needs_backward or backend.grad_recording(q, k, v)))


def _causal_keep(n_q: int, n_k: int, device: torch.device, *, bottom_right: bool) -> torch.Tensor:
    """(Nq, Nk) bool: True where query i may see key j (top-left: j <= i; bottom-right: j <= i + Nk - Nq)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_k - n_q if bottom_right else 0)


@functools.lru_cache(maxsize=1)
def cpu_sdpa_zeroes_dead_rows() -> bool:
    """True when this PyTorch's CPU SDPA already returns zeros for a row that sees no key (torch 2.13 does, on its
    fused and its math kernels, for bool and -inf masks of every float dtype, with and without grad), so the PyTorch
    path skips its own three-op fix on the CPU (and calls torch's op alone). Found out once per process by running
    both kernels on a tiny input with such a row."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    keep = torch.tensor([True, False, True])[:, None].expand(3, 3)[None, None]  # query row 1 sees no key
    ran = False
    for kernel in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(kernel), torch.enable_grad():
            for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                q, k, v = (torch.randn(1, 2, 3, 8, generator=g).to(dtype) for _ in range(3))
                for mask in (keep, torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, -_INF)):
                    for grad in (False, True):
                        try:
                            out = F.scaled_dot_product_attention(q.detach().requires_grad_(grad), k, v, mask)
                        except RuntimeError:  # this kernel does not take this call here
                            continue
                        ran = True
                        if not (torch.all(out[:, :, 1] == 0) and torch.isfinite(out).all()):
                            return False
    return ran


def _torch_zeroes_dead_rows(q: torch.Tensor) -> bool:
    """torch's SDPA on ``q``'s device zeroes rows that see no key (the CPU, per the probe; outside torch.compile,
    whose trace keeps engine's explicit fix rather than run the probe)."""
    return q.is_cpu and not _compiling() and cpu_sdpa_zeroes_dead_rows()


def _sdpa_torch(q, k, v, mask, dropout_p, is_causal, scale, bias=None, q_offset=0):
    """PyTorch path with this module's semantics (mask AND causal; rows with no visible key -> zeros). ``bias``: a
    relative-position table (H, 2L - 1), the queries at positions q_offset + 0..Nq-1 (keys at 0..Nk-1)."""
    n_q, n_k = q.shape[2], k.shape[2]
    dead, dead_known = None, False  # rows that see no key, when known without scanning a full float mask
    if is_causal and (bias is not None or mask is not None or (scale is not None and not scale > 0)):
        # an explicit triangle, folded into the mask (and the bias below); also for a scale <= 0 (or NaN), where
        # torch 2.13's fused CPU path returns NaN for is_causal
        keep = _causal_keep(n_q, n_k, q.device, bottom_right=False)
        mask = keep if mask is None else mask & keep if mask.dtype == torch.bool else \
            mask.masked_fill(~keep, float("-inf"))
        is_causal = False
    if bias is not None:  # fold the (1, H, Nq, Nk) bias block and the mask into one additive mask
        wide = torch.float64 if q.dtype == torch.float64 else torch.float32
        add = bias_block(bias, q_offset, n_q, n_k, dtype=wide)  # (1, H, Nq, Nk)
        if mask is None or mask.dtype == torch.bool:  # dead rows from the (small) bool mask
            dead_known = True
            if mask is not None:
                if not _torch_zeroes_dead_rows(q):
                    dead = ~mask.any(-1, keepdim=True)
                add = add.masked_fill(~mask, float("-inf"))
        else:
            add = add + mask.to(wide)
        mask = add
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        if torch.finfo(mask.dtype).max > torch.finfo(q.dtype).max:
            # A mask of a wider range than the queries (float32 with fp16 / bf16): narrowed, float32's min would
            # become fp16's, which no longer swamps the scores (a row of it must average every key, as in PyTorch
            # and the kernel). Compute in the mask's dtype instead.
            out = _sdpa_torch(q.to(mask.dtype), k.to(mask.dtype), v.to(mask.dtype), mask, dropout_p, is_causal, scale)
            return out.to(q.dtype)
        mask = mask.to(q.dtype)  # older PyTorch wants the float mask in the query dtype (its range fits)
    out = torch_sdpa(q, k, v, mask, dropout_p, is_causal, scale)
    if mask is not None and not dead_known and not _torch_zeroes_dead_rows(q):
        dead = ~mask.any(-1, keepdim=True) if mask.dtype == torch.bool else (mask == float("-inf")).all(-1, True)
    return out if dead is None else out.masked_fill(dead, 0.0)


def output_like(q: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The attention output buffer: (B, H, Nq, Dv), stored as (B, Nq, H, Dv) when q is a transposed view of that
    layout, so the caller's ``out.transpose(1, 2).reshape(B, Nq, H * Dv)`` is free. (The kernel writes into it;
    the registered op returns this layout on every path.)"""
    b, h, n, d = shape
    if q.stride(1) < q.stride(2) and h > 1 and n > 1:
        return torch.empty(b, n, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False, *,
                                 relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention`` (same arguments, shapes and results), plus
    engine's keyword-only ``relative_position_bias``.

    query: (..., Hq, Nq, D); key: (..., Hk, Nk, D); value: (..., Hv, Nk, Dv); the leading dims broadcast as in
    torch (a key/value batch or head dim of 1 is shared), any rank >= 2, any strides (transposed views are read in
    place). enable_gqa: grouped-query attention as torch: Hk and Hv must divide Hq, and query head i uses key/value
    head i // (Hq / Hk). attn_mask: None, bool (True = attend), or float32 / the query's dtype (added to the
    scores), broadcastable to (..., Nq, Nk): key-padding (B, 1, 1, Nk), full (B, H, Nq, Nk),
    (Nq, Nk), (Nk,), ... Broadcast dims are read with stride 0, never expanded in memory (4-D inputs). is_causal:
    top-left aligned (query i sees keys j <= i), combined with attn_mask by AND (as torch does). dropout_p in
    [0, 1] (applied as torch applies it: always). scale: default 1 / sqrt(D). relative_position_bias: None, or a
    (Hq, 2L - 1) table with L >= max(Nq, Nk): ``table[h, L - 1 + j - i]`` is added to the score of query i and key
    j after the scale (T5; see engine.ops.position_bias), the same for every batch dim. Returns (..., Hq, Nq, Dv)
    in the query's dtype; a row with no visible key is zeros (as torch 2.13). Where this op deliberately differs
    from torch (errors it raises, inputs torch mishandles), see README "Where engine's ops differ from PyTorch".

    Triton runs fp16 / bf16 / fp32 (fp32 in full precision unless ``torch.backends.cuda.matmul.allow_tf32``),
    D <= 256 with Dv == D, dropout_p < 1 (in the kernel, Nq * Nk < 2**31; its own Philox mask, reproduced by
    ``torch.manual_seed``), a finite positive scale, with or without grad (q, k, v; not the mask; fp32 with grad:
    D <= 64; a relative_position_bias only without grad); anything else runs PyTorch's SDPA. GQA key/value heads
    are repeated in memory for the kernel (one copy of K and V per call).
    """
    # Cheap path: 4-D tensors of one float dtype and device with equal batch and head dims (no broadcasting, no GQA
    # grouping), float dropout_p in [0, 1] and a finite float scale (or None), bool is_causal / enable_gqa, a 4-D
    # mask (or None) of bool, float32 or the query's dtype, and a bias table that covers the call (or None):
    # attribute reads that imply every check in _check_sdpa, which then has nothing to reshape.
    compiling = _compiling()
    q, k, v, mask, bias = query, key, value, attn_mask, relative_position_bias
    out_shape = None  # (..., Hq, Nq, Dv) when the call is not 4-D already
    if (isinstance(q, _Tensor) and isinstance(k, _Tensor) and isinstance(v, _Tensor)
            and (dtype := q.dtype) in FAST_FLOAT_DTYPES and k.dtype is dtype and v.dtype is dtype
            and len(qs := q.shape) == 4  # k and v as q (self-attention: one size comparison each), or sizes matched:
            and ((ks := k.shape) == qs or (len(ks) == 4 and ks[0] == qs[0] and ks[1] == qs[1] and ks[3] == qs[3]))
            and ((vs := v.shape) == ks or (len(vs) == 4 and vs[0] == qs[0] and vs[1] == qs[1] and vs[2] == ks[2]))
            and type(dropout_p) is float and 0.0 <= dropout_p <= 1.0 and type(is_causal) is bool
            and type(enable_gqa) is bool and (scale is None or (type(scale) is float and -_INF < scale < _INF))
            and (mask is None or (isinstance(mask, _Tensor)
                                  and ((md := mask.dtype) is _BOOL or md is dtype or md is _F32)
                                  and len(ms := mask.shape) == 4 and ms[0] in (1, qs[0]) and ms[1] in (1, qs[1])
                                  and ms[2] in (1, qs[2]) and ms[3] in (1, ks[2])))
            and (((on_cpu := q.is_cpu) and k.is_cpu and v.is_cpu and (mask is None or mask.is_cpu))
                 or same_cuda_device(q, k, v, mask))
            and (bias is None or relative_position_bias_ok(bias, q, qs[1], qs[2] if qs[2] > ks[2] else ks[2]))):
        b, h, n_q, d = qs
        n_k = ks[2]
        dv = vs[3]
        cuda = not on_cpu  # one device, the CPU or a CUDA device
    else:
        q, k, v, mask, dropout_p, scale, bias, out_shape = _check_sdpa(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, relative_position_bias)
        b, h, n_q, d = q.shape
        n_k, dv, dtype, on_cpu, cuda = k.shape[2], v.shape[3], q.dtype, q.is_cpu, q.is_cuda
        md = None if mask is None else mask.dtype
        if len(out_shape) == 4:
            out_shape = None

    if compiling:
        # the registered op takes the call as given (any rank, broadcasting, enable_gqa): its fake implementation
        # runs _check_sdpa on the trace's tensors, so the compiled graph has the eager semantics
        if not backend.grad_recording(query, key, value, attn_mask, bias):
            return torch.ops.engine.scaled_dot_product_attention(query, key, value, attn_mask, float(dropout_p),
                                                                 is_causal, scale, enable_gqa, bias)
        if (out_shape is None and bias is None and dropout_p == 0.0 and (scale is None or 0.0 < scale < _INF)
                and not backend.grad_recording(mask)):  # the differentiable op (4-D checked call)
            return torch.ops.engine.scaled_dot_product_attention_lse(q, k, v, mask, is_causal, scale)[0]
    elif not _SDPA.pytorch_only(cuda) and sdpa_route(q, k, v, mask, dropout_p, is_causal, scale, bias):
        if backend.grad_recording(q, k, v):
            from engine.ops.attention_grad import FlashSDPA

            out = FlashSDPA.apply(q, k, v, mask, is_causal, scale, float(dropout_p))
        else:
            out = _sdpa_kernel(q, k, v, mask, is_causal, scale, dropout_p, bias)
        return out if out_shape is None else out.reshape(out_shape)
    # (on_cpu and not compiling and cpu_sdpa_zeroes_dead_rows(): _torch_zeroes_dead_rows(q) from what was read;
    # md: the mask's dtype)
    if bias is None and (mask is None if is_causal else mask is None or (
            (md is _BOOL or md is dtype) and on_cpu and not compiling and cpu_sdpa_zeroes_dead_rows())) and (
            not is_causal or scale is None or scale > 0):  # torch's op alone has these semantics
        out = torch_sdpa(q, k, v, mask, dropout_p, is_causal, scale)
    else:
        out = _sdpa_torch(q, k, v, mask, dropout_p, is_causal, scale, bias)
    return out if out_shape is None else out.reshape(out_shape)


def sdpa_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float,
               is_causal: bool, scale: float | None, bias: torch.Tensor | None = None, *,
               needs_backward: bool = False) -> bool:
    """True when ``engine.backend`` sends this (checked, 4-D) call of ``scaled_dot_product_attention`` to the kernels
    (with or without grad: the kernels have a backward; a mask that requires grad takes PyTorch, which gives it
    one; a relative position bias runs on the kernels only without grad). needs_backward: decide as for a call
    that records grad (the differentiable registered ops)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    shape_ok = (v.shape[3] == d and d <= MAX_HEAD_DIM
                and (scale is None or 0.0 < scale < _INF)  # the kernel scales row maxima: a finite scale > 0
                and b > 0 and h > 0 and n_q > 0 and n_k > 0 and b * h <= _MAX_GRID_Y
                and (dropout_p == 0.0 or (dropout_p < 1.0 and n_q * n_k < _RNG_LIMIT))
                and (mask is None or not backend.grad_recording(mask)) and _backward_ok(q, k, v, needs_backward)
                and (bias is None or not (needs_backward or backend.grad_recording(q, k, v, bias))))
    return _SDPA(q, (q.dtype, None if mask is None else mask.dtype, shape_ok), k, v, mask, bias)


def _sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                 scale: float | None, dropout_p: float = 0.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton path of ``scaled_dot_product_attention`` without grad (arguments checked, (B, H, N, D); mask 4-D
    or None; bias a table covering the call or None)."""
    return sdpa_forward(q, k, v, mask, is_causal, scale, dropout_p, bias=bias)[0]
