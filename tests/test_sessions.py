"""Concurrent use of one model's decode sessions (engine/sessions.py, engine/generate.py): threads calling generate,
interleaved streams in one thread, streams closed or abandoned early, failures mid-run, copies of a model; every
result is compared with the same request run alone. A gpu-marked variant repeats it with CUDA graphs."""
from __future__ import annotations

import copy
import gc
import pickle
import threading

import pytest
import torch
import transformers as T

from engine import generate as gen
from engine.checkpoint import from_transformers
from engine.sessions import SessionPool

V, NPOS = 89, 80

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_gpt2(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(3)
    hf = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=V, n_positions=NPOS)).eval()
    with torch.no_grad():
        for p in hf.parameters():  # large perturbations: varied continuations, so a mix-up changes tokens
            p.add_(torch.randn_like(p) * 0.5)
    return from_transformers(hf, device=device)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2()


def requests(device: str = "cpu") -> list[tuple[torch.Tensor, dict]]:
    """Varied requests: batch sizes 1-3, prompt lengths, greedy / sampling / repetition penalty, shared and
    distinct session keys (several requests need the same batch size and cache length)."""
    out = []
    for i in range(8):
        g = torch.Generator().manual_seed(100 + i)
        B, T_ = (1, 2, 3, 2)[i % 4], 3 + (5 * i) % 11
        ids = torch.randint(0, V, (B, T_), generator=g).to(device)
        kw = dict(max_new_tokens=12 + 3 * (i % 3), eos_token_id=[])
        out.append((ids, decoding(i, kw, sample={"top_p": 0.9}, penalty=1.3)))
    return out


def decoding(i: int, kw: dict, *, sample: dict, penalty: float) -> dict:
    """Request i's decoding keywords: greedy, sampling (with ``sample`` and seed i) or a repetition penalty, in turn."""
    if i % 3 == 1:
        kw.update(do_sample=True, seed=i, **sample)
    elif i % 3 == 2:
        kw.update(repetition_penalty=penalty)
    return kw


def run_threads(fn, n: int) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        barrier.wait()  # start together: maximal overlap
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a generate call hung"
    return results


def test_threads_calling_generate_get_their_own_tokens(model):
    reqs = requests()
    want = [model.generate(ids, **kw) for ids, kw in reqs]
    for _ in range(2):  # the second round reuses the sessions the first one left idle
        got = run_threads(lambda i: model.generate(reqs[i][0], **reqs[i][1]), len(reqs))
        for i, (g, w) in enumerate(zip(got, want)):
            assert isinstance(g, torch.Tensor), f"request {i} raised {g!r}"
            assert torch.equal(g, w), f"request {i}: wrong tokens"


def test_threads_streaming_and_generating_at_once(model):
    reqs = requests()

    def call(i: int) -> torch.Tensor:
        ids, kw = reqs[i]
        if i % 2:
            return torch.stack(list(gen.stream(model, ids, **kw)), 1)
        return model.generate(ids, **kw)[:, ids.shape[1]:]

    want = [model.generate(ids, **kw)[:, ids.shape[1]:] for ids, kw in reqs]
    for i, (g, w) in enumerate(zip(run_threads(call, len(reqs)), want)):
        assert isinstance(g, torch.Tensor) and torch.equal(g, w), f"request {i}: {g!r}"


def test_interleaved_streams_in_one_thread(model):
    """Two open streams with the same session key, stepped alternately, with a generate call between steps: no
    deadlock, each stream continues its own prompt."""
    (a_ids, a_kw), (b_ids, b_kw) = requests()[1], requests()[5]  # both batch 2; b samples, a penalises repeats
    c_ids, c_kw = requests()[3]
    want_a = model.generate(a_ids, **a_kw)[:, a_ids.shape[1]:]
    want_b = model.generate(b_ids, **b_kw)[:, b_ids.shape[1]:]
    want_c = model.generate(c_ids, **c_kw)
    a, b = gen.stream(model, a_ids, **a_kw), gen.stream(model, b_ids, **b_kw)
    got_a, got_b = [], []
    for step in range(max(want_a.shape[1], want_b.shape[1])):
        if step < want_a.shape[1]:
            got_a.append(next(a))
        if step == 3:
            assert torch.equal(model.generate(c_ids, **c_kw), want_c)
        if step < want_b.shape[1]:
            got_b.append(next(b))
    assert torch.equal(torch.stack(got_a, 1), want_a)
    assert torch.equal(torch.stack(got_b, 1), want_b)


