"""The one place that decides whether an op runs as our Triton kernel or as the PyTorch reference op.

Rules (in order):
  1. ``ENGINE_BACKEND=torch`` -> PyTorch, always.
  2. The op said the call is outside what the kernel covers (``supported=False``: dropout, an odd dtype,
     a shape the kernel does not handle) -> PyTorch, which has identical semantics.
  3. A tensor requires grad while autograd is recording -> PyTorch, unless the op has backward kernels (a
     ``Route`` made with ``differentiable=True``): attention, whose ``supported`` verdict then covers the grad case
     too (e.g. a mask that requires grad stays on PyTorch), and the norms and GELUs (engine.ops.grad); those keep
     rules 4 and 5 and run as an autograd Function over the forward and backward kernels.
  4. ``ENGINE_BACKEND=auto`` (the default): CUDA tensors -> Triton when Triton imports; anything else ->
     PyTorch.
  5. ``ENGINE_BACKEND=triton``: Triton for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1``
     (Triton's interpreter runs the real kernels on the CPU: that is how the CPU test suite exercises them).
     Forcing Triton where it cannot run raises a RuntimeError that says why, instead of silently falling back.

Two entry points apply these rules. ``use_triton(*tensors, supported=..., op=...)`` decides one call from
scratch. ``Route`` (one per op, used by ``engine.ops`` on every call) caches the decision per (environment,
device kind, op key), where the op key is the dtype and shape class that decide ``supported``; a hit costs a
few attribute reads, and the grad rule is checked only when the answer would be Triton (and the op has no backward
kernels).

The environment is read on every call (as raw bytes, without ``os.environ``'s decoding), so tests can switch it
with ``monkeypatch.setenv``. ``TRITON_INTERPRET`` must be set before the kernel modules are first imported
(Triton reads it when a kernel is decorated); the kernel modules are imported lazily, on the first Triton call.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Hashable

import torch

BACKENDS = ("auto", "torch", "triton")
_ENVIRON = os.environ
# POSIX keeps the environment as a bytes -> bytes dict behind os.environ (setenv / monkeypatch write through it);
# reading it directly skips the str encode / decode that makes os.environ.get cost microseconds.
_ENV_DATA = getattr(_ENVIRON, "_data", None) if os.name == "posix" else None
if not isinstance(_ENV_DATA, dict):
    _ENV_DATA = None


def _raw_env() -> tuple:
    """(ENGINE_BACKEND, TRITON_INTERPRET) as stored in the environment (bytes or str; None when unset)."""
    if _ENV_DATA is not None and os.environ is _ENVIRON:
        return _ENV_DATA.get(b"ENGINE_BACKEND"), _ENV_DATA.get(b"TRITON_INTERPRET")
    return os.environ.get("ENGINE_BACKEND"), os.environ.get("TRITON_INTERPRET")


def _text(raw: bytes | str | None, default: str) -> str:
    if raw is None:
        return default
    return os.fsdecode(raw) if isinstance(raw, bytes) else raw


@functools.lru_cache(maxsize=64)  # an unknown name raises every time: lru_cache keeps only returned values
def _parse_backend(raw: bytes | str | None) -> str:
    name = _text(raw, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ENGINE_BACKEND must be one of {', '.join(BACKENDS)}; got {_text(raw, '')!r}")
    return name


@functools.lru_cache(maxsize=64)
def _parse_interpret(raw: bytes | str | None) -> bool:
    return _text(raw, "0").strip() not in ("", "0", "false", "False")


def backend_name() -> str:
    """The requested backend from ``ENGINE_BACKEND`` (default ``auto``), validated."""
    return _parse_backend(_raw_env()[0])


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _parse_interpret(_raw_env()[1])


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


_CUDA, _CPU, _OTHER = 0, 1, 2  # device kinds: what rules 4 and 5 look at


def _device_kind(ts: list[torch.Tensor]) -> int:
    if ts and all(t.is_cuda for t in ts):
        return _CUDA
    if ts and all(t.is_cpu for t in ts):
        return _CPU
    return _OTHER


def _decide(name: str, interp: bool, kind: int, supported: bool, op: str, devices: Callable[[], str]) -> bool | str:
    """Rules 1, 2, 4 and 5 for one call: True (Triton), False (PyTorch), or the error message (a str) when
    ``ENGINE_BACKEND=triton`` forces Triton where it cannot run. ``devices()`` names the devices for that message."""
    if name == "torch" or not supported:
        return False
    if name == "auto":
        return kind == _CUDA and triton_available()
    if not triton_available():
        return (f"ENGINE_BACKEND=triton forces Triton for {op}, but Triton cannot be imported "
                f"({triton_import_error()}). Install triton (Linux x86_64) or set ENGINE_BACKEND=auto.")
    if kind == _CUDA or (kind == _CPU and interp):
        return True
    return (f"ENGINE_BACKEND=triton forces Triton for {op}, but its tensors are on {devices()}: Triton "
            "kernels need CUDA tensors, or TRITON_INTERPRET=1 (set before importing engine) to run them on the "
            "CPU in Triton's interpreter. Set ENGINE_BACKEND=auto to use PyTorch there.")


def grad_recording(*tensors: torch.Tensor | None) -> bool:
    """Rule 3's test: autograd is recording and one of ``tensors`` (None entries ignored) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(*tensors: torch.Tensor | None, supported: bool = True, op: str = "op") -> bool:
    """Decide the backend for one call of ``op`` on ``tensors`` (None entries are ignored).

    ``supported`` is the op's own verdict on the call (dtype, shape, options). Returns True to run the Triton
    kernel, False to run the PyTorch op. Raises RuntimeError when ``ENGINE_BACKEND=triton`` forces a kernel
    that cannot run here.
    """
    raw_name, raw_interp = _raw_env()
    name = _parse_backend(raw_name)
    if name == "torch" or not supported:
        return False
    ts = [t for t in tensors if t is not None]
    if grad_recording(*ts):
        return False
    d = _decide(name, _parse_interpret(raw_interp), _device_kind(ts), True, op,
                lambda: ", ".join(sorted({str(t.device) for t in ts})))
    if isinstance(d, str):
        raise RuntimeError(d)
    return d


