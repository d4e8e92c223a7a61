"""Backward of the norm and GELU ops: autograd Functions over the Triton kernels, and the backward computations
the registered custom ops (engine.ops.library_norm_gelu) call from their ``register_autograd`` formulas.

    norm_fn(x, residual, weight, bias, n, eps, rms=...)      -> y, or (y, x + residual)   (differentiable)
    gelu_fn(x, bias, approximate, gated=...)                 -> y                         (differentiable)
    norm_backward(dy, ds, v, weight, eps, rms=...)           -> (dv, dweight, dbias)      rows (M, N)
    gelu_backward(dy, x, bias, approximate, gated=...)       -> dx                        rows

The ops (engine.ops.norm, engine.ops.activation) call ``norm_fn`` / ``gelu_fn`` when their dispatch chose the
kernel and autograd records a tensor of the call (engine.backend: "requires grad -> our kernels with backward").
The forward runs the inference kernel and saves only what the backward needs: the normalised input (x, or the
x + residual the forward returns anyway) and the weight for the norms (the backward kernel recomputes the fp32 row
statistics from them, in registers), the input and bias for GELU. The backward routes again (engine.backend):
the Triton backward kernels, or the same formulas in PyTorch (fp32 math; float64, CPU outside the interpreter,
ENGINE_BACKEND=torch); the tests hold both to float64 autograd of the reference ops.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from engine import backend
from engine.ops._checks import KERNEL_DTYPES

__all__ = ["gelu_backward", "gelu_fn", "norm_backward", "norm_fn"]

_NORM_BWD = backend.Route("norm_backward", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_GELU_BWD = backend.Route("gelu_backward", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)


def rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as (rows, n) with unit column stride: a view when the strides allow, else a copy."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


# ---- backward computations (rows) -------------------------------------------------------------------------
def norm_backward(dy: torch.Tensor, ds: torch.Tensor | None, v: torch.Tensor, weight: torch.Tensor | None,
                  eps: float, *, rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of LayerNorm (RMSNorm: ``rms``) of the rows of ``v`` (M, N) given the output's gradient ``dy``
    (M, N) and, for the add + norm ops, the gradient ``ds`` (M, N) of the returned x + residual (or None).
    weight: (N,) or None. Returns (dv (M, N) in v's dtype, dweight (N,) in v's dtype, dbias (N,) or None for
    RMSNorm); dweight / dbias are computed (reduced in fp32) even when weight / bias is None."""
    n = v.shape[-1]
    if _NORM_BWD(v, v.dtype, dy, ds, weight):
        from engine.kernels.norm import norm_bwd

        dv, dw, db = norm_bwd(rows(v, n), rows(dy, n), weight, eps, rms=rms,
                              ds=None if ds is None else rows(ds, n))
        return dv, dw.to(v.dtype), None if db is None else db.to(v.dtype)
    # PyTorch, the same formulas in fp32 (float64 stays float64); no nested autograd, so it also runs inside a
    # compiled graph's backward (the registered engine::norm_backward).
    ct = torch.float64 if v.dtype == torch.float64 else torch.float32
    v32, dy32 = v.to(ct), dy.to(ct)
    d = v32 if rms else v32 - v32.mean(-1, keepdim=True)
    rstd = torch.rsqrt(d.square().mean(-1, keepdim=True) + eps)
    xhat = d * rstd
    g = dy32 if weight is None else dy32 * weight.to(ct)
    dv = g - xhat * (g * xhat).mean(-1, keepdim=True)
    if not rms:
        dv = dv - g.mean(-1, keepdim=True)
    dv = dv * rstd
    if ds is not None:
        dv = dv + ds.to(ct)
    dw = (dy32 * xhat).reshape(-1, n).sum(0)
    db = None if rms else dy32.reshape(-1, n).sum(0)
    return dv.to(v.dtype), dw.to(v.dtype), None if db is None else db.to(v.dtype)


