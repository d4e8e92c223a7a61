"""LayerNorm, RMSNorm and their fused residual-add forms: argument checks, then the Triton kernel or PyTorch.

    ops.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)        # as F.layer_norm
    ops.add_layer_norm(x, residual, weight, bias, eps=1e-5) -> (normed, x + residual)
    ops.rms_norm(input, normalized_shape, weight=None, eps=None)                      # as F.rms_norm
    ops.add_rms_norm(x, residual, weight, eps=None) -> (normed, x + residual)

The kernel (engine.kernels.norm, one family with an RMS flag) takes fp32/fp16/bf16 rows of any length with fp32
statistics. Everything else (float64, inputs that require grad, ENGINE_BACKEND=torch, CPU tensors outside the
interpreter) runs the PyTorch op, which has the same semantics.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine import backend
from engine.ops._checks import (
    KERNEL_DTYPES,
    check_floating,
    check_out,
    check_same_device,
    check_same_dtype,
)

__all__ = ["add_layer_norm", "add_rms_norm", "layer_norm", "rms_norm"]


def _normalized_shape(normalized_shape: object, input: torch.Tensor) -> tuple[int, ...]:
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        shape: tuple[int, ...] = (normalized_shape,)
    elif isinstance(normalized_shape, Sequence) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in normalized_shape
    ):
        shape = tuple(normalized_shape)
    else:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints; got {normalized_shape!r}"
        )
    if not shape or len(shape) > input.dim() or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise ValueError(
            f"normalized_shape must be non-empty and equal the last dimensions of input; got normalized_shape "
            f"{shape} for input of shape {tuple(input.shape)}"
        )
    return shape


def _check_affine(name: str, t: object, shape: tuple[int, ...]) -> torch.Tensor | None:
    if t is None:
        return None
    t = check_floating(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (normalized_shape); got {tuple(t.shape)}")
    return t


def _check_eps(eps: object, dtype: torch.dtype | None = None) -> float:
    """eps as a float; None (RMSNorm only, as F.rms_norm) means ``torch.finfo(dtype).eps``."""
    if eps is None and dtype is not None:
        return float(torch.finfo(dtype).eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float; got {type(eps).__name__}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return float(eps)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as (rows, n) with unit column stride: a view when the strides allow, else a copy."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def _norm(input: torch.Tensor, normalized_shape: object, weight: torch.Tensor | None, bias: torch.Tensor | None,
          eps: object, out: torch.Tensor | None, *, rms: bool) -> torch.Tensor:
    """layer_norm / rms_norm after their own signatures: checks, then dispatch."""
    input = check_floating("input", input)
    shape = _normalized_shape(normalized_shape, input)
    weight = _check_affine("weight", weight, shape)
    bias = _check_affine("bias", bias, shape)
    eps = _check_eps(eps, input.dtype if rms else None)
    check_same_device(input=input, weight=weight, bias=bias)
    check_same_dtype(input=input, weight=weight, bias=bias)
    if out is not None:
        out = check_out("out", out, shape=input.shape, dtype=input.dtype, device=input.device)

    op = "rms_norm" if rms else "layer_norm"
    if not backend.use_triton(input, weight, bias, supported=input.dtype in KERNEL_DTYPES, op=op):
        y = F.rms_norm(input, shape, weight, eps) if rms else F.layer_norm(input, shape, weight, bias, eps)
        return out.copy_(y) if out is not None else y

    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return out
    from engine.kernels.norm import norm_fwd

    n = math.prod(shape)
    w = weight.reshape(n).contiguous() if weight is not None else None
    b = bias.reshape(n).contiguous() if bias is not None else None
    norm_fwd(_rows(input, n), w, b, eps, rms=rms, out=out.view(-1, n))
    return out


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dimensions, as ``torch.nn.functional.layer_norm``.

    input: (*, *normalized_shape), fp32/fp16/bf16 on the kernel path (float64 goes to PyTorch).
    weight, bias: normalized_shape or None, input's dtype and device. eps >= 0.
    out: optional contiguous buffer of input's shape and dtype to write into (it must not overlap the input).
    Returns (*, *normalized_shape) in input's dtype; statistics are computed in fp32.
    """
    return _norm(input, normalized_shape, weight, bias, eps, out, rms=False)


