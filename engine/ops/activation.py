"""GELU, fused bias + GELU and GeGLU: argument checks, then the Triton kernel or PyTorch.

    ops.gelu(input, approximate="none")               # as F.gelu; "tanh" too
    ops.bias_gelu(input, bias, approximate="none")    # F.gelu(input + bias), bias over the last dimension
    ops.gelu_and_mul(input, approximate="none")       # F.gelu(gate) * up, input = [gate | up] (*, 2F) -> (*, F)

The kernel (engine.kernels.gelu) computes in fp32 with one cast at the store, for fp32/fp16/bf16. Inputs that
require grad run the same kernel inside an autograd Function whose backward is the kernel's BACKWARD form
(engine.ops.grad; under torch.compile: the registered op's autograd formula). Everything else (float64,
ENGINE_BACKEND=torch, CPU tensors outside the interpreter) runs PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import backend
from engine.ops import grad
from engine.ops._checks import (
    FAST_FLOAT_DTYPES,
    KERNEL_DTYPES,
    check_choice,
    check_floating,
    check_out,
    check_same_device,
    check_same_dtype,
    same_cuda_device,
)
from engine.ops._checks import compiling as _compiling  # torch.compiler.is_compiling, cheaper

__all__ = ["bias_gelu", "gelu", "gelu_and_mul"]

APPROXIMATIONS = ("none", "tanh")
_Tensor = torch.Tensor
# Dispatch (engine.backend), cached per device kind and dtype: the kernel takes every shape. differentiable=True: a call
# that autograd records runs the kernel's autograd Function (engine.ops.grad).
_GELU = backend.Route("gelu", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_BIAS_GELU = backend.Route("bias_gelu", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)
_GELU_AND_MUL = backend.Route("gelu_and_mul", lambda dtype: dtype in KERNEL_DTYPES, differentiable=True)


def gelu(input: torch.Tensor, approximate: str = "none", *, out: torch.Tensor | None = None) -> torch.Tensor:
    """GELU, as ``torch.nn.functional.gelu``: exact (erf) form, or ``approximate="tanh"``.

    input: any shape (*), fp32/fp16/bf16 on the kernel path (float64 goes to PyTorch).
    out: optional contiguous buffer of input's shape and dtype to write into.
    Returns (*) in input's dtype.
    """
    compiling = _compiling()
    # Cheap path (a few attribute reads that imply every check): a float tensor, a known form, no out.
    if not (out is None and isinstance(input, _Tensor) and (dtype := input.dtype) in FAST_FLOAT_DTYPES
            and (approximate == "none" or approximate == "tanh")):
        input = check_floating("input", input)
        check_choice("approximate", approximate, APPROXIMATIONS)
        if out is not None:
            out = check_out("out", out, shape=input.shape, dtype=input.dtype, device=input.device)
        dtype = input.dtype

    if compiling:  # the registered op (with its autograd formula)
        y = torch.ops.engine.gelu(input, approximate)
        return out.copy_(y) if out is not None else y
    elif _GELU(input, dtype):
        return _gelu_kernel(input, approximate, out)
    y = F.gelu(input, approximate=approximate)
    return out.copy_(y) if out is not None else y


def _gelu_kernel(input: torch.Tensor, approximate: str, out: torch.Tensor | None) -> torch.Tensor:
    """The Triton path of ``gelu`` (arguments checked)."""
    if input.numel() and backend.grad_recording(input):  # the kernel's autograd Function
        y = grad.gelu_fn(input, None, approximate)
        return out.copy_(y) if out is not None else y
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return out
    from engine.kernels.gelu import gelu_fwd

    gelu_fwd(input.reshape(1, -1), None, approximate=approximate, out=out.view(1, -1))
    return out


def _check_bias_gelu(input: object, bias: object, approximate: object, out: object) -> tuple:
    """Every check of ``bias_gelu``'s arguments; returns (N, out)."""
    input = check_floating("input", input)
    bias = check_floating("bias", bias)
    check_choice("approximate", approximate, APPROXIMATIONS)
    if input.dim() == 0:
        raise ValueError("input must have at least one dimension (the one bias is added along); got a 0-d tensor")
    n = input.shape[-1]
    if tuple(bias.shape) != (n,):
        raise ValueError(
            f"bias must have shape ({n},) to match the last dimension of input {tuple(input.shape)}; "
            f"got {tuple(bias.shape)}"
        )
    check_same_device(input=input, bias=bias)
    check_same_dtype(input=input, bias=bias)
    if out is not None:
        out = check_out("out", out, shape=input.shape, dtype=input.dtype, device=input.device)
    return n, out