class Route:
    """The cached dispatch decision of one op: ``route(lead, key, *others) -> bool`` (True: run the kernel).

    ``lead`` is the op's main tensor; the op has already checked that ``others`` (None entries allowed) share its
    device. ``key`` (hashable) is what ``supported(key)`` needs to give the op's verdict: its dtype and shape
    class. Decisions are cached per (environment, device kind, key); the grad rule (3) is applied per call, and
    only where the cached answer is not already PyTorch. ``differentiable=True``: the op's kernels have a backward
    (its ``supported`` verdict covers calls that record grad), so rule 3 does not apply.
    """

    __slots__ = ("op", "supported", "differentiable", "_cache")

    def __init__(self, op: str, supported: Callable[[Hashable], bool], *, differentiable: bool = False) -> None:
        self.op = op
        self.supported = supported
        self.differentiable = differentiable
        self._cache: dict[tuple, bool | str] = {}

    def __call__(self, lead: torch.Tensor, key: Hashable, *others: torch.Tensor | None) -> bool:
        kind = _CUDA if lead.is_cuda else _CPU if lead.is_cpu else _OTHER
        if _ENV_DATA is not None and os.environ is _ENVIRON:  # _raw_env, inlined: this runs on every op call
            ck = (_ENV_DATA.get(b"ENGINE_BACKEND"), _ENV_DATA.get(b"TRITON_INTERPRET"), kind, key)
        else:
            ck = (*_raw_env(), kind, key)
        d = self._cache.get(ck)
        if d is None:
            d = self._miss(ck, lead, key, others)
        if d is False:
            return False
        if (not self.differentiable and torch.is_grad_enabled()
                and (lead.requires_grad or any(t is not None and t.requires_grad for t in others))):
            return False  # rule 3, which comes before rule 5's error
        if d is True:
            return True
        raise RuntimeError(d)

    def pytorch_only(self, on_cuda: bool) -> bool:
        """True when no call of this op on the call's device kind can run the kernel in the current environment
        (ENGINE_BACKEND=torch, or auto off CUDA), so an op may skip computing its key; False says nothing.
        on_cuda: the op's lead tensor's ``is_cuda``, which the op has read already."""
        if _ENV_DATA is not None and os.environ is _ENVIRON:
            raw = _ENV_DATA.get(b"ENGINE_BACKEND")
        else:
            raw = os.environ.get("ENGINE_BACKEND")
        if raw is None:  # unset: auto, the common case, without a parse
            return not on_cuda
        name = _parse_backend(raw)
        return name == "torch" or (name == "auto" and not on_cuda)

    def _miss(self, ck: tuple, lead: torch.Tensor, key: Hashable, others: tuple) -> bool | str:
        raw_name, raw_interp, kind, _ = ck
        name = _parse_backend(raw_name)  # raises on an unknown name (never cached)
        ts = [lead, *(t for t in others if t is not None)]
        d = _decide(name, _parse_interpret(raw_interp), kind, name != "torch" and bool(self.supported(key)), self.op,
                    lambda: ", ".join(sorted({str(t.device) for t in ts})))
        if isinstance(d, str):  # an error names the call's devices: never cached
            return d
        if len(self._cache) >= 256:  # keys are few (dtypes x shape classes); bound it anyway
            self._cache.clear()
        self._cache[ck] = d
        return d


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
