"""engine.generate vs transformers' generate on a tiny random GPT-2 (every weight perturbed), saved by transformers
and loaded through engine.from_pretrained: greedy token equality (batch 1, left-padded batches, per-row EOS,
repetition penalty), sampling semantics (the distribution each step draws from vs HF's logits processors),
seeded reproducibility, streaming, the static KV cache vs a full forward at every step, and bad input."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import engine
from engine import generate as gen
from engine import sampling
from engine.sessions import SessionPool
from models_util import left_padded_prompts

V, NPOS = 97, 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers GPT2LMHeadModel, the same weights loaded by engine) in fp32 on the CPU."""
    torch.manual_seed(1)
    cfg = T.GPT2Config(n_embd=48, n_layer=2, n_head=3, vocab_size=V, n_positions=NPOS, bos_token_id=0,
                       eos_token_id=0)
    hf = T.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # large perturbations: varied, non-repetitive greedy continuations
            p.add_(torch.randn_like(p) * 0.5)
    d = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(d)
    return hf, engine.from_pretrained(d)


def prompts(B: int, T_: int, *, seed: int = 0, pads: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, T) and a left-padding mask with ``pads[b]`` leading zeros in row b (pad ids are random)."""
    return left_padded_prompts(B, T_, V, seed=seed, pads=pads)


def hf_generate(hf, ids, mask=None, **kw) -> torch.Tensor:
    kw.setdefault("eos_token_id", None)
    kw.setdefault("pad_token_id", 0)
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids), **kw)


def test_greedy_batch1_equals_transformers(models):
    hf, m = models
    ids, _ = prompts(1, 7, seed=3)
    want = hf_generate(hf, ids, max_new_tokens=48, do_sample=False)
    got = m.generate(ids, max_new_tokens=48)
    assert got.dtype == torch.int64 and got.shape == (1, 55)
    assert torch.equal(got, want)
    assert len(set(got[0, 7:].tolist())) >= 5  # a varied continuation, not one repeated token


def test_greedy_left_padded_batch_equals_transformers(models):
    hf, m = models
    ids, mask = prompts(4, 11, seed=5, pads=(0, 3, 10, 6))
    want = hf_generate(hf, ids, mask, max_new_tokens=45, do_sample=False)
    got = m.generate(ids, attention_mask=mask, max_new_tokens=45)
    assert torch.equal(got, want)
    # each row alone (no padding) continues exactly as it did in the batch
    for b, n in enumerate((0, 3, 10, 6)):
        alone = m.generate(ids[b:b + 1, n:], max_new_tokens=45)
        assert torch.equal(alone[0, 11 - n:], got[b, 11:])


def test_default_eos_comes_from_the_config(models, monkeypatch):
    # As HF: eos_token_id=None takes the config's EOS id(s) (ids outside the vocabulary are dropped); [] is none.
    import dataclasses

    hf, m = models
    ids, mask = prompts(2, 6, seed=11, pads=(0, 2))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=[])
    eos = free[0, 6 + 4].item()  # a token row 0 produces
    assert free.shape == (2, 36)
    monkeypatch.setattr(m, "config", dataclasses.replace(m.config, eos_token_id=[eos, V + 5]))
    got = m.generate(ids, attention_mask=mask, max_new_tokens=30)
    assert torch.equal(got, hf_generate(hf, ids, mask, max_new_tokens=30, do_sample=False, eos_token_id=eos,
                                        pad_token_id=eos))
    first = free[0, 6:].tolist().index(eos)
    assert (got[0, 6 + first:] == eos).all()  # row 0 stopped at its first EOS and is padded with it
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=[]), free)


@pytest.mark.parametrize("pad_token_id", [None, 5])
def test_eos_stops_each_row_and_pads(models, pad_token_id):
    hf, m = models
    ids, mask = prompts(3, 9, seed=7, pads=(0, 4, 2))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=40)[:, 9:]
    # EOS ids: a token row 0 emits early and one row 2 emits late; row 1 may or may not stop
    eos = [free[0, 3].item(), free[2, 25].item()]
    want = hf_generate(hf, ids, mask, max_new_tokens=40, do_sample=False, eos_token_id=eos,
                       pad_token_id=pad_token_id if pad_token_id is not None else eos[0])
    got = m.generate(ids, attention_mask=mask, max_new_tokens=40, eos_token_id=eos, pad_token_id=pad_token_id)
    assert torch.equal(got, want)
    pad = eos[0] if pad_token_id is None else pad_token_id
    for row in got[:, 9:]:
        hits = [i for i, t in enumerate(row.tolist()) if t in eos]
        if hits:
            assert (row[hits[0] + 1:] == pad).all()


def test_up_to_eight_eos_ids(models):
    # The most EOS ids generate takes (a fixed-size device tensor): eight of them, the last the one that stops.
    _, m = models
    ids, mask = prompts(2, 6, seed=53, pads=(0, 2))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    stop = free[0, 6 + 3].item()
    others = [t for t in range(V) if t not in free[:, 6:].tolist()[0] + free[:, 6:].tolist()[1]][:7]
    got = m.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=others + [stop], pad_token_id=1)
    first = free[0, 6:].tolist().index(stop)
    assert torch.equal(got[0, :6 + first + 1], free[0, :6 + first + 1]) and (got[0, 6 + first + 1:] == 1).all()


def test_default_pad_is_the_models_pad_id_as_in_transformers(models, tmp_path):
    """HF pads stopped rows with the generation config's pad id (from generation_config.json / config.json), and
    falls back to the first EOS id only when there is none."""
    hf, _ = models
    ids, mask = prompts(3, 9, seed=7, pads=(0, 4, 2))
    free = hf_generate(hf, ids, mask, max_new_tokens=40, do_sample=False)[:, 9:]
    eos = free[0, 3].item()
    hf.save_pretrained(tmp_path)
    gen_cfg = {"eos_token_id": eos, "pad_token_id": 5, "bos_token_id": 0}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen_cfg))
    hf2 = T.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = hf2.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False)  # its own defaults
    got = engine.from_pretrained(tmp_path).generate(ids, attention_mask=mask, max_new_tokens=40)
    assert torch.equal(got, want) and (got[0, 9 + 4:] == 5).all()


def test_all_rows_stop_early_like_transformers(models):
    hf, m = models
    ids, mask = prompts(2, 6, seed=11, pads=(2, 0))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=30)[:, 6:]
    eos = [free[0, 4].item(), free[1, 6].item()]
    want = hf_generate(hf, ids, mask, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    got = m.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos)
    assert got.shape[1] < 6 + 30 and torch.equal(got, want)


def test_repetition_penalty_greedy_equals_transformers(models):
    hf, m = models
    ids, mask = prompts(3, 8, seed=13, pads=(0, 5, 2))
    want = hf_generate(hf, ids, mask, max_new_tokens=40, do_sample=False, repetition_penalty=1.4)
    got = m.generate(ids, attention_mask=mask, max_new_tokens=40, repetition_penalty=1.4)
    assert torch.equal(got, want)


def test_sampling_draws_from_transformers_distribution(models, monkeypatch):
    """Every step's distribution (engine.sampling.probs of what generate hands the sampler) equals HF's logits
    processors applied to HF's logits for the same prefix; each sampled id is inside HF's support."""
    hf, m = models
    ids, mask = prompts(2, 7, seed=17, pads=(3, 0))
    calls = []
    real_sample = sampling.sample

    def spy(logits, **kw):
        out = real_sample(logits, **kw)
        calls.append((logits.clone(), {k: v for k, v in kw.items() if k != "seed"}, out.clone()))
        return out

    monkeypatch.setattr(sampling, "sample", spy)
    opts = dict(temperature=0.7, top_k=12, top_p=0.8, min_p=0.05, repetition_penalty=1.3)
    out = m.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, seed=3, **opts)
    assert len(calls) == 10
    pad_lens = (mask == 0).sum(1)
    procs = T.LogitsProcessorList([
        T.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=pad_lens),
        T.TemperatureLogitsWarper(0.7), T.TopKLogitsWarper(12), T.TopPLogitsWarper(0.8), T.MinPLogitsWarper(0.05)])
    for step, (logits, kw, drawn) in enumerate(calls):
        prefix = out[:, :7 + step]
        full_mask = torch.cat([mask, torch.ones(2, step, dtype=torch.long)], 1)
        pos = (full_mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            ref_logits = hf(prefix, attention_mask=full_mask, position_ids=pos).logits[:, -1]
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
        want = torch.softmax(procs(prefix, ref_logits.clone()), dim=-1)
        got = sampling.probs(logits, **kw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert (want.gather(1, drawn) > 0).all()
        assert torch.equal(drawn[:, 0], out[:, 7 + step])


def test_seeded_sampling_is_reproducible(models):
    _, m = models
    ids, mask = prompts(3, 5, seed=19, pads=(0, 2, 4))
    kw = dict(attention_mask=mask, max_new_tokens=40, do_sample=True, temperature=1.3)
    a = m.generate(ids, seed=7, **kw)
    assert torch.equal(a, m.generate(ids, seed=7, **kw))
    assert not torch.equal(a, m.generate(ids, seed=8, **kw))
    assert len(set(a[0, 5:].tolist())) > 8  # steps draw fresh numbers (not one seed reused every step)
    torch.manual_seed(0)
    b = m.generate(ids, **kw)
    torch.manual_seed(0)
    assert torch.equal(b, m.generate(ids, **kw))
    # top_k=1 sampling is greedy
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=True, top_k=1, seed=1),
                       m.generate(ids, attention_mask=mask, max_new_tokens=20))


@pytest.mark.parametrize("do_sample", [False, True])
def test_stream_yields_the_same_tokens(models, do_sample):
    _, m = models
    ids, mask = prompts(2, 6, seed=23, pads=(0, 3))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=do_sample, seed=5)[:, 6:]
    kw = dict(attention_mask=mask, max_new_tokens=30, do_sample=do_sample, seed=5,
              eos_token_id=[free[0, 8].item(), free[1, 12].item()])
    full = m.generate(ids, **kw)
    steps = list(gen.stream(m, ids, **kw))
    assert all(s.shape == (2,) and s.dtype == torch.int64 and s.device.type == "cpu" for s in steps)
    assert torch.equal(torch.stack(steps, 1), full[:, 6:])


@pytest.mark.parametrize("do_sample", [False, True])
def test_stream_pads_stopped_rows_with_pad_token_id(models, do_sample):
    # Streaming together with a non-default pad id (each works alone elsewhere): rows that stopped yield
    # pad_token_id, as generate's output holds. (issue 19)
    _, m = models
    ids, mask = prompts(3, 6, seed=47, pads=(0, 3, 1))
    free = m.generate(ids, attention_mask=mask, max_new_tokens=25, do_sample=do_sample, seed=9, eos_token_id=[])
    eos = free[0, 6 + 2].item()
    kw = dict(attention_mask=mask, max_new_tokens=25, do_sample=do_sample, seed=9, eos_token_id=eos, pad_token_id=5)
    full = m.generate(ids, **kw)
    steps = torch.stack(list(gen.stream(m, ids, **kw)), 1)
    assert torch.equal(steps, full[:, 6:])
    first = free[0, 6:].tolist().index(eos)
    assert (steps[0, first + 1:] == 5).all() and steps.shape[1] > first + 1


def test_reused_session_is_reset_between_calls(models):
    _, m = models
    ids_a, mask_a = prompts(2, 9, seed=29, pads=(0, 4))
    ids_b, mask_b = prompts(2, 12, seed=31, pads=(7, 0))
    first = m.generate(ids_a, attention_mask=mask_a, max_new_tokens=20, eos_token_id=3)
    pool = SessionPool.of(m, "generate")
    created = pool.created
    m.generate(ids_b, attention_mask=mask_b, max_new_tokens=21, repetition_penalty=1.2)
    assert pool.created == created and pool.idle() == 1  # same (batch, cache length): the session is reused
    assert torch.equal(m.generate(ids_a, attention_mask=mask_a, max_new_tokens=20, eos_token_id=3), first)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_static_cache_matches_full_forward_each_step(models, backend, monkeypatch):
    """Prefill + decode steps through StaticKVCache vs a no-cache forward over the whole prefix (HF's position
    ids), at every step; the triton case runs the decode kernel (and the norm kernels) in the interpreter."""
    _, m = models
    monkeypatch.setenv("ENGINE_BACKEND", backend)
    steps = 12 if backend == "torch" else 4
    kernel_calls = []
    if backend == "triton":  # make sure the decode kernel really runs (head_dim 16 is one it takes)
        import engine.kernels.attention.decode as kd

        real = kd.decode_attention_fwd
        monkeypatch.setattr(kd, "decode_attention_fwd", lambda *a, **k: kernel_calls.append(1) or real(*a, **k))
    ids, mask = prompts(3, 7, seed=37, pads=(0, 2, 5))
    req, max_len = gen._prepare(m, ids, dict(attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                             temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                                             eos_token_id=None, pad_token_id=None, seed=0, cuda_graph=False))
    s = gen._Session(m, 3, max_len)
    with torch.no_grad():
        s.start(req)  # prefill: logits of the first new token
        for step in range(steps):
            prefix = s.out[:, :7 + step]
            full_mask = torch.cat([mask, torch.ones(3, step, dtype=torch.long)], 1)
            pos = (full_mask.cumsum(1) - 1).clamp(min=0)
            monkeypatch.setenv("ENGINE_BACKEND", "torch")
            ref = m(prefix, attention_mask=full_mask, position_ids=pos)[:, -1].double()
            monkeypatch.setenv("ENGINE_BACKEND", backend)
            err = (s.logits.double() - ref).abs().max() / ref.abs().max()
            assert err < 1e-5, f"step {step}: relative error {err:.3g}"
            s._greedy()
            s._commit()
            s.logits.fill_(float("nan"))  # poison: the decode step must overwrite every logit
            s.run("forward", s._forward, False)
        assert torch.isfinite(s.logits).all()
    assert int(s.n_new) == steps
    assert len(kernel_calls) == (2 * steps if backend == "triton" else 0)  # one per layer per decode step
    assert s.cache.positions[:, 0].tolist() == [7 + steps, 5 + steps, 2 + steps]


@pytest.mark.parametrize("do_sample", [False, True])
def test_graph_orchestration_on_cpu(models, monkeypatch, do_sample):
    """The CUDA-graph control flow with stand-ins (capture records without running, replay runs): two eager
    warm-up steps, one capture, replays after; no step lost or repeated, same tokens as the eager path."""
    _, m = models
    log = []

    def capture(fn):
        log.append("capture")
        return type("Graph", (), {"replay": staticmethod(lambda: (log.append("replay"), fn()))})()

    monkeypatch.setattr(gen, "_on_side_stream", lambda fn: (log.append("warmup"), fn()))
    monkeypatch.setattr(gen, "_capture", capture)
    ids, mask = prompts(3, 8, seed=43, pads=(0, 5, 2))
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=do_sample, temperature=1.0, top_k=0, top_p=0.9,
              min_p=0.0, repetition_penalty=1.0, eos_token_id=None, pad_token_id=None, seed=5, cuda_graph=False)
    want = m.generate(ids, **{k: v for k, v in kw.items() if k != "cuda_graph"})
    req, max_len = gen._prepare(m, ids, kw)
    req.cuda_graph = True
    s = gen._Session(m, 3, max_len)
    for call in range(2):  # the second call replays the graphs captured by the first
        for _ in gen._steps(s, req, streaming=False):
            pass
        assert torch.equal(s.out[:, :8 + int(s.n_new)], want)
    # greedy: one graph (the whole step) run 19 times a call (the first token comes from the prefill);
    # sampling: a forward graph (19 runs) and a commit graph (20 runs: the prefill's token too)
    names, runs = (2, 19 + 20) if do_sample else (1, 19)
    assert log.count("warmup") == 2 * names and log.count("capture") == names
    assert log.count("replay") == 2 * runs - 2 * names


@pytest.mark.gpu
def test_cuda_graph_equals_eager_and_transformers():
    torch.manual_seed(2)
    cfg = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=V, n_positions=NPOS)
    hf = T.GPT2LMHeadModel(cfg).eval().cuda()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        m = engine.from_pretrained(d, device="cuda")
    ids, mask = prompts(3, 9, seed=41, pads=(0, 4, 7))
    ids, mask = ids.cuda(), mask.cuda()
    want = hf_generate(hf, ids, mask, max_new_tokens=40, do_sample=False, eos_token_id=None)
    for graph in (False, True, True):  # the second graph run replays the captured graph
        got = m.generate(ids, attention_mask=mask, max_new_tokens=40, cuda_graph=graph)
        assert torch.equal(got, want)
    a = m.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=True, top_p=0.9, seed=3)
    b = m.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=True, top_p=0.9, seed=3, cuda_graph=False)
    assert torch.equal(a, b)
    steps = torch.stack(list(gen.stream(m, ids, attention_mask=mask, max_new_tokens=40)), 1)
    assert torch.equal(steps, want[:, 9:].cpu())


# ---- bad input: clear errors, raised before any work -------------------------------------------------------
BAD = [
    (dict(max_new_tokens=NPOS - 7 + 1), ValueError, "exceeds this model's maximum"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(eos_token_id=V), ValueError, "eos_token_id"),
    (dict(eos_token_id="x"), TypeError, "eos_token_id"),
    (dict(eos_token_id=list(range(9))), ValueError, "at most 8"),
    (dict(pad_token_id=-1), ValueError, "pad_token_id"),
    (dict(seed="x"), TypeError, "seed"),
    (dict(cuda_graph=True), ValueError, "cuda_graph"),
    (dict(attention_mask=torch.ones(1, 6, dtype=torch.long)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1, 1]])), ValueError, "left-padded"),
    (dict(attention_mask=torch.tensor([[0, 0, 0, 0, 0, 0, 0]])), ValueError, "no real token"),
    (dict(attention_mask=torch.tensor([[0, 2, 1, 1, 1, 1, 1]])), ValueError, "0 or 1"),
]


@pytest.mark.parametrize("kw,exc,match", BAD, ids=[str(sorted(b[0]))[:40] + b[2][:12] for b in BAD])
def test_bad_arguments_raise_before_work(models, monkeypatch, kw, exc, match):
    _, m = models
    if "cuda_graph" in kw and torch.cuda.is_available():
        pytest.skip("cuda_graph=True is valid here")
    monkeypatch.setattr(gen, "_Session", None)  # any work would need a session: calling None fails loudly
    ids, _ = prompts(1, 7)
    with pytest.raises(exc, match=match):
        m.generate(ids, **kw)
    with pytest.raises(exc, match=match):
        gen.stream(m, ids, **kw)


@pytest.mark.parametrize("ids,exc,match", [
    (torch.zeros(1, 0, dtype=torch.long), ValueError, "empty prompt"),
    (torch.tensor([[3, V, 4]]), ValueError, r"input_ids values must lie in \[0, 97\)"),
    (torch.tensor([[3, -1, 4]]), ValueError, r"input_ids values must lie in \[0, 97\)"),
    (torch.tensor([[1.0, 2.0]]), TypeError, "integer"),
    (torch.tensor([3, 4]), ValueError, "shape"),
    ([[3, 4]], TypeError, "torch.Tensor"),
])
def test_bad_prompts(models, monkeypatch, ids, exc, match):
    _, m = models
    monkeypatch.setattr(gen, "_Session", None)
    with pytest.raises(exc, match=match):
        m.generate(ids)


def test_generate_needs_a_causal_lm(tmp_path):
    from models_util import make_hf

    for arch in ("BertForMaskedLM", "GPT2Model"):
        make_hf(arch).save_pretrained(tmp_path / arch)
        model = engine.from_pretrained(tmp_path / arch)
        with pytest.raises(TypeError, match=f"generate needs a GPT-2 \\(causal LM\\) model.*{arch}"):
            model.generate(torch.tensor([[1, 2, 3]]))
        with pytest.raises(TypeError, match=f"{arch}"):
            gen.generate(model, torch.tensor([[1, 2, 3]]))
