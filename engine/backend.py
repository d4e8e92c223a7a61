"""The one place that decides whether an op runs as our Triton kernel or as the PyTorch reference op.

Rules (in order):
  1. ``ENGINE_BACKEND=torch`` -> PyTorch, always.
  2. The op said the call is outside what the kernel covers (``supported=False``: dropout, an odd dtype,
     a shape the kernel does not handle) -> PyTorch, which has identical semantics.
  3. A tensor requires grad while autograd is recording -> PyTorch (our kernels have no backward yet).
  4. ``ENGINE_BACKEND=auto`` (the default): CUDA tensors -> Triton when Triton imports; anything else ->
     PyTorch.
  5. ``ENGINE_BACKEND=triton``: Triton for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1``
     (Triton's interpreter runs the real kernels on the CPU: that is how the CPU test suite exercises them).
     Forcing Triton where it cannot run raises a RuntimeError that says why, instead of silently falling back.

The environment is read on every call, so tests can switch it with ``monkeypatch.setenv``. Note that
``TRITON_INTERPRET`` must be set before the kernel modules are first imported (Triton reads it when a kernel
is decorated); the kernel modules are imported lazily, on the first Triton call.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def backend_name() -> str:
    """The requested backend from ``ENGINE_BACKEND`` (default ``auto``), validated."""
    name = os.environ.get("ENGINE_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(
            f"ENGINE_BACKEND must be one of {', '.join(BACKENDS)}; got {os.environ['ENGINE_BACKEND']!r}"
        )
    return name


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


@functools.lru_cache(maxsize=1)
def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the reason it does not (cached)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    return triton_import_error() is None


def use_triton(*tensors: torch.Tensor | None, supported: bool = True, op: str = "op") -> bool:
    """Decide the backend for one call of ``op`` on ``tensors`` (None entries are ignored).

    ``supported`` is the op's own verdict on the call (dtype, shape, options). Returns True to run the Triton
    kernel, False to run the PyTorch op. Raises RuntimeError when ``ENGINE_BACKEND=triton`` forces a kernel
    that cannot run here.
    """
    name = backend_name()
    if name == "torch" or not supported:
        return False
    ts = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return False
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    on_cpu = bool(ts) and all(t.device.type == "cpu" for t in ts)
    if name == "auto":
        return on_cuda and triton_available()
    # name == "triton": forced.
    if not triton_available():
        raise RuntimeError(
            f"ENGINE_BACKEND=triton forces Triton for {op}, but Triton cannot be imported "
            f"({triton_import_error()}). Install triton (Linux x86_64) or set ENGINE_BACKEND=auto."
        )
    if on_cuda:
        return True
    if on_cpu and interpreting():
        return True
    devices = sorted({str(t.device) for t in ts})
    raise RuntimeError(
        f"ENGINE_BACKEND=triton forces Triton for {op}, but its tensors are on {', '.join(devices)}: Triton "
        "kernels need CUDA tensors, or TRITON_INTERPRET=1 (set before importing engine) to run them on the "
        "CPU in Triton's interpreter. Set ENGINE_BACKEND=auto to use PyTorch there."
    )


def resolve_device(device: object, *, name: str = "device") -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N" or a torch.device) as a torch.device engine can run on here; a
    ValueError naming ``name`` otherwise (an unknown device type, CUDA asked for where there is none, an index
    past the last GPU)."""
    expected = f"{name} must be 'cpu', 'cuda' or 'cuda:N'"
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise TypeError(f"{expected}; got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{expected}; got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{expected}; got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r} needs CUDA, which is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
