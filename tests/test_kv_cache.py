"""engine/kv_cache.py's StaticKVCache on its own (generate / seq2seq use it: tests/test_generate.py, test_t5.py):
what a prefill and each decode step write where, and their outputs vs float64 attention over the row's keys."""
from __future__ import annotations

import torch

from engine.kv_cache import StaticKVCache

B, H, D, TMAX = 2, 2, 8, 6


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """float64 softmax(q k^T * scale) v for one row: q (H, Tq, D), k / v (H, Tk, D); causal bottom-right."""
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).logical_not(), float("-inf"))
    return (s.softmax(-1) @ v.double()).float()


def new_cache() -> StaticKVCache:
    return StaticKVCache(num_layers=2, batch_size=B, num_heads=H, head_dim=D, max_len=TMAX, dtype=torch.float32,
                         device=torch.device("cpu"))


def rand(*shape, g):
    return torch.randn(*shape, generator=g)


def test_a_new_cache_takes_one_token_per_step():
    """A new cache decodes (no prefill: seq2seq's use): step t writes at position t and attends over 0..t."""
    g = torch.Generator().manual_seed(0)
    cache, scale = new_cache(), 0.3
    ks, vs = [], []
    for step in range(4):
        cache.positions.fill_(step)
        cache.seqlens.fill_(step + 1)
        q, k, v = rand(B, H, 1, D, g=g), rand(B, H, 1, D, g=g), rand(B, H, 1, D, g=g)
        ks.append(k)
        vs.append(v)
        out = cache.attend(1, q, k, v, scale=scale)
        K, V = torch.cat(ks, 2), torch.cat(vs, 2)
        for b in range(B):
            torch.testing.assert_close(out[b], reference(q[b], K[b], V[b], scale, False), rtol=1e-5, atol=1e-5)
        assert torch.equal(cache.k[1][:, :, :step + 1], K) and torch.equal(cache.v[1][:, :, :step + 1], V)
    assert not cache.k[0].any() and not cache.v[0].any()  # the other layer untouched


def test_prefill_then_steps_at_each_rows_position():
    """Prefill: the prompt's keys at 0..T-1, causal attention over them alone. Then one token per row at that
    row's own position (left-aligned rows: a shorter prompt's next token overwrites its padding)."""
    g = torch.Generator().manual_seed(1)
    cache, T, scale = new_cache(), 3, 0.25
    q, k, v = rand(B, H, T, D, g=g), rand(B, H, T, D, g=g), rand(B, H, T, D, g=g)
    cache.prefilling = True
    out = cache.attend(0, q, k, v, scale=scale)
    cache.prefilling = False
    for b in range(B):
        torch.testing.assert_close(out[b], reference(q[b], k[b], v[b], scale, True), rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.k[0][:, :, :T], k) and torch.equal(cache.v[0][:, :, :T], v)
    lengths = [3, 1]  # row 1's prompt is one token (then padding)
    cache.positions.copy_(torch.tensor(lengths)[:, None])
    cache.seqlens.copy_(torch.tensor(lengths) + 1)
    q1, k1, v1 = rand(B, H, 1, D, g=g), rand(B, H, 1, D, g=g), rand(B, H, 1, D, g=g)
    out = cache.attend(0, q1, k1, v1, scale=scale)
    for b, n in enumerate(lengths):
        K, V = torch.cat([k[b, :, :n], k1[b]], 1), torch.cat([v[b, :, :n], v1[b]], 1)
        torch.testing.assert_close(out[b], reference(q1[b], K, V, scale, False), rtol=1e-5, atol=1e-5)
        assert torch.equal(cache.k[0][b, :, :n + 1], K) and torch.equal(cache.v[0][b, :, :n + 1], V)