def rms_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm over the trailing ``normalized_shape`` dimensions, as ``torch.nn.functional.rms_norm``:
    ``input / sqrt(mean(input**2) + eps) * weight`` (no mean subtraction, no bias: T5's LayerNorm).

    input: (*, *normalized_shape), fp32/fp16/bf16 on the kernel path (float64 goes to PyTorch).
    weight: normalized_shape or None, input's dtype and device. eps >= 0, or None for
    ``torch.finfo(input.dtype).eps`` (as torch). out: optional contiguous buffer of input's shape and dtype.
    Returns (*, *normalized_shape) in input's dtype; the mean square is computed in fp32.
    """
    return _norm(input, normalized_shape, weight, None, eps, out, rms=True)


def _add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: object, out: torch.Tensor | None, residual_out: torch.Tensor | None, *,
              rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """add_layer_norm / add_rms_norm after their own signatures: checks, then dispatch."""
    x = check_floating("x", x)
    residual = check_floating("residual", residual)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the normalised one); got a 0-d tensor")
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have the same shape as x; got residual {tuple(residual.shape)}, x {tuple(x.shape)}"
        )
    shape = (x.shape[-1],)
    weight = _check_affine("weight", weight, shape)
    bias = _check_affine("bias", bias, shape)
    eps = _check_eps(eps, x.dtype if rms else None)
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    check_same_dtype(x=x, residual=residual, weight=weight, bias=bias)
    if out is not None:
        out = check_out("out", out, shape=x.shape, dtype=x.dtype, device=x.device)
    if residual_out is not None:
        residual_out = check_out("residual_out", residual_out, shape=x.shape, dtype=x.dtype, device=x.device)

    supported = x.dtype in KERNEL_DTYPES
    op = "add_rms_norm" if rms else "add_layer_norm"
    if not backend.use_triton(x, residual, weight, bias, supported=supported, op=op):
        s = x + residual
        y = F.rms_norm(s, shape, weight, eps) if rms else F.layer_norm(s, shape, weight, bias, eps)
        if out is not None:
            y = out.copy_(y)
        if residual_out is not None:
            s = residual_out.copy_(s)
        return y, s

    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual_out is None:
        residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out, residual_out
    from engine.kernels.norm import norm_fwd

    n = shape[0]
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    norm_fwd(_rows(x, n), w, b, eps, rms=rms, residual=_rows(residual, n), out=out.view(-1, n),
             residual_out=residual_out.view(-1, n))
    return out, residual_out


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``s = x + residual; layer_norm(s)`` over the last dimension; returns ``(normed, s)``.

    x, residual: (*, N), same shape, dtype (fp32/fp16/bf16 on the kernel path) and device.
    weight, bias: (N,) or None. The kernel reads each input once and writes each output once: ``s`` is stored
    in x's dtype and the normalisation uses the fp32 sum (the PyTorch path normalises the stored sum).
    out, residual_out: optional contiguous (*, N) buffers for ``normed`` and ``s`` (not overlapping the inputs).
    Serves pre-LN blocks (GPT-2: keep ``s`` as the new residual stream) and post-LN blocks (BERT: keep ``normed``).
    """
    return _add_norm(x, residual, weight, bias, eps, out, residual_out, rms=False)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float | None = None,
    *,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``s = x + residual; rms_norm(s)`` over the last dimension; returns ``(normed, s)``.

    x, residual: (*, N), same shape, dtype (fp32/fp16/bf16 on the kernel path) and device. weight: (N,) or None.
    eps: as ``rms_norm`` (None: ``torch.finfo(x.dtype).eps``). Same conventions as ``add_layer_norm``: one read
    of each input, one write of each output; ``s`` is stored in x's dtype and normalised from the fp32 sum.
    Serves pre-norm blocks (T5: keep ``s`` as the residual stream, feed ``normed`` to the next sublayer).
    """
    return _add_norm(x, residual, weight, None, eps, out, residual_out, rms=True)
