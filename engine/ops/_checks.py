"""Argument checks shared by every op: each error names the argument, what was expected and what was given."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# dtypes the Triton kernels take; float64 and friends go to PyTorch through dispatch (supported=False).
KERNEL_DTYPES = FLOAT_DTYPES

_compiler = torch.compiler
_dynamo_compiling = getattr(_compiler, "is_dynamo_compiling", None)


def compiling() -> bool:
    """``torch.compiler.is_compiling()``, in about a third of its instructions per call (every op asks it once).

    True while dynamo traces (it folds ``is_dynamo_compiling`` to True, so the flag is never read into a trace) and
    while torch.compile's session or torch.export sets ``torch.compiler._is_compiling_flag``: exactly when
    ``is_compiling()`` is, without its call of ``torch.jit.is_scripting``. Where this torch lacks either name, the
    module-level ``compiling`` is ``torch.compiler.is_compiling`` itself (below)."""
    return _dynamo_compiling() or _compiler._is_compiling_flag


if _dynamo_compiling is None or not hasattr(_compiler, "_is_compiling_flag"):
    compiling = torch.compiler.is_compiling  # noqa: F811  (an older torch: its own function)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    return t


def check_floating(name: str, t: object) -> torch.Tensor:
    """``t`` must be a floating-point tensor (any float dtype; the kernels take fp32/fp16/bf16)."""
    t = check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16 or bfloat16); got {t.dtype}")
    return t


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given (non-None) tensors live on one device."""
    given = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in given.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {v.device}" for k, v in given.items())
        raise ValueError(f"tensors must be on the same device; got {where}")


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    given = {k: v for k, v in tensors.items() if v is not None}
    dtypes = {v.dtype for v in given.values()}
    if len(dtypes) > 1:
        what = ", ".join(f"{k} {v.dtype}" for k, v in given.items())
        raise TypeError(f"tensors must have the same dtype; got {what}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_out(name: str, out: object, *, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``out`` is a contiguous buffer of exactly ``shape`` / ``dtype`` on ``device`` for an op to write into."""
    out = check_tensor(name, out)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if out.device != device:
        raise ValueError(f"{name} must be on {device}; got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous; got strides {tuple(out.stride())}")
    return out


# ---- O(1) pre-checks for the cheap path ---------------------------------------------------------------------
# Each op first tests its common call with a few attribute reads (no torch.device objects, no tensor ops). When
# the test passes, every full check above would pass too; when it fails, the op runs the full checks, which
# raise the error (or accept an uncommon but valid call).
FAST_FLOAT_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.float64))


def same_cuda_device(lead: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when ``lead`` is on a CUDA device and every other tensor (None entries allowed) is on that same device.
    The ops test CPU tensors inline (``t.is_cpu`` of each) and call this for the rest; False means "not shown":
    run the full checks."""
    if not lead.is_cuda:
        return False
    index = lead.get_device()
    for t in others:
        if t is not None and not (t.is_cuda and t.get_device() == index):
            return False
    return True