def bias_gelu(
    input: torch.Tensor,
    bias: torch.Tensor,
    approximate: str = "none",
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused ``gelu(input + bias)``: the MLP's up-projection bias and activation in one pass.

    input: (*, N), fp32/fp16/bf16 on the kernel path; bias: (N,), input's dtype and device.
    approximate: "none" (erf) or "tanh". out: optional contiguous (*, N) buffer to write into.
    Returns (*, N) in input's dtype; the sum and the GELU are computed in fp32.
    """
    compiling = _compiling()
    # Cheap path (a few attribute reads that imply every check): float tensors of one dtype and device, bias the
    # size of input's last dim, a known form, no out.
    if (out is None and isinstance(input, _Tensor) and isinstance(bias, _Tensor)
            and (dtype := input.dtype) in FAST_FLOAT_DTYPES and bias.dtype is dtype
            and (approximate == "none" or approximate == "tanh") and bias.shape == input.shape[-1:]
            and bias.dim() == 1 and ((input.is_cpu and bias.is_cpu) or same_cuda_device(input, bias))):
        n = bias.shape[0]
    else:
        n, out = _check_bias_gelu(input, bias, approximate, out)
        dtype = input.dtype

    if compiling:  # the registered op (with its autograd formula)
        y = torch.ops.engine.bias_gelu(input, bias, approximate)
        return out.copy_(y) if out is not None else y
    elif _BIAS_GELU(input, dtype, bias):
        return _bias_gelu_kernel(input, bias, n, approximate, out)
    y = F.gelu(input + bias, approximate=approximate)
    return out.copy_(y) if out is not None else y


def _bias_gelu_kernel(input: torch.Tensor, bias: torch.Tensor, n: int, approximate: str,
                      out: torch.Tensor | None) -> torch.Tensor:
    """The Triton path of ``bias_gelu`` (arguments checked; bias (n,))."""
    if input.numel() and backend.grad_recording(input, bias):  # the kernel's autograd Function
        y = grad.gelu_fn(input, bias.contiguous(), approximate)
        return out.copy_(y) if out is not None else y
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return out
    from engine.kernels.gelu import gelu_fwd

    x = input.reshape(-1, n)
    if x.stride(1) != 1:
        x = x.contiguous()
    gelu_fwd(x, bias.contiguous(), approximate=approximate, out=out.view(-1, n))
    return out


def _check_gelu_and_mul(input: object, approximate: object, out: object) -> tuple:
    """Every check of ``gelu_and_mul``'s arguments; returns (F, out): F the width of each half."""
    input = check_floating("input", input)
    check_choice("approximate", approximate, APPROXIMATIONS)
    if input.dim() == 0 or input.shape[-1] % 2:
        raise ValueError(f"input must have an even last dimension (gate and up halves); got shape "
                         f"{tuple(input.shape)}")
    n = input.shape[-1] // 2
    if out is not None:
        out = check_out("out", out, shape=(*input.shape[:-1], n), dtype=input.dtype, device=input.device)
    return n, out


def gelu_and_mul(input: torch.Tensor, approximate: str = "none", *, out: torch.Tensor | None = None) -> torch.Tensor:
    """GeGLU's activation and product in one pass: ``F.gelu(gate, approximate) * up``.

    input: (*, 2F), the output of one fused [gate | up] projection (gate = ``input[..., :F]``, up =
    ``input[..., F:]``; e.g. T5 v1.1's wi_0 and wi_1 stacked into one (2F, C) weight), fp32/fp16/bf16 on the kernel
    path. approximate: "none" (erf) or "tanh" (T5's gated-gelu uses "tanh"). out: optional contiguous (*, F)
    buffer. Returns (*, F) in input's dtype; the GELU and the product are computed in fp32 with one rounding (the
    PyTorch path rounds the GELU to the dtype before the product, as ``F.gelu(gate) * up`` does).
    """
    compiling = _compiling()
    # Cheap path (a few attribute reads that imply every check): a float tensor with an even last dim, a known
    # form, no out.
    if (out is None and isinstance(input, _Tensor) and (dtype := input.dtype) in FAST_FLOAT_DTYPES
            and (approximate == "none" or approximate == "tanh") and (xs := input.shape) and xs[-1] % 2 == 0):
        n = xs[-1] // 2
    else:
        n, out = _check_gelu_and_mul(input, approximate, out)
        dtype = input.dtype

    if compiling:  # the registered op (with its autograd formula)
        y = torch.ops.engine.gelu_and_mul(input, approximate)
        return out.copy_(y) if out is not None else y
    elif _GELU_AND_MUL(input, dtype):
        return _gelu_and_mul_kernel(input, n, approximate, out)
    y = F.gelu(input[..., :n], approximate=approximate).mul_(input[..., n:])
    return out.copy_(y) if out is not None else y


def _gelu_and_mul_kernel(input: torch.Tensor, n: int, approximate: str, out: torch.Tensor | None) -> torch.Tensor:
    """The Triton path of ``gelu_and_mul`` (arguments checked; input (*, 2n))."""
    if input.numel() and backend.grad_recording(input):  # the kernel's autograd Function
        y = grad.gelu_fn(input, None, approximate, gated=True)
        return out.copy_(y) if out is not None else y
    if out is None:
        out = torch.empty((*input.shape[:-1], n), dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    from engine.kernels.gelu import gelu_fwd

    x = input.reshape(-1, 2 * n)
    if x.stride(1) != 1:
        x = x.contiguous()
    gelu_fwd(x, None, approximate=approximate, gated=True, out=out.view(-1, n))
    return out
