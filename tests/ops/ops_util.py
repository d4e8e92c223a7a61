"""Helpers shared by the op tests: views whose elements lie more than 2**31 elements apart.

Kernels must compute element offsets in 64 bits wherever ``index * stride`` can pass 2**31 (a long cache, a big
batch). A view with a large stride over one buffer reaches there without real memory: the buffer is allocated
uninitialised, so only the pages the test touches are backed (a few MB of a 4-6 GiB mapping on the CPU).
"""
from __future__ import annotations

import math

import torch

TWO_31 = 2**31
SPARE = 4096  # elements past a new buffer's last one, for more views into it at offsets up to this


def strided_view(shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype, device: str, *,
                 seed: int, offset: int = 0, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """A (shape) view with ``strides`` (elements) at storage ``offset`` into ``buffer``'s storage (a new uninitialised
    one when None; pass an earlier view to share its buffer), filled with standard normal values from ``seed``. Its
    largest element offset may exceed 2**31."""
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if buffer is None:
        buffer = torch.empty(last + 1 + SPARE, dtype=dtype, device=device)  # room for views at small offsets
    assert buffer.untyped_storage().nbytes() // buffer.element_size() > last, "the buffer is too small"
    view = buffer.as_strided(shape, strides, offset)
    g = torch.Generator().manual_seed(seed)
    view.copy_(torch.randn(math.prod(shape), generator=g).view(shape))
    return view


def strided_views(names: tuple[str, ...], shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype,
                  device: str, *, alone: str | None = None) -> dict[str, torch.Tensor]:
    """name -> a ``strided_view`` of ``shape`` / ``strides``: all in one buffer, the i-th at offset i x shape[-1]
    (interleaved); with ``alone`` only that one is such a view (in its own buffer), the others contiguous."""
    t: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        if alone is not None and name != alone:
            t[name] = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).to(device, dtype)
        else:
            t[name] = strided_view(shape, strides, dtype, device, seed=i, offset=i * shape[-1],
                                   buffer=None if alone is not None or not t else t[names[0]])
    return t


def at_page_end(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``t`` that ends exactly where an unreadable page begins: a kernel that loads one
    element past its end (a dropped mask on the last tile) crashes instead of reading neighbouring memory.
    Linux / macOS only (mmap + mprotect); the mapping lives as long as the returned tensor."""
    return _page_guarded(t, after=True)


def at_page_start(t: torch.Tensor) -> torch.Tensor:
    """As ``at_page_end``, but the copy starts exactly where an unreadable page ends: a load one element before its
    start (a negative index, an unclamped row) crashes."""
    return _page_guarded(t, after=False)


def _page_guarded(t: torch.Tensor, *, after: bool) -> torch.Tensor:
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    nbytes = t.numel() * t.element_size()
    pages = -(-nbytes // page)
    mm = mmap.mmap(-1, (pages + 1) * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    guard = base + pages * page if after else base  # PROT_NONE on the page after (before) the data
    if libc.mprotect(guard, page, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    if after:
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=pages * page)[pages * page - nbytes:]
    else:
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=page)
    out = raw.view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def nan_padded(t: torch.Tensor, width: int) -> torch.Tensor:
    """``t`` (..., D) as a view into rows of ``width`` >= D elements whose tail is NaN: a kernel that reads past D
    on any row (a dropped head-dim mask) turns its output NaN."""
    buf = torch.full((*t.shape[:-1], width), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[..., :t.shape[-1]]
    view.copy_(t)
    return view