def test_closed_or_abandoned_stream_returns_its_session(model):
    m = copy.deepcopy(model)  # a fresh pool
    ids, kw = requests()[0]
    pool = SessionPool.of(m, "generate")
    unstarted = gen.stream(m, ids, **kw)  # never started: holds nothing
    s = gen.stream(m, ids, **kw)
    next(s)
    assert (pool.created, pool.idle()) == (1, 0)  # checked out by the open stream
    s.close()
    assert (pool.created, pool.idle()) == (1, 1)
    s = gen.stream(m, ids, **kw)
    next(s)
    assert (pool.created, pool.idle()) == (1, 0)  # the closed stream's session, reused
    del s  # abandoned: CPython closes it when the last reference goes
    gc.collect()
    assert (pool.created, pool.idle()) == (1, 1)
    want = m.generate(ids, **kw)
    assert torch.equal(torch.cat([ids, torch.stack(list(unstarted), 1)], 1), want)
    assert (pool.created, pool.idle()) == (1, 1)


def test_a_run_that_fails_drops_its_session(model, monkeypatch):
    m = copy.deepcopy(model)
    ids, kw = requests()[0]
    want = m.generate(ids, **kw)
    pool = SessionPool.of(m, "generate")
    assert (pool.created, pool.idle()) == (1, 1)

    def boom(self):
        raise RuntimeError("injected failure in a decode step")

    with monkeypatch.context() as mp:
        mp.setattr(gen._Session, "_greedy_step", boom)
        with pytest.raises(RuntimeError, match="injected"):
            m.generate(ids, **kw)
    assert pool.idle() == 0  # possibly half-written: not reused
    assert torch.equal(m.generate(ids, **kw), want)
    assert (pool.created, pool.idle()) == (2, 1)


def test_pool_keeps_one_key_idle_and_copies_empty():
    pool = SessionPool()
    with pool.checkout("a", lambda: ["a1"]) as a1, pool.checkout("a", lambda: ["a2"]) as a2:
        assert a1 is not a2
    assert pool.idle("a") == 2
    with pool.checkout("b", lambda: ["b1"]):  # a new key frees the idle sessions of others first
        assert pool.idle() == 0
    assert pool.idle("b") == 1 and pool.created == 3
    for clone in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        assert clone.idle() == 0 and clone.created == 0


def test_model_with_a_pool_can_be_copied(model):
    ids, kw = requests()[2]
    want = model.generate(ids, **kw)
    clone = copy.deepcopy(model)
    assert SessionPool.of(clone, "generate") is not SessionPool.of(model, "generate")
    assert torch.equal(clone.generate(ids, **kw), want)


@pytest.mark.gpu
def test_threads_and_interleaved_streams_with_cuda_graphs():
    m = tiny_gpt2("cuda")
    reqs = requests("cuda")
    want = [m.generate(ids, **kw, cuda_graph=False) for ids, kw in reqs]  # eager, alone
    for _ in range(3):  # round 1 warms up, round 2 captures, round 3 replays (per session)
        got = run_threads(lambda i: m.generate(reqs[i][0], **reqs[i][1], cuda_graph=True), len(reqs))
        for i, (g, w) in enumerate(zip(got, want)):
            assert isinstance(g, torch.Tensor), f"request {i} raised {g!r}"
            assert torch.equal(g, w), f"request {i}: wrong tokens"
    (a_ids, a_kw), (b_ids, b_kw) = reqs[1], reqs[5]
    a, b = gen.stream(m, a_ids, **a_kw), gen.stream(m, b_ids, **b_kw)
    got_a, got_b = [], []
    for x, y in zip(a, b):
        got_a.append(x)
        got_b.append(y)
    assert torch.equal(torch.stack(got_a, 1), want[1][:, a_ids.shape[1]:].cpu())
    assert torch.equal(torch.stack(got_b, 1), want[5][:, b_ids.shape[1]:].cpu())


