"""LayerNorm, RMSNorm and their fused residual-add forms: argument checks, then the Triton kernel or PyTorch.

    ops.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)        # as F.layer_norm
    ops.add_layer_norm(x, residual, weight, bias, eps=1e-5) -> (normed, x + residual)
    ops.rms_norm(input, normalized_shape, weight=None, eps=None)                      # as F.rms_norm
    ops.add_rms_norm(x, residual, weight, eps=None) -> (normed, x + residual)

The kernel (engine.kernels.norm, one family with an RMS flag) takes fp32/fp16/bf16 rows of any length with fp32
statistics. Inputs that require grad run the same kernel inside an autograd Function whose backward is the
Triton backward kernel (engine.ops.grad; under torch.compile: the registered op's autograd formula). Everything
else (float64, ENGINE_BACKEND=torch, CPU tensors outside the interpreter) runs the PyTorch op, which has the same
semantics (and PyTorch's gradients).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from engine import backend
from engine.ops import grad
from engine.ops._checks import (
    FAST_FLOAT_DTYPES,
    KERNEL_DTYPES,
    check_floating,
    check_out,
    check_same_device,
    check_same_dtype,
    same_cuda_device,
)
from engine.ops._checks import compiling as _compiling  # torch.compiler.is_compiling, cheaper

__all__ = ["add_layer_norm", "add_rms_norm", "layer_norm", "rms_norm"]

_Tensor = torch.Tensor
_SHAPE_TYPES = (tuple, list, torch.Size)
_INF = math.inf
# Dispatch (engine.backend), cached per device kind and dtype: the kernels take every row length.
# differentiable=True: a call that autograd records runs the kernels' autograd Function (engine.ops.grad).
_LAYER_NORM = backend.Route("layer_norm", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_ADD_LAYER_NORM = backend.Route("add_layer_norm", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_RMS_NORM = backend.Route("rms_norm", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_ADD_RMS_NORM = backend.Route("add_rms_norm", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_RMS_EPS = {dtype: float(torch.finfo(dtype).eps) for dtype in FAST_FLOAT_DTYPES}  # rms eps=None, per dtype


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


def _check_norm(input: object, normalized_shape: object, weight: object, bias: object, eps: object, out: object, *,
                rms: bool) -> tuple:
    """Every check of ``layer_norm``'s (``rms_norm``'s: ``rms``, bias None) arguments; returns
    (shape, weight, bias, eps, out)."""
    input = check_floating("input", input)
    shape = _normalized_shape(normalized_shape, input)
    weight = _check_affine("weight", weight, shape)
    bias = _check_affine("bias", bias, shape)
    eps = _check_eps(eps, input.dtype if rms else None)
    check_same_device(input=input, weight=weight, bias=bias)
    check_same_dtype(input=input, weight=weight, bias=bias)
    if out is not None:
        out = check_out("out", out, shape=input.shape, dtype=input.dtype, device=input.device)
    return shape, weight, bias, eps, out


def _norm(input: torch.Tensor, normalized_shape: object, weight: torch.Tensor | None, bias: torch.Tensor | None,
          eps: object, out: torch.Tensor | None, *, rms: bool) -> torch.Tensor:
    """layer_norm / rms_norm after their own signatures: checks, then dispatch."""
    compiling = _compiling()
    if eps is None and rms and isinstance(input, _Tensor):  # F.rms_norm's default: the dtype's machine epsilon
        eps = _RMS_EPS.get(input.dtype)
    # Cheap path: one normalised dim, tensor (or None) weight and bias of input's dtype on its device, float eps,
    # no out: a few attribute reads that imply every check in _check_norm.
    ns = normalized_shape
    n = ns if type(ns) is int else ns[0] if type(ns) in _SHAPE_TYPES and len(ns) == 1 and type(ns[0]) is int else 0
    if not (n > 0 and out is None and type(eps) is float and 0.0 <= eps < _INF and isinstance(input, _Tensor)
            and (dtype := input.dtype) in FAST_FLOAT_DTYPES and (xs := input.shape) and xs[-1] == n
            and (weight is None or (isinstance(weight, _Tensor) and weight.dtype is dtype and weight.shape == (n,)))
            and (bias is None or (isinstance(bias, _Tensor) and bias.dtype is dtype and bias.shape == (n,)))
            and ((input.is_cpu and (weight is None or weight.is_cpu) and (bias is None or bias.is_cpu))
                 or same_cuda_device(input, weight, bias))):
        shape, weight, bias, eps, out = _check_norm(input, normalized_shape, weight, bias, eps, out, rms=rms)
        dtype = input.dtype
    else:
        shape = (n,)

    if compiling:  # the registered op (with its autograd formula)
        y = (torch.ops.engine.rms_norm(input, list(shape), weight, eps) if rms
             else torch.ops.engine.layer_norm(input, list(shape), weight, bias, eps))
        return out.copy_(y) if out is not None else y
    elif (_RMS_NORM if rms else _LAYER_NORM)(input, dtype, weight, bias):
        return _norm_kernel(input, shape, weight, bias, eps, out, rms=rms)
    # torch.layer_norm / torch.rms_norm: F.layer_norm / F.rms_norm without their Python wrappers
    y = torch.rms_norm(input, shape, weight, eps) if rms else torch.layer_norm(input, shape, weight, bias, eps)
    return out.copy_(y) if out is not None else y


def _norm_kernel(input: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None,
                 bias: torch.Tensor | None, eps: float, out: torch.Tensor | None, *, rms: bool) -> torch.Tensor:
    """The Triton path of ``layer_norm`` / ``rms_norm`` (arguments checked)."""
    n = math.prod(shape)
    if input.numel() and backend.grad_recording(input, weight, bias):  # the kernels' autograd Function
        y = grad.norm_fn(input, None, weight, bias, n, eps, rms=rms)
        return out.copy_(y) if out is not None else y
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return out
    from engine.kernels.norm import norm_fwd

    w = weight.reshape(n).contiguous() if weight is not None else None
    b = bias.reshape(n).contiguous() if bias is not None else None
    norm_fwd(grad.rows(input, n), w, b, eps, rms=rms, out=out.view(-1, n))
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


def _check_add_norm(x: object, residual: object, weight: object, bias: object, eps: object, out: object,
                    residual_out: object, *, rms: bool) -> tuple:
    """Every check of ``add_layer_norm``'s (``add_rms_norm``'s: ``rms``, bias None) arguments; returns
    (shape, weight, bias, eps, out, residual_out)."""
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
    return shape, weight, bias, eps, out, residual_out


def _add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: object, out: torch.Tensor | None, residual_out: torch.Tensor | None, *,
              rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """add_layer_norm / add_rms_norm after their own signatures: checks, then dispatch."""
    compiling = _compiling()
    if eps is None and rms and isinstance(x, _Tensor):  # F.rms_norm's default: the dtype's machine epsilon
        eps = _RMS_EPS.get(x.dtype)
    # Cheap path: same-shape x and residual, (N,) weight and bias (or None), one dtype and device, float eps,
    # no output buffers: a few attribute reads that imply every check in _check_add_norm.
    if (out is None and residual_out is None and type(eps) is float and 0.0 <= eps < _INF
            and isinstance(x, _Tensor) and isinstance(residual, _Tensor) and (dtype := x.dtype) in FAST_FLOAT_DTYPES
            and residual.dtype is dtype and (xs := x.shape) == residual.shape and len(xs) > 0
            and (weight is None or (isinstance(weight, _Tensor) and weight.dtype is dtype and weight.shape == xs[-1:]))
            and (bias is None or (isinstance(bias, _Tensor) and bias.dtype is dtype and bias.shape == xs[-1:]))
            and ((x.is_cpu and residual.is_cpu and (weight is None or weight.is_cpu) and (bias is None or bias.is_cpu))
                 or same_cuda_device(x, residual, weight, bias))):
        shape = xs[-1:]
    else:
        shape, weight, bias, eps, out, residual_out = _check_add_norm(x, residual, weight, bias, eps, out,
                                                                      residual_out, rms=rms)
        dtype = x.dtype

    if compiling:  # the registered op (with its autograd formula)
        y, s = (torch.ops.engine.add_rms_norm(x, residual, weight, eps) if rms
                else torch.ops.engine.add_layer_norm(x, residual, weight, bias, eps))
        return (out.copy_(y) if out is not None else y), (residual_out.copy_(s) if residual_out is not None else s)
    elif (_ADD_RMS_NORM if rms else _ADD_LAYER_NORM)(x, dtype, residual, weight, bias):
        return _add_norm_kernel(x, residual, shape[0], weight, bias, eps, out, residual_out, rms=rms)
    s = x + residual
    y = torch.rms_norm(s, shape, weight, eps) if rms else torch.layer_norm(s, shape, weight, bias, eps)
    if out is not None:
        y = out.copy_(y)
    if residual_out is not None:
        s = residual_out.copy_(s)
    return y, s


def _add_norm_kernel(x: torch.Tensor, residual: torch.Tensor, n: int, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, eps: float, out: torch.Tensor | None, residual_out: torch.Tensor | None,
                     *, rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of ``add_layer_norm`` / ``add_rms_norm`` (arguments checked; rows of n elements)."""
    if x.numel() and backend.grad_recording(x, residual, weight, bias):  # the kernels' autograd Function
        y, s = grad.norm_fn(x, residual, weight, bias, n, eps, rms=rms)
        return (out.copy_(y) if out is not None else y), (residual_out.copy_(s) if residual_out is not None else s)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual_out is None:
        residual_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out, residual_out
    from engine.kernels.norm import norm_fwd

    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    norm_fwd(grad.rows(x, n), w, b, eps, rms=rms, residual=grad.rows(residual, n), out=out.view(-1, n),
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
