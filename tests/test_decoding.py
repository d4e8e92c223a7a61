"""Fast checks of generation's keywords and bookkeeping (engine/decoding.py, engine/generate.py), a few seconds.

decoding_options against the documented rules, on a stand-in config: which values each keyword takes (and the error
type of each refusal), HF's defaults (the config's EOS ids inside the vocabulary, the pad id else the first EOS id
else 0), greedy dropping the warpers but keeping the repetition penalty, seeds drawn from torch's generator, and the
step seeds (step 0 is the call's seed, every step a fresh one). Then generate / stream on a two-layer random GPT-2
(vocabulary 41, 40 positions) against transformers' generate on the same weights: left-padded greedy, a
one-token prompt, per-row EOS stops with all rows stopping early on the device (greedy) and the host (repetition
penalty) paths, streams equal to generate's new tokens, the documented keyword defaults, the sampler's seeds per
step, the cache length, and the refusals generate adds (prompt / mask shape, position limit, cuda_graph, model kind).
The slower, broader comparisons are in tests/test_generate.py.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import transformers as T

from engine import decoding
from engine import generate as gen
from engine import sampling
from engine.checkpoint import from_transformers
from models_util import left_padded_prompts

V, NPOS = 41, 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- decoding_options on a stand-in config -----------------------------------------------------------------------
def cfg(eos=None, pad=None, vocab=V):
    return types.SimpleNamespace(vocab_size=vocab, eos_token_id=eos, pad_token_id=pad)


def options(c=None, **kw):
    args = dict(max_new_tokens=5, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                repetition_penalty=1.0, eos_token_id=None, pad_token_id=None, seed=3)
    args.update(kw)
    return decoding.decoding_options(c if c is not None else cfg(), **args)


def test_greedy_drops_the_warpers_but_keeps_the_penalty():
    _, params, *_ = options(temperature=0.3, top_k=4, top_p=0.6, min_p=0.2, repetition_penalty=1.7)
    assert params == dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.7)
    _, params, *_ = options(do_sample=True, temperature=0.3, top_k=4, top_p=0.6, min_p=0.2, repetition_penalty=0.9)
    assert params == dict(temperature=0.3, top_k=4, top_p=0.6, min_p=0.2, repetition_penalty=0.9)
    assert type(params["top_k"]) is int and type(params["temperature"]) is float


@pytest.mark.parametrize("value,exc", [(1, None), (np.int64(7), None), (0, ValueError), (-3, ValueError),
                                       (2.5, TypeError), (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_max_new_tokens(value, exc):
    if exc is None:
        got = options(max_new_tokens=value)[0]
        assert got == int(value) and type(got) is int
    else:
        with pytest.raises(exc, match="max_new_tokens"):
            options(max_new_tokens=value)


@pytest.mark.parametrize("do_sample,temperature,exc", [
    (False, 0.0, None), (False, 0, None), (False, 0.7, None), (True, 0.7, None), (True, 2.5, None),
    (True, 0.0, ValueError), (True, -0.5, ValueError), (False, -0.5, ValueError), (False, -1, ValueError),
    (True, True, TypeError), (True, "1", TypeError), (True, None, TypeError)])
def test_temperature(do_sample, temperature, exc):
    if exc is None:
        _, params, *_ = options(do_sample=do_sample, temperature=temperature)
        assert params["temperature"] == (float(temperature) if do_sample else 0.0)
    else:
        with pytest.raises(exc, match="temperature"):
            options(do_sample=do_sample, temperature=temperature)


@pytest.mark.parametrize("value", [1, 0, None, "True", np.bool_(True)])
def test_do_sample_must_be_a_bool(value):
    with pytest.raises(TypeError, match="do_sample"):
        options(do_sample=value)


@pytest.mark.parametrize("value,want", [
    (0, [0]), (V - 1, [V - 1]), (np.int64(5), [5]), ([3, 0, 9], [3, 0, 9]), ((4,), [4]), ([], []),
    (torch.tensor([6, 2]), [6, 2]), (torch.tensor(7), [7]), (list(range(8)), list(range(8)))])
def test_eos_ids_accepted(value, want):
    _, _, eos, *_ = options(eos_token_id=value)
    assert eos == want and all(type(i) is int for i in eos)


@pytest.mark.parametrize("value,exc,match", [
    (V, ValueError, r"\[0, 41\)"), (-1, ValueError, r"\[0, 41\)"), ([2, V + 3], ValueError, r"got 44"),
    ("3", TypeError, "eos_token_id"), (True, TypeError, "eos_token_id"), ([1.0], TypeError, "eos_token_id"),
    ([2, True], TypeError, "eos_token_id"), ({3}, TypeError, "eos_token_id"), (2.0, TypeError, "eos_token_id"),
    ([[1, 2]], TypeError, "eos_token_id"), (list(range(9)), ValueError, "at most 8")])
def test_eos_ids_refused(value, exc, match):
    with pytest.raises(exc, match=match):
        options(eos_token_id=value)


@pytest.mark.parametrize("config_eos,want", [
    (None, []), (0, [0]), (V - 1, [V - 1]), (V, []), (50256, []), ([7, V, 0, -2, 3], [7, 0, 3])])
def test_default_eos_is_the_configs_inside_the_vocabulary(config_eos, want):
    assert decoding.config_eos_ids(cfg(eos=config_eos)) == want
    assert options(cfg(eos=config_eos))[2] == want


@pytest.mark.parametrize("config_pad,config_eos,eos,want", [
    (None, None, None, 0),  # nothing anywhere: 0
    (None, [9, 4], None, 9),  # the config's first EOS id
    (None, 7, [12, 5], 12),  # the first of the EOS ids given
    (0, 7, None, 0),  # the config's pad id, even 0
    (V - 1, 7, None, V - 1),
    (V, [8, 2], None, 8),  # a pad id outside the vocabulary is ignored
    (V + 9, None, [], 0)])
def test_default_pad(config_pad, config_eos, eos, want):
    pad = options(cfg(eos=config_eos, pad=config_pad), eos_token_id=eos)[3]
    assert pad == want and type(pad) is int


@pytest.mark.parametrize("value,want", [(0, 0), (V - 1, V - 1), ([6], 6), (np.int64(3), 3), (torch.tensor([2]), 2)])
def test_pad_given(value, want):
    assert options(cfg(eos=5, pad=1), pad_token_id=value)[3] == want


@pytest.mark.parametrize("value,exc", [
    (-1, ValueError), (V, ValueError), ([], TypeError), ([3, 4], ValueError), (True, TypeError), ("2", TypeError)])
def test_pad_refused(value, exc):
    with pytest.raises(exc, match="pad_token_id"):
        options(pad_token_id=value)


@pytest.mark.parametrize("value,exc", [(True, TypeError), ("1", TypeError), (1.0, TypeError)])
def test_seed_refused(value, exc):
    with pytest.raises(exc, match="seed"):
        options(seed=value)


def test_seed_given_or_drawn_from_torch():
    assert options(seed=-5)[4] == -5 and options(seed=np.int64(2**62))[4] == 2**62
    assert options(seed=2**70)[4] == 2**70
    draws = []
    for s in range(16):
        torch.manual_seed(s)
        a = options(seed=None)[4]
        torch.manual_seed(s)
        assert options(seed=None)[4] == a  # torch.manual_seed repeats a run
        draws.append(a)
    assert len(set(draws)) == 16 and all(0 <= d < 2**63 for d in draws)
    assert max(draws) >= 2**62  # the draw spans 63 bits (a 62-bit range here has odds 2**-16)


def test_step_seeds():
    # step 0 is the call's seed (a one-token generate draws as sampling.sample(seed=seed)); each later step of a call
    # gets its own seed; every step seed is a valid 64-bit value
    for seed in (0, 5, 2**63 + 11, 2**64 - 1):
        seeds = [decoding.step_seed(seed, s) for s in range(200)]
        assert seeds[0] == seed and len(set(seeds)) == 200
        assert all(type(x) is int and 0 <= x < 2**64 for x in seeds)
        assert max(seeds[1:]) >= 2**62  # the later steps' seeds span 64 bits (odds of a miss: 2**-398)
    assert decoding.step_seed(2**64 + 5, 3) == decoding.step_seed(5, 3)


def test_a_call_seeded_with_a_step_seed_does_not_replay_the_later_steps():
    # with seeds seed + step * C, a call seeded step_seed(S, 1) would draw at step s what the call seeded S draws at
    # step s + 1; across seeds 0..15, their step-1 seeds and 2**64 - 1 no two (seed, step >= 1) pairs share a seed
    seeds = list(range(16)) + [decoding.step_seed(s, 1) for s in range(16)] + [2**64 - 1]
    later = [decoding.step_seed(seed, s) for seed in seeds for s in range(1, 64)]
    assert len(set(later)) == len(later)
    assert not set(later) & set(seeds[:16])


# ---- generate / stream vs transformers on a two-layer GPT-2 ------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """(transformers GPT2LMHeadModel, the engine model with its weights); the config has no EOS id. Two layers: a
    wrong cache entry written in one layer shows in the next layer's keys (one layer's k / v come from embeddings)."""
    torch.manual_seed(8)
    hf = T.GPT2LMHeadModel(T.GPT2Config(n_embd=24, n_layer=2, n_head=2, vocab_size=V, n_positions=NPOS,
                                         bos_token_id=None, eos_token_id=None)).eval()
    with torch.no_grad():
        for p in hf.parameters():  # large perturbations: varied greedy continuations
            p.add_(torch.randn_like(p) * 0.6)
    return hf, from_transformers(hf)


def graph_steps(m, ids, kw):
    """generate's decode loop with ``cuda_graph`` on (tests patch the capture helpers with eager stand-ins), run to
    the end: the finished session and the request."""
    req, max_len = gen._prepare(m, ids, kw)
    req.cuda_graph = True
    s = gen._Session(m, ids.shape[0], max_len)
    for _ in gen._steps(s, req, streaming=False):
        pass
    return s, req


def prompts(B, T_, seed, pads=()):
    return left_padded_prompts(B, T_, V, seed=seed, pads=pads)


def hf_generate(hf, ids, mask, max_new, *, eos=None, pad=0, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                           pad_token_id=pad, **kw)


def test_greedy_left_padded_and_one_token_prompts_equal_transformers(models):
    hf, m = models
    ids, mask = prompts(3, 5, 1, pads=(0, 2, 4))  # the last row holds a single real token
    want = hf_generate(hf, ids, mask, 11)
    assert len(set(want[:, 5:].flatten().tolist())) >= 6  # a varied continuation
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=11), want)
    one = ids[:, -1:]
    assert torch.equal(m.generate(one, max_new_tokens=7), hf_generate(hf, one, torch.ones_like(one), 7))
    assert torch.equal(m.generate(ids[:1], max_new_tokens=1), want[:1, :6])
    # the last position the model has: prompt + new tokens == n_positions is allowed
    long_ids = ids[:2].repeat(1, 3)[:, :NPOS - 4]
    assert torch.equal(m.generate(long_ids, max_new_tokens=4), hf_generate(hf, long_ids, torch.ones_like(long_ids), 4))


@pytest.mark.parametrize("penalty", [1.0, 2.0])  # 1.0: argmax on the device; 2.0: the host sampler (greedy + penalty)
def test_eos_stops_each_row_then_all_rows(models, penalty):
    hf, m = models
    ids, mask = prompts(3, 6, 2, pads=(3, 0, 1))
    free = hf_generate(hf, ids, mask, 20, repetition_penalty=penalty)[:, 6:]
    # EOS: the tokens rows 0, 1, 2 emit at their 3rd, 6th and 9th steps (a row may meet another row's EOS first)
    eos = [free[0, 2].item(), free[1, 5].item(), free[2, 8].item()]
    stops = [next((i for i, t in enumerate(r) if t in eos), None) for r in free.tolist()]
    assert None not in stops and max(stops) < 19  # every row stops before the end (the loop ends early)
    want = hf_generate(hf, ids, mask, 20, eos=eos, pad=37, repetition_penalty=penalty)
    assert want.shape[1] == 6 + max(stops) + 1
    kw = dict(attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=37, repetition_penalty=penalty)
    assert torch.equal(m.generate(ids, **kw), want)
    steps = list(gen.stream(m, ids, **kw))
    assert len(steps) == max(stops) + 1 and all(s.shape == (3,) and s.dtype == torch.int64 for s in steps)
    assert torch.equal(torch.stack(steps, 1), want[:, 6:])
    # no EOS at all: every step runs, and stream / generate agree
    kw.update(eos_token_id=[])
    full = m.generate(ids, **kw)
    assert torch.equal(full, hf_generate(hf, ids, mask, 20, repetition_penalty=penalty))
    assert torch.equal(torch.stack(list(gen.stream(m, ids, **kw)), 1), full[:, 6:])


@pytest.mark.parametrize("penalty", [1.0, 1.6])
def test_no_eos_continues_through_token_0(models, penalty):
    # eos_token_id=[] (and the default here: the config has none) stops on nothing: a row that emits id 0 goes on,
    # on the device path and the host path (their unused EOS slots must match no token id)
    hf, m = models
    ids, mask = prompts(2, 7, 9, pads=(0, 5))
    want = hf_generate(hf, ids, mask, 30, repetition_penalty=penalty)
    assert want.shape == (2, 37) and (want[:, 7:] == 0).any(1).all()  # HF's rows each pass through id 0
    for eos in ([], None):
        got = m.generate(ids, attention_mask=mask, max_new_tokens=30, repetition_penalty=penalty, eos_token_id=eos)
        assert torch.equal(got, want)


def test_documented_defaults(models):
    # max_new_tokens=32, greedy; sampling: temperature 1, top_k 0 (off), top_p 1, min_p 0, no repetition penalty;
    # the config's EOS (none here); stream takes generate's defaults
    hf, m = models
    ids, mask = prompts(2, 4, 5, pads=(0, 1))
    got = m.generate(ids, attention_mask=mask)
    assert torch.equal(got, hf_generate(hf, ids, mask, 32))
    assert torch.equal(torch.stack(list(gen.stream(m, ids, attention_mask=mask)), 1), got[:, 4:])
    explicit = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    a = m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, seed=4)
    assert torch.equal(a, m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, seed=4, **explicit))
    assert not torch.equal(a, m.generate(ids, attention_mask=mask, max_new_tokens=12))  # really sampled
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus"):
        gen.stream(m, ids, bogus=1)


def test_sampler_gets_the_step_seeds_and_the_shown_tokens(models, monkeypatch):
    """Each step hands sampling.sample seed step_seed(seed, step), the logits of transformers' forward on the
    prefix, and (with a penalty) the tokens so far with left padding replaced by a row's first real token (as
    HF 5.x, which does not penalise left padding)."""
    hf, m = models
    ids, mask = prompts(2, 5, 6, pads=(2, 0))
    calls = []
    real = sampling.sample

    def spy(logits, **kw):
        calls.append((logits.clone(), kw))
        return real(logits, **kw)

    monkeypatch.setattr(sampling, "sample", spy)
    out = m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, seed=2**64 - 3,
                     repetition_penalty=1.3, top_k=5)
    assert [kw["seed"] for _, kw in calls] == [decoding.step_seed(2**64 - 3, s) for s in range(6)]
    for step, (logits, kw) in enumerate(calls):
        prefix = out[:, :5 + step]
        full = torch.cat([mask, torch.ones(2, step, dtype=torch.long)], 1)
        with torch.no_grad():
            ref = hf(prefix, attention_mask=full, position_ids=(full.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
        shown = prefix.clone()
        shown[0, :2] = prefix[0, 2]  # row 0's two pads show as its first real token
        assert torch.equal(kw["prev_tokens"], shown)
        assert kw["top_k"] == 5 and kw["repetition_penalty"] == 1.3
    # top_k=1 sampling is greedy
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1, seed=9),
                       m.generate(ids, attention_mask=mask, max_new_tokens=8))


def test_cache_length_is_rounded_up_and_capped(models):
    _, m = models
    for T_, new in ((3, 1), (5, 9), (20, 20), (1, 39)):
        ids, _ = prompts(1, T_, 0)
        req, max_len = gen._prepare(m, ids, dict(
            attention_mask=None, max_new_tokens=new, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
            min_p=0.0, repetition_penalty=1.0, eos_token_id=None, pad_token_id=None, seed=0, cuda_graph=False))
        need = T_ + new
        rounded = -(-need // gen.CACHE_ALIGN) * gen.CACHE_ALIGN
        assert max_len == min(NPOS, rounded) >= need and type(max_len) is int
        assert req.lengths.tolist() == [T_] and req.cuda_graph is False and req.host_sampling is False


def test_graph_control_flow_on_cpu(models, monkeypatch):
    """cuda_graph's path with stand-ins (capture records, replay runs): two warm-up calls per step kind, then one
    capture and replays; the tokens equal the eager call's."""
    _, m = models
    log = []
    monkeypatch.setattr(gen, "_on_side_stream", lambda fn: (log.append("warmup"), fn()))
    monkeypatch.setattr(gen, "_capture", lambda fn: (log.append("capture"), types.SimpleNamespace(
        replay=lambda: (log.append("replay"), fn())))[1])
    ids, mask = prompts(3, 5, 7, pads=(1, 0, 4))
    for sample in (False, True):
        log.clear()
        kw = dict(attention_mask=mask, max_new_tokens=9, do_sample=sample, temperature=1.0, top_k=0, top_p=1.0,
                  min_p=0.0, repetition_penalty=1.0, eos_token_id=[], pad_token_id=None, seed=5, cuda_graph=False)
        want = m.generate(ids, **kw)
        s, _ = graph_steps(m, ids, kw)
        assert torch.equal(s.out[:, :5 + int(s.n_new)], want)
        kinds = 2 if sample else 1  # sampling: the forward and the commit; greedy: the whole step
        runs = 8 + 9 if sample else 8  # the first token comes from the prefill
        assert log.count("warmup") == 2 * kinds and log.count("capture") == kinds
        assert log.count("replay") == runs - 2 * kinds


