"""engine.sampling.sample (C++) vs the PyTorch sort-based reference (probs_reference + torch.multinomial), CPU.

Groups "sample <mode> B=<B> V=<V>" hold both providers. Each run asserts its ids are right: inside the kept set of
the reference distribution (top-p 0.9 with temperature 0.8, or top-k 50).
"""
from __future__ import annotations

import pytest
import torch

from engine import sampling

MODES = {"top_p": dict(temperature=0.8, top_p=0.9), "top_k": dict(top_k=50)}
_kept: dict[tuple, torch.Tensor] = {}


def _logits(B: int, V: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(B * 100003 + V)
    return torch.randn(B, V, generator=g) * 3.0  # GPT-2-like spread of next-token logits


def _kept_set(mode: str, x: torch.Tensor) -> torch.Tensor:
    key = (mode, *x.shape)
    if key not in _kept:
        _kept[key] = sampling.probs_reference(x, **MODES[mode]) > 0
    return _kept[key]


@pytest.mark.parametrize("provider", ["engine", "torch"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("V", [50257, 32000])
def test_sample(bench, provider, mode, B, V):
    x = _logits(B, V)
    kw = MODES[mode]
    if provider == "engine":
        fn = lambda: sampling.sample(x, seed=0, **kw)  # noqa: E731
    else:
        gen = torch.Generator().manual_seed(0)
        fn = lambda: torch.multinomial(sampling.probs_reference(x, **kw), 1, generator=gen)  # noqa: E731
    ids = bench(fn, provider=provider, group=f"sample {mode} B={B} V={V}", nbytes=x.numel() * x.element_size())
    assert ids.shape == (B, 1) and ids.dtype == torch.int64
    assert _kept_set(mode, x).gather(1, ids).all()


@pytest.mark.parametrize("provider", ["engine", "torch"])
def test_probs_top_p(bench, provider):
    x = _logits(8, 50257)
    kw = MODES["top_p"]
    fn = (lambda: sampling.probs(x, **kw)) if provider == "engine" else (lambda: sampling.probs_reference(x, **kw))
    p = bench(fn, provider=provider, group="probs top_p B=8 V=50257", nbytes=x.numel() * 8)
    torch.testing.assert_close(p, sampling.probs_reference(x, **kw), atol=1e-6, rtol=0)