def _gelu_and_grad(v: torch.Tensor, approximate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(v), gelu'(v)) elementwise, in v's dtype (the caller passes fp32 or float64)."""
    if approximate == "tanh":
        k = 0.7978845608028654  # sqrt(2 / pi)
        sig = torch.sigmoid(2.0 * k * (v + 0.044715 * v ** 3))  # (1 + tanh(u)) / 2
        return v * sig, sig + v * 2.0 * sig * (1.0 - sig) * k * (1.0 + 3.0 * 0.044715 * v * v)
    cdf = 0.5 * (1.0 + torch.erf(v * 0.7071067811865476))
    return v * cdf, cdf + v * 0.3989422804014327 * torch.exp(-0.5 * v * v)


def gelu_backward(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, approximate: str, *,
                  gated: bool) -> torch.Tensor:
    """dx of gelu(x + bias) (bias (N,) or None) or, ``gated``, of gelu(x[:, :N]) * x[:, N:], for rows x (M, N) or
    (M, 2N) and dy (M, N). The bias gradient is dx summed over rows (the caller's)."""
    if _GELU_BWD(x, x.dtype, dy, bias):
        from engine.kernels.gelu import gelu_bwd

        n = dy.shape[-1]
        return gelu_bwd(rows(x, x.shape[-1]), rows(dy, n), bias, approximate=approximate, gated=gated)
    # PyTorch, the kernel's formulas in fp32 (float64 stays float64); no nested autograd (see norm_backward).
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    dy32 = dy.to(ct)
    if gated:
        n = x.shape[-1] // 2
        y, dg = _gelu_and_grad(x[..., :n].to(ct), approximate)
        return torch.cat([dy32 * x[..., n:].to(ct) * dg, dy32 * y], -1).to(x.dtype)
    v = x.to(ct) if bias is None else x.to(ct) + bias.to(ct)
    return (dy32 * _gelu_and_grad(v, approximate)[1]).to(x.dtype)


def bias_grad(dx: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """dbias of a bias added along the last dimension: dx (..., N) summed over the rest, in fp32 (float64 stays
    float64: the registered bias_gelu's formula also runs for float64 tensors)."""
    acc = torch.float64 if bias.dtype == torch.float64 else torch.float32
    return dx.reshape(-1, bias.shape[0]).sum(0, dtype=acc).to(bias.dtype)


# ---- autograd Functions over the kernels ------------------------------------------------------------------
class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, n, eps, rms):
        from engine.kernels.norm import norm_fwd

        w = weight.reshape(n).contiguous() if weight is not None else None
        b = bias.reshape(n).contiguous() if bias is not None else None
        x2 = rows(x, n)
        y, s = norm_fwd(x2, w, b, eps, rms=rms, residual=None if residual is None else rows(residual, n))
        ctx.save_for_backward(x2 if s is None else s, w)
        ctx.set_materialize_grads(False)
        ctx.meta = (n, eps, rms, x.shape, None if weight is None else weight.shape,
                    None if bias is None else bias.shape, residual is not None)
        return y.view(x.shape) if s is None else (y.view(x.shape), s.view(x.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, ds=None):
        v, w = ctx.saved_tensors
        n, eps, rms, shape, wshape, bshape, has_res = ctx.meta
        if dy is None:
            dy = torch.zeros_like(v)
        dv, dw, db = norm_backward(rows(dy, n), None if ds is None else rows(ds, n), v, w, eps, rms=rms)
        dx = dv.view(shape)
        return (dx, dx if has_res else None, None if wshape is None else dw.view(wshape),
                None if bshape is None else db.view(bshape), None, None, None)


def norm_fn(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
            n: int, eps: float, *, rms: bool):
    """The kernel forward of layer_norm / rms_norm (``residual`` None; rows of n = prod(normalized_shape)) or of
    add_layer_norm / add_rms_norm (rows of the last dim), recorded for autograd. Arguments checked by the op.
    Returns y, or (y, x + residual)."""
    return _Norm.apply(x, residual, weight, bias, n, eps, rms)


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate, gated):
        from engine.kernels.gelu import gelu_fwd

        n = x.shape[-1] if x.dim() else 1
        x2 = x.reshape(1, -1) if bias is None and not gated else rows(x, n)
        y = gelu_fwd(x2, bias, approximate=approximate, gated=gated)
        ctx.save_for_backward(x2, bias)
        ctx.meta = (approximate, gated, x.shape)
        return y.view(*x.shape[:-1], n // 2) if gated else y.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        approximate, gated, shape = ctx.meta
        dx = gelu_backward(dy.reshape(x2.shape[0], -1), x2, bias, approximate, gated=gated).view(shape)
        return dx, None if bias is None or not ctx.needs_input_grad[1] else bias_grad(dx, bias), None, None


def gelu_fn(x: torch.Tensor, bias: torch.Tensor | None, approximate: str, *, gated: bool = False) -> torch.Tensor:
    """The kernel forward of gelu / bias_gelu (bias (N,) over the last dim) / gelu_and_mul (``gated``), recorded
    for autograd. Arguments checked by the op."""
    return _Gelu.apply(x, bias, approximate, gated)
