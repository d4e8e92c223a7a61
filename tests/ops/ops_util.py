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