def test_graph_path_stops_at_the_last_eos(models, monkeypatch):
    """With cuda_graph (stand-ins that run eagerly), rows stopping early: generate checks "all stopped?" only every
    CHECK_EVERY steps, yet returns HF's length; a stream ends right after the last row's EOS (no pad-only steps)."""
    hf, m = models
    monkeypatch.setattr(gen, "_on_side_stream", lambda fn: fn())
    monkeypatch.setattr(gen, "_capture", lambda fn: types.SimpleNamespace(replay=fn))
    ids, mask = prompts(3, 5, 7, pads=(1, 0, 4))
    free = hf_generate(hf, ids, mask, 14)[:, 5:]
    eos = [free[0, 1].item(), free[1, 3].item(), free[2, 2].item()]
    want = hf_generate(hf, ids, mask, 14, eos=eos, pad=eos[0])
    assert want.shape[1] < 5 + 14 - gen.CHECK_EVERY  # all rows stop well before the last step
    kw = dict(attention_mask=mask, max_new_tokens=14, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
              min_p=0.0, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=None, seed=0, cuda_graph=False)
    s, req = graph_steps(m, ids, kw)
    assert torch.equal(s.out[:, :5 + int(s.n_new)], want)
    steps = list(gen._steps(s, req, streaming=True))
    assert torch.equal(torch.stack(steps, 1), want[:, 5:])


