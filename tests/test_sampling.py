"""engine.sampling (C++ extension engine._sampler) against HF's own logits processors and a PyTorch reference."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers.generation import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from engine import sampling

ATOL = 1e-6  # distributions: absolute, per entry


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The references are many small torch ops: one intra-op thread is faster on a small, shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logits(B: int, V: int, seed: int, *, scales=(0.5, 2.0, 6.0)) -> torch.Tensor:
    """Random (B, V) float32 logits, each row with its own spread (flat to peaked), never all equal."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([scales[b % len(scales)] for b in range(B)])[:, None]
    return torch.randn(B, V, generator=g) * scale + torch.randn(B, 1, generator=g)


def _prev(B: int, V: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    ids[:, -1] = ids[:, 0]  # a repeated id counts once
    return ids


def _hf_probs(x, prev, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0) -> torch.Tensor:
    """HF's processors, in generate's order, on float32 scores; final softmax in float64."""
    scores = x.clone()
    if repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(float(repetition_penalty))(prev, scores)
    if temperature == 0:
        return torch.zeros_like(scores).scatter(1, scores.argmax(-1, keepdim=True), 1.0)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(float(temperature))(prev, scores)
    if top_k:
        scores = TopKLogitsWarper(int(top_k))(prev, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(float(top_p))(prev, scores)
    if min_p > 0.0:
        scores = MinPLogitsWarper(float(min_p))(prev, scores)
    return torch.softmax(scores.double(), dim=-1).float()


def _check(x, prev, **kw):
    got = sampling.probs(x, prev_tokens=prev, **kw)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got, _hf_probs(x.float(), prev, **kw), atol=ATOL, rtol=0)
    torch.testing.assert_close(got, sampling.probs_reference(x, prev_tokens=prev, **kw), atol=ATOL, rtol=0)
    torch.testing.assert_close(got.double().sum(-1), torch.ones(x.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    return got


@pytest.mark.parametrize("temperature,repetition_penalty", [(1.0, 1.0), (0.7, 1.4), (1.9, 0.7), (0.0, 1.3)])
@pytest.mark.parametrize("top_k", [0, 1, 9, 200])
def test_matches_hf_every_combination(temperature, repetition_penalty, top_k):
    V = 1013
    x, prev = _logits(3, V, 1), _prev(3, V, 9, 2)
    for top_p, min_p in itertools.product([1.0, 0.9, 0.35], [0.0, 0.05, 0.5]):
        _check(x, prev, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
               repetition_penalty=repetition_penalty)


@pytest.mark.parametrize("top_k", [0, 1, 50, 150, 3000])
def test_matches_hf_large_vocab(top_k):
    # V = 50257 exercises the top-k block pre-filter (k <= 196) and the top-p histogram over many bins.
    x, prev = _logits(2, 50257, 3, scales=(2.0, 45.0)), _prev(2, 50257, 33, 4)
    for top_p, min_p in [(1.0, 0.0), (0.9, 0.0), (0.5, 0.02), (0.999, 0.0)]:
        _check(x, prev, temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=1.2)


@pytest.mark.parametrize("V", [1031, 4099, 50257])
def test_matches_hf_on_flat_rows(V):
    # Flat rows (most of the vocabulary within 10 nats of the max, V >= 1024) take the sampler's dense top-p pass:
    # x, exp, bins and bin masses in one sweep, with the full-row path as fallback.
    x, prev = _logits(2, V, 41, scales=(0.5, 1.0)), _prev(2, V, 17, 42)
    for temperature, top_p, min_p in [(0.8, 0.9, 0.0), (1.0, 0.5, 0.0), (0.8, 0.999, 0.0), (1.3, 0.95, 0.01)]:
        got = _check(x, prev, temperature=temperature, top_p=top_p, min_p=min_p, repetition_penalty=1.1)
        ids = sampling.sample(x, prev_tokens=prev, seed=7, temperature=temperature, top_p=top_p, min_p=min_p,
                              repetition_penalty=1.1)
        assert (got.gather(1, ids) > 0).all()


def test_top_p_cut_far_below_the_max():
    # Top-p first searches the tokens within 10 nats of the max and falls back to the whole row when their mass is
    # short of top_p: a spike over a flat tail puts the cut inside the tail (d ~ -12: fallback; d ~ -9: no fallback).
    V = 20011
    x = _logits(4, V, 31, scales=(0.3,))
    x[:, 5] += torch.tensor([12.0, 9.0, 10.0, 14.0])
    for temperature, top_p in itertools.product([1.0, 0.8], [0.5, 0.9, 0.95, 0.999]):
        got = _check(x, None, temperature=temperature, top_p=top_p)
        for seed in range(3):
            ids = sampling.sample(x, seed=seed, temperature=temperature, top_p=top_p)
            assert (got.gather(1, ids) > 0).all()


def test_ties_follow_the_documented_rules():
    # Ties: top-k keeps every logit >= the k-th; min-p keeps ties; a top-p cut inside a tie keeps the lower ids.
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-4, 3, (5, 301), generator=g).float() * 0.75
    for kw in [dict(top_k=4), dict(top_k=40), dict(min_p=0.3), dict(top_k=60, min_p=0.2)]:
        _check(x, None, **kw)
    for top_p in (0.01, 0.2, 0.5, 0.93):
        got = sampling.probs(x, top_p=top_p)
        torch.testing.assert_close(got, sampling.probs_reference(x, top_p=top_p), atol=ATOL, rtol=0)
    got = _check(x, None, min_p=1.0)  # min-p keeps p >= min_p * p_max: at 1, exactly the tied top tokens
    assert torch.equal(got > 0, x == x.max(-1, keepdim=True).values)
    two = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert sampling.probs(two, top_p=0.2).tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]
    assert sampling.probs(two, top_p=0.5).nonzero()[:, 1].tolist() == [1, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(dtype):
    x = _logits(4, 1001, 6).to(dtype)
    x[0, 7] = -float("inf")
    x[1, 3] = 6e-8  # a float16 subnormal
    for kw in [dict(), dict(temperature=0.6, top_p=0.8), dict(top_k=20, min_p=0.1)]:
        got = sampling.probs(x, **kw)
        torch.testing.assert_close(got, sampling.probs_reference(x.float(), **kw), atol=ATOL, rtol=0)
        assert torch.equal(sampling.sample(x, seed=3, **kw), sampling.sample(x.float(), seed=3, **kw))


def test_kept_probabilities_are_accurate_to_float32_rounding():
    # The distribution itself, not only its support: on the top-k candidate path every kept probability is within
    # ~2.5 float32 ulps (3e-7 relative) of the float64 softmax of the same float32 scores (measured <= 1.6e-7; exp is
    # ~1 ulp, the normalisation 1-2). ATOL-only checks cannot see a 1e-6 relative error. (issue 19: scale)
    for seed, scale in ((0, 1.0), (1, 4.0), (2, 12.0)):
        x = _logits(8, 3001, 50 + seed, scales=(scale,))
        for kw in [dict(top_k=40), dict(top_k=7, temperature=0.7), dict(top_k=100, top_p=0.95),
                   dict(top_k=60, min_p=0.001)]:
            got = sampling.probs(x, **kw).double()
            kept = got > 0
            scores = (x / kw.get("temperature", 1.0)).double()  # float32 division, as the sampler and HF do
            exact = torch.softmax(scores.masked_fill(~kept, -float("inf")), dim=-1)
            rel = ((got - exact).abs() / exact)[kept]
            assert rel.max().item() <= 3e-7, (kw, scale, rel.max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_with_repetition_penalty(dtype):
    # An option combination with its own code path: the penalty re-reads the penalised logits in the input dtype
    # (fp16 / bf16 decoding), on contiguous and strided rows, with each cut after it. (issue 19)
    x = _logits(3, 1001, 22).to(dtype)
    prev = _prev(3, 1001, 9, 23)
    for logits in (x, _logits(3, 2002, 24).to(dtype)[:, ::2]):
        for kw in [dict(), dict(temperature=0.7, top_p=0.8), dict(top_k=15, min_p=0.05), dict(temperature=0.0)]:
            got = sampling.probs(logits, prev_tokens=prev, repetition_penalty=1.6, **kw)
            want = sampling.probs_reference(logits.float(), prev_tokens=prev, repetition_penalty=1.6, **kw)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_non_contiguous_and_one_dimensional_logits():
    base = _logits(1003, 6, 7).t()  # (6, 1003) with strides (1, 6)
    wide = _logits(6, 2006, 8)[:, ::2]
    for x in (base, wide, _logits(1, 999, 9).expand(5, 999)):
        assert not x.is_contiguous()
        kw = dict(temperature=0.9, top_p=0.7, repetition_penalty=1.3, prev_tokens=[[1, 2]] * x.shape[0])
        torch.testing.assert_close(sampling.probs(x, **kw), sampling.probs_reference(x, **kw), atol=ATOL, rtol=0)
        assert torch.equal(sampling.sample(x, seed=1, **kw), sampling.sample(x.contiguous(), seed=1, **kw))
    v = _logits(1, 777, 10)[0]
    p = sampling.probs(v, top_k=10, prev_tokens=[3, 4], repetition_penalty=2.0)
    assert p.shape == (777,)
    torch.testing.assert_close(p, sampling.probs(v[None], top_k=10, prev_tokens=[[3, 4]], repetition_penalty=2.0)[0])
    torch.testing.assert_close(p, _hf_probs(v[None], torch.tensor([[3, 4]]), top_k=10, repetition_penalty=2.0)[0],
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(p, sampling.probs_reference(v, top_k=10, prev_tokens=[3, 4], repetition_penalty=2.0),
                               atol=ATOL, rtol=0)
    for prev in (torch.tensor([3, 4]), torch.tensor([[3, 4]])):  # a (T,) or (1, T) tensor for 1-D logits
        assert torch.equal(sampling.probs(v, top_k=10, prev_tokens=prev, repetition_penalty=2.0), p)
    with pytest.raises(ValueError, match="prev_tokens must have shape \\(1, T\\)"):  # (T,) only for 1-D logits
        sampling.probs(v[None], prev_tokens=torch.tensor([3, 4]), repetition_penalty=2.0)
    ids = sampling.sample(v, seed=0)
    assert ids.shape == (1,) and ids.dtype == torch.int64
    assert sampling.sample(v[None], seed=0).shape == (1, 1)


def test_empty_batch():
    x = torch.empty(0, 17)
    assert sampling.probs(x, top_p=0.5).shape == (0, 17)
    assert sampling.sample(x, top_k=3, seed=1).shape == (0, 1)


def test_per_row_parameters_equal_scalar_calls():
    x, prev = _logits(4, 513, 11), _prev(4, 513, 5, 12)
    rows = dict(temperature=[0.5, 1.0, 0.0, 1.7], top_k=torch.tensor([0, 5, 3, 40]),
                top_p=torch.tensor([0.9, 1.0, 0.5, 0.3]), min_p=[0.0, 0.1, 0.0, 0.02],
                repetition_penalty=torch.tensor([1.0, 1.5, 0.8, 1.2]))
    got = sampling.probs(x, prev_tokens=prev, **rows)
    ids = sampling.sample(x, prev_tokens=prev, seed=9, **rows)
    for b in range(4):
        one = {k: (v[b].item() if isinstance(v, torch.Tensor) else v[b]) for k, v in rows.items()}
        torch.testing.assert_close(got[b:b + 1], _hf_probs(x[b:b + 1], prev[b:b + 1], **one), atol=ATOL, rtol=0)
        assert got[b, ids[b, 0]] > 0
    torch.testing.assert_close(got, sampling.probs_reference(x, prev_tokens=prev, **rows), atol=ATOL, rtol=0)


def test_scalars_zero_dim_tensors_and_rows_mix():
    # A plain scalar next to a per-row option, and 0-dim tensors, mean the same value on every row; a top_k past
    # any vocabulary (even past int64) keeps every token, as 0 does.
    x, prev = _logits(3, 257, 25), _prev(3, 257, 4, 26)
    rows = torch.tensor([0.9, 0.5, 1.0], dtype=torch.float64)
    got = sampling.probs(x, top_k=5, temperature=0.7, top_p=rows)
    for b in range(3):
        torch.testing.assert_close(got[b:b + 1], _hf_probs(x[b:b + 1], None, top_k=5, temperature=0.7,
                                                           top_p=rows[b].item()), atol=ATOL, rtol=0)
    kw = dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    want = sampling.probs(x, prev_tokens=prev, **kw)
    torch.testing.assert_close(want, _hf_probs(x, prev, **kw), atol=ATOL, rtol=0)
    zero_dim = {k: torch.tensor(v, dtype=torch.int64 if type(v) is int else torch.float64) for k, v in kw.items()}
    assert torch.equal(sampling.probs(x, prev_tokens=prev, **zero_dim), want)
    assert torch.equal(sampling.sample(x, prev_tokens=prev, seed=3, **zero_dim),
                       sampling.sample(x, prev_tokens=prev, seed=3, **kw))
    every = sampling.probs(x, top_p=rows)
    for big in (2**62 + 1, 2**70, torch.tensor(2**63 - 1)):
        assert torch.equal(sampling.probs(x, top_k=big, top_p=rows), every), big
    # repetition_penalty defaults to 1 (off): prev_tokens alone change nothing
    assert torch.equal(sampling.probs(x, prev_tokens=prev), sampling.probs(x))
    assert torch.equal(sampling.sample(x, prev_tokens=prev, seed=4), sampling.sample(x, seed=4))


def test_check_scalar_accepts_exactly_the_documented_ranges():
    # generate validates its options with check_scalar before any work: each boundary as the docstring states it.
    for name, good, bad in [("temperature", [0, 0.0, 2.5], [-1e-9, float("nan")]),
                            ("top_k", [0, 1, 2**70], [-1]),
                            ("top_p", [1e-9, 1, 1.0], [0, 0.0, 1.0000001, float("nan")]),
                            ("min_p", [0, 0.0, 1, 1.0], [-1e-9, 1.0000001, float("nan")]),
                            ("repetition_penalty", [1e-9, 1, 3.0], [0, 0.0, -1.0, float("nan")])]:
        for v in good:
            out = sampling.check_scalar(name, v)
            assert out == v and type(out) is (int if name == "top_k" else float), (name, v)
        for v in bad:
            with pytest.raises(ValueError, match=f"{name} must be"):
                sampling.check_scalar(name, v)
        for v in ("1", True, None, [1]):
            with pytest.raises(TypeError, match=f"{name} must be"):
                sampling.check_scalar(name, v)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        sampling.check_scalar("top_k", 2.0)


def test_prev_tokens_forms_and_repeats():
    x = _logits(3, 300, 13)
    ragged = [[5, 5, 5, 9], [], [299, 0]]
    deduped = [[5, 9], [], [0, 299]]
    a = sampling.probs(x, repetition_penalty=1.7, prev_tokens=ragged)
    torch.testing.assert_close(a, sampling.probs(x, repetition_penalty=1.7, prev_tokens=deduped), atol=0, rtol=0)
    torch.testing.assert_close(a, sampling.probs_reference(x, repetition_penalty=1.7, prev_tokens=ragged),
                               atol=ATOL, rtol=0)
    t = torch.tensor([[5, 9, 5], [1, 1, 1], [0, 299, 0]], dtype=torch.int32)
    torch.testing.assert_close(sampling.probs(x, repetition_penalty=1.7, prev_tokens=t),
                               _hf_probs(x, t.long(), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                         repetition_penalty=1.7), atol=ATOL, rtol=0)


def test_greedy_is_argmax_with_ties_to_lowest_id():
    x = _logits(6, 401, 14)
    x[2, [17, 40, 300]] = x[2].max() + 1.0  # a tie at the top
    ids = sampling.sample(x, temperature=0.0, top_k=3, top_p=0.5)
    assert torch.equal(ids[:, 0], x.argmax(-1)) and ids[2, 0] == 17
    p = sampling.probs(x, temperature=0.0)
    assert torch.equal(p, torch.zeros_like(p).scatter(1, ids, 1.0))
    prev = torch.tensor([[int(i)] for i in x.argmax(-1)])
    penalized = sampling.sample(x, temperature=0.0, repetition_penalty=50.0, prev_tokens=prev)
    ref = sampling.probs_reference(x, temperature=0.0, repetition_penalty=50.0, prev_tokens=prev).argmax(-1)
    assert torch.equal(penalized[:, 0], ref)


def test_draws_stay_inside_the_kept_set():
    x = _logits(64, 2003, 15)
    for kw in [dict(top_k=3), dict(top_p=0.2, temperature=0.5), dict(min_p=0.4), dict(top_k=100, top_p=0.6),
               dict(top_k=700, top_p=0.95, min_p=0.01)]:
        kept = sampling.probs(x, **kw) > 0
        for seed in range(8):
            ids = sampling.sample(x, seed=seed, **kw)
            assert ids.shape == (64, 1) and ids.dtype == torch.int64
            assert kept.gather(1, ids).all()


@pytest.mark.parametrize("kw", [dict(), dict(top_k=4, temperature=0.7), dict(top_p=0.8), dict(min_p=0.2)])
def test_frequencies_match_probs(kw):
    N = 40000
    x = torch.tensor([[0.3, -1.2, 1.1, 0.0, 2.0, -0.4, 0.9]])
    p = sampling.probs(x, **kw)[0].double()
    counts = torch.bincount(sampling.sample(x.expand(N, 7), seed=123, **kw)[:, 0], minlength=7).double()
    sigma = (N * p * (1 - p)).sqrt()
    assert ((counts - N * p).abs() <= 5 * sigma + 1e-9).all(), (counts, N * p)
    assert (counts[p == 0] == 0).all()


def test_seeds_threads_and_torch_generator():
    x = _logits(37, 3001, 16, scales=(0.3,))
    kw = dict(temperature=1.1, top_p=0.95)
    a = sampling.sample(x, seed=42, **kw)
    assert torch.equal(a, sampling.sample(x, seed=42, **kw))
    assert not torch.equal(a, sampling.sample(x, seed=43, **kw))
    y = x.clone()
    y[:5] = _logits(5, 3001, 99)  # row b's draw depends on (seed, b) and its own logits only
    assert torch.equal(a[5:], sampling.sample(y, seed=42, **kw)[5:])
    for n in (1, 2, 3, 37):
        assert torch.equal(a, sampling.sample(x, seed=42, num_threads=n, **kw))
        assert torch.equal(sampling.probs(x, num_threads=n, **kw), sampling.probs(x, num_threads=1, **kw))
    # any int: seeds are taken modulo 2**64 (negative and huge ones too)
    assert torch.equal(sampling.sample(x, seed=-1, **kw), sampling.sample(x, seed=2**64 - 1, **kw))
    assert torch.equal(sampling.sample(x, seed=2**64 + 42, **kw), a)
    assert torch.equal(sampling.sample(x, seed=42 - 2**66, **kw), a)
    torch.manual_seed(7)
    b1, b2 = sampling.sample(x, **kw), sampling.sample(x, **kw)
    torch.manual_seed(7)
    assert torch.equal(b1, sampling.sample(x, **kw)) and torch.equal(b2, sampling.sample(x, **kw))
    assert not torch.equal(b1, b2)


def test_concurrent_calls_equal_serial_calls():
    x = _logits(16, 4001, 17)
    jobs = [dict(seed=s, top_p=0.5 + 0.05 * (s % 9), top_k=(s % 4) * 30, temperature=0.5 + 0.1 * s) for s in range(24)]
    serial = [sampling.sample(x, **j) for j in jobs]
    serial_p = [sampling.probs(x, **{k: v for k, v in j.items() if k != "seed"}) for j in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(lambda j: sampling.sample(x, **j), jobs))
        parallel_p = list(pool.map(lambda j: sampling.probs(x, **{k: v for k, v in j.items() if k != "seed"}), jobs))
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel))
    assert all(torch.equal(s, p) for s, p in zip(serial_p, parallel_p))


def _bad(match, x=None, fn=sampling.probs, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        fn(_logits(3, 50, 18) if x is None else x, **kw)


def test_bad_logits():
    x = _logits(3, 50, 19)
    for value, match in [(float("nan"), "NaN or \\+inf; row 1"), (float("inf"), "NaN or \\+inf; row 1")]:
        y = x.clone()
        y[1, 7] = value
        _bad(match, y)
        _bad(match, y, fn=sampling.sample)
    y = x.clone()
    y[2] = -float("inf")
    _bad("row 2 is all -inf", y)
    _bad("overflows float32", x * 1e30, temperature=1e-10)
    _bad("logits must be float32, float16 or bfloat16; got torch.float64", x.double(), exc=TypeError)
    _bad("logits must be float32, float16 or bfloat16; got torch.int64", x.long(), exc=TypeError)
    _bad("logits must have shape \\(B, V\\) or \\(V,\\); got \\(1, 3, 50\\)", x[None])
    _bad("at least one token", torch.empty(2, 0))
    _bad("logits must be a torch.Tensor; got list", [[1.0, 2.0]], exc=TypeError)


def test_bad_options():
    for kw, match in [
        (dict(top_p=0.0), "top_p must be a number in \\(0, 1\\]"), (dict(top_p=1.5), "top_p must be"),
        (dict(top_k=-1), "top_k must be an integer >= 0"), (dict(temperature=-0.5), "temperature must be"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be a number > 0"),
        (dict(min_p=1.2), "min_p must be a number in \\[0, 1\\]"), (dict(min_p=-0.1), "min_p must be"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_p=torch.tensor([0.5, 1.0, 2.0])), "top_p .* at row 2"),
        (dict(top_k=torch.tensor([1, -3, 2])), "top_k .* at row 1"),
        (dict(temperature=[1.0, 1.0, -1.0]), "temperature .* at row 2"),
        (dict(repetition_penalty=torch.tensor([1.0, 0.0, 1.0])), "repetition_penalty .* at row 1"),
        (dict(min_p=torch.tensor([0.0, 0.0, 1.5])), "min_p .* at row 2"),
        (dict(top_p=torch.tensor([0.5, 0.5])), "top_p given per row must have shape \\(3,\\); got \\(2,\\)"),
        (dict(prev_tokens=[[1], [50], [2]], repetition_penalty=1.2), "in \\[0, 50\\); got 50 in row 1"),
        (dict(prev_tokens=torch.tensor([[1], [2], [-1]])), "got -1 in row 2"),
        (dict(prev_tokens=torch.zeros(2, 4, dtype=torch.int64)), "prev_tokens must have shape \\(3, T\\)"),
        (dict(prev_tokens=[[1], [2]]), "one list of ids per row \\(3\\); got 2"),
    ]:
        _bad(match, **kw)
        _bad(match, fn=sampling.sample, **kw)
    for kw, match in [(dict(top_k=2.5), "top_k must be an integer"), (dict(top_k=torch.tensor([1.0, 2.0, 3.0])),
                      "top_k must hold"), (dict(temperature="hot"), "temperature must be a number"),
                      (dict(top_p=True), "top_p must be"), (dict(prev_tokens=torch.zeros(3, 2)), "int64"),
                      (dict(prev_tokens=[[1.5], [1], [2]]), "lists of int token ids"),
                      (dict(prev_tokens="abc"), "prev_tokens must be")]:
        _bad(match, exc=TypeError, **kw)
    _bad("seed must be an int", fn=sampling.sample, exc=TypeError, seed=1.5)
    _bad("num_threads must be", num_threads=0)


def test_missing_extension_error(monkeypatch):
    monkeypatch.setattr(sampling, "_ext", None)
    monkeypatch.setitem(sys.modules, "engine._sampler", None)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        sampling.probs(torch.randn(1, 5))


@pytest.mark.gpu
def test_cuda_logits_come_back_on_cuda():
    x = _logits(3, 1001, 20).cuda()
    p = sampling.probs(x, top_p=0.9)
    assert p.device.type == "cuda"
    torch.testing.assert_close(p.cpu(), sampling.probs(x.cpu(), top_p=0.9), atol=0, rtol=0)
    ids = sampling.sample(x, seed=1, top_k=5)
    assert ids.device.type == "cuda" and torch.equal(ids.cpu(), sampling.sample(x.cpu(), seed=1, top_k=5))


@pytest.mark.parametrize("off", ["ENGINE_SAMPLER_NO_AVX2", "ENGINE_SAMPLER_NO_AVX512"])
def test_base_loops_equal_avx2_loops(tmp_path, off):
    # The AVX2 / AVX-512 twins must give bit-identical probs and ids to the base (SSE2 / plain C++) loops: a child
    # process with the wider loops turned off must agree with this one (which uses the widest the CPU has).
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, torch\nfrom engine import sampling\n"
        "x = torch.randn(6, 20011, generator=torch.Generator().manual_seed(21)) * 2.5\n"
        "x[4] = x[4] * 0.12; x[4, 7] = 12.0; x[5] = x[5] * 0.2\n"
        "kws = [dict(temperature=0.8, top_p=0.9), dict(top_k=40, min_p=0.05), dict(top_k=5000, top_p=0.7),\n"
        "       dict(temperature=1.3), dict(top_p=0.95, min_p=1e-6)]\n"
        "out = [(sampling.probs(x, **kw), sampling.sample(x, seed=4, **kw)) for kw in kws]\n"
        "torch.save(out, sys.argv[1])\n")
    env = {**os.environ, off: "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "base.pt")], env=env, check=True, timeout=300)
    base = torch.load(tmp_path / "base.pt")
    x = torch.randn(6, 20011, generator=torch.Generator().manual_seed(21)) * 2.5
    x[4] = x[4] * 0.12
    x[4, 7] = 12.0  # top-p's cut lies in the flat tail, 12 nats below the max: the full-row path
    x[5] = x[5] * 0.2  # flat row: the dense top-p pass
    kws = [dict(temperature=0.8, top_p=0.9), dict(top_k=40, min_p=0.05), dict(top_k=5000, top_p=0.7),
           dict(temperature=1.3), dict(top_p=0.95, min_p=1e-6)]
    for (p, ids), kw in zip(base, kws):
        assert torch.equal(p, sampling.probs(x, **kw)) and torch.equal(ids, sampling.sample(x, seed=4, **kw))