# ---- the T5 family (engine/seq2seq.py): no shared session, the decoding state lives in each call ---------------
def tiny_t5(device: str = "cpu") -> torch.nn.Module:
    from models_util import make_hf, perturb

    hf = perturb(make_hf("T5ForConditionalGeneration", seed=4), 0.5)
    hf.config.decoder_start_token_id = 0  # as T5 checkpoints have it
    return from_transformers(hf, device=device)


def t5_requests() -> list[tuple[torch.Tensor, dict]]:
    """Sources of batch 1-3 with padding on either side, greedy / sampling / repetition penalty."""
    out = []
    for i in range(6):
        g = torch.Generator().manual_seed(200 + i)
        B, N = (1, 2, 3)[i % 3], 4 + (3 * i) % 7
        ids = torch.randint(2, 61, (B, N), generator=g)
        mask = torch.ones(B, N, dtype=torch.long)
        mask[B - 1, :i % 3] = 0  # left padding in the last row (none for i % 3 == 0)
        kw = dict(attention_mask=mask, max_new_tokens=8 + i % 4, eos_token_id=[])
        out.append((ids, decoding(i, kw, sample={"top_k": 20}, penalty=1.4)))
    return out


def test_t5_threads_and_interleaved_streams_get_their_own_tokens():
    from engine import seq2seq

    m = tiny_t5()
    reqs = t5_requests()
    want = [m.generate(ids, **kw) for ids, kw in reqs]
    assert len({tuple(w[0].tolist()) for w in want}) > 3  # varied outputs: a mix-up would show

    def call(i: int) -> torch.Tensor:
        ids, kw = reqs[i]
        if i % 2:
            return torch.cat([torch.zeros(ids.shape[0], 1, dtype=torch.long),  # the start token
                              torch.stack(list(seq2seq.stream(m, ids, **kw)), 1)], 1)
        return m.generate(ids, **kw)

    for i, (g, w) in enumerate(zip(run_threads(call, len(reqs)), want)):
        assert isinstance(g, torch.Tensor), f"request {i} raised {g!r}"
        assert torch.equal(g, w), f"request {i}: wrong tokens"
    streams = [seq2seq.stream(m, ids, **kw) for ids, kw in reqs[:3]]  # stepped in turn, in one thread
    got = [[] for _ in streams]
    for step in range(max(w.shape[1] - 1 for w in want[:3])):
        for j, s in enumerate(streams):
            if step < want[j].shape[1] - 1:
                got[j].append(next(s))
    for j in range(3):
        assert torch.equal(torch.stack(got[j], 1), want[j][:, 1:])


@pytest.mark.gpu
def test_t5_threads_with_encoder_cuda_graphs():
    """T5 generate from threads on CUDA, the encoder pass replayed as CUDA graphs (warm-up, capture, replay)."""
    m = tiny_t5("cuda")
    reqs = [(ids.cuda(), {**kw, "attention_mask": kw["attention_mask"].cuda()}) for ids, kw in t5_requests()]
    m.cuda_graph = False
    want = [m.generate(ids, **kw) for ids, kw in reqs]  # eager, alone
    m.cuda_graph = True
    for _ in range(3):
        got = run_threads(lambda i: m.generate(reqs[i][0], **reqs[i][1]), len(reqs))
        for i, (g, w) in enumerate(zip(got, want)):
            assert isinstance(g, torch.Tensor), f"request {i} raised {g!r}"
            assert torch.equal(g, w), f"request {i}: wrong tokens"


def test_streams_leave_the_callers_grad_mode_alone(model):
    """A stream runs without grad, but between its tokens the caller's code runs in the caller's grad mode (a
    generator holding torch.no_grad() across a yield turned grad off for the caller, and for good when the
    stream was left open): GPT-2 and T5 streams, opened, stepped, abandoned."""
    from engine import seq2seq

    ids, kw = requests()[1]
    t5 = tiny_t5()
    t5_ids, t5_kw = t5_requests()[0]
    for s in (gen.stream(model, ids, **kw), seq2seq.stream(t5, t5_ids, **t5_kw)):
        assert torch.is_grad_enabled()
        next(s)
        assert torch.is_grad_enabled(), "the stream turned grad off in its caller"
        with torch.no_grad():
            next(s)
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
        del s
        assert torch.is_grad_enabled()