BAD = [
    (dict(max_new_tokens=NPOS - 7 + 1), ValueError, "41 exceeds this model's maximum of 40"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 0, 1, 1]])), ValueError, "left-padded"),
    (dict(attention_mask=torch.tensor([[0, 0, 0, 0, 0, 0, 0]])), ValueError, "no real token"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0]])), ValueError, "left-padded"),
    (dict(cuda_graph=1), TypeError, "cuda_graph must be a bool"),
    (dict(cuda_graph="yes"), TypeError, "cuda_graph must be a bool"),
]


@pytest.mark.parametrize("kw,exc,match", BAD, ids=[b[2][:24] for b in BAD])
def test_generate_refusals(models, monkeypatch, kw, exc, match):
    _, m = models
    monkeypatch.setattr(gen, "_Session", None)  # any work would need a session
    ids, _ = prompts(1, 7, 0)
    with pytest.raises(exc, match=match):
        m.generate(ids, **kw)
    with pytest.raises(exc, match=match):
        gen.stream(m, ids, **kw)


def test_generate_refuses_other_prompts_masks_and_models(models, monkeypatch):
    hf, m = models
    ok = m.generate(torch.tensor([[4, 9]]), attention_mask=torch.tensor([[0, 1]]), max_new_tokens=2,
                    cuda_graph=False)
    assert ok.shape == (1, 4)
    monkeypatch.setattr(gen, "_Session", None)
    for mask in ([[1, 0]], [[1, 0], [0, 1]]):  # two-token prompts: right padding
        with pytest.raises(ValueError, match="left-padded"):
            m.generate(torch.tensor([[4, 9]] * len(mask)), attention_mask=torch.tensor(mask))
    for ids in (torch.zeros(2, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)):
        with pytest.raises(ValueError, match="empty prompt"):
            m.generate(ids)
    with pytest.raises(ValueError, match="shape"):
        m.generate(torch.tensor([3, 4]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.generate([[3, 4]])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
            m.generate(torch.tensor([[3, 4]]), cuda_graph=True)
    base = from_transformers(T.GPT2Model(hf.config))
    with pytest.raises(TypeError, match="GPT2LMHeadModel; this is GPT2Model"):
        gen.generate(base, torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="GPT2LMHeadModel; this is Linear"):
        gen.generate(torch.nn.Linear(2, 2), torch.tensor([[1, 2]]))
