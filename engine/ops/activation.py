"""GELU, fused bias + GELU and GeGLU: argument checks, then the Triton kernel or PyTorch.

    ops.gelu(input, approximate="none")               # as F.gelu; "tanh" too
    ops.bias_gelu(input, bias, approximate="none")    # F.gelu(input + bias), bias over the last dimension
    ops.gelu_and_mul(input, approximate="none")       # F.gelu(gate) * up, input = [gate | up] (*, 2F) -> (*, F)

The kernel (engine.kernels.gelu) computes in fp32 with one cast at the store, for fp32/fp16/bf16. Everything else
(float64, inputs that require grad, ENGINE_BACKEND=torch, CPU tensors outside the interpreter) runs PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import backend
from engine.ops._checks import (
    KERNEL_DTYPES,
    check_choice,
    check_floating,
    check_out,
    check_same_device,
    check_same_dtype,
)

__all__ = ["bias_gelu", "gelu", "gelu_and_mul"]

APPROXIMATIONS = ("none", "tanh")


def gelu(input: torch.Tensor, approximate: str = "none", *, out: torch.Tensor | None = None) -> torch.Tensor:
    """GELU, as ``torch.nn.functional.gelu``: exact (erf) form, or ``approximate="tanh"``.

    input: any shape (*), fp32/fp16/bf16 on the kernel path (float64 goes to PyTorch).
    out: optional contiguous buffer of input's shape and dtype to write into.
    Returns (*) in input's dtype.
    """
    input = check_floating("input", input)
    check_choice("approximate", approximate, APPROXIMATIONS)
    if out is not None:
        out = check_out("out", out, shape=input.shape, dtype=input.dtype, device=input.device)

    if not backend.use_triton(input, supported=input.dtype in KERNEL_DTYPES, op="gelu"):
        y = F.gelu(input, approximate=approximate)
        return out.copy_(y) if out is not None else y

    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return out
    from engine.kernels.gelu import gelu_fwd

    gelu_fwd(input.reshape(1, -1), None, approximate=approximate, out=out.view(1, -1))
    return out


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

    if not backend.use_triton(input, bias, supported=input.dtype in KERNEL_DTYPES, op="bias_gelu"):
        y = F.gelu(input + bias, approximate=approximate)
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


def gelu_and_mul(input: torch.Tensor, approximate: str = "none", *, out: torch.Tensor | None = None) -> torch.Tensor:
    """GeGLU's activation and product in one pass: ``F.gelu(gate, approximate) * up``.

    input: (*, 2F), the output of one fused [gate | up] projection (gate = ``input[..., :F]``, up =
    ``input[..., F:]``; e.g. T5 v1.1's wi_0 and wi_1 stacked into one (2F, C) weight), fp32/fp16/bf16 on the kernel
    path. approximate: "none" (erf) or "tanh" (T5's gated-gelu uses "tanh"). out: optional contiguous (*, F)
    buffer. Returns (*, F) in input's dtype; the GELU and the product are computed in fp32 with one rounding (the
    PyTorch path rounds the GELU to the dtype before the product, as ``F.gelu(gate) * up`` does).
    """
    input = check_floating("input", input)
    check_choice("approximate", approximate, APPROXIMATIONS)
    if input.dim() == 0 or input.shape[-1] % 2:
        raise ValueError(f"input must have an even last dimension (gate and up halves); got shape "
                         f"{tuple(input.shape)}")
    n = input.shape[-1] // 2
    shape = (*input.shape[:-1], n)
    if out is not None:
        out = check_out("out", out, shape=shape, dtype=input.dtype, device=input.device)

    if not backend.use_triton(input, supported=input.dtype in KERNEL_DTYPES, op="gelu_and_mul"):
        y = F.gelu(input[..., :n], approximate=approximate).mul_(input[..., n:])
        return out.copy_(y) if out is not None else y

    if out is None:
        out = torch.empty(shape, dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    from engine.kernels.gelu import gelu_fwd

    x = input.reshape(-1, 2 * n)
    if x.stride(1) != 1:
        x = x.contiguous()
    gelu_fwd(x, None, approximate=approximate, gated=True, out=out.view(-1, n))
    return out
