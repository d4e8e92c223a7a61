"""Helpers shared by the backward-formula tests (test_grad_formulas.py, test_attention_grad_formulas.py)."""
from __future__ import annotations

import torch

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: dict(atol=1e-12, rtol=1e-12), F32: dict(atol=2e-5, rtol=2e-5)}


def randn(*shape, gen, dtype=F64, scale=1.0, shift=0.0):
    """Normal values drawn in float64 from ``gen``, scaled, shifted, then cast to ``dtype``."""
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift).to(dtype)


def close(got, want, dtype, what):
    """got has ``dtype`` and want's shape, and its values are within TOL[dtype] of the float64 ``want``."""
    assert got.dtype == dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.shape)
    torch.testing.assert_close(got.double(), want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def ref_leaves(*ts):
    """float64 CPU copies of ts that require grad (the references' inputs)."""
    return [t.detach().double().cpu().requires_grad_() for t in ts]


def spy(monkeypatch, *targets):
    """The names of the calls made to each (module, name) kernel launcher, in order: a silent PyTorch fallback
    would pass the numbers."""
    calls = []
    for module, name in targets:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _f=real, **kw: calls.append(_n) or _f(*a, **kw))
    return calls
