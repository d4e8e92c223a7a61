"""Generation benchmarks: engine's generate vs transformers' generate on the same random GPT-2, in the same run.

CUDA (GPT-2 small config: 12 layers, 768 wide, 12 heads, vocab 50257; random weights; bf16):
    greedy  batch 1, 32-token prompt, 256 new tokens      (targets: >= 10x transformers, >= 2000 tokens/s)
    greedy  batch 16, 32-token prompt, 128 new tokens     (target: >= 5x transformers)
    top-p 0.9 sampling vs greedy, batch 1, 256 new tokens (target: sampling costs <= 10% more per token)
CPU (a small GPT-2: 4 layers, 128 wide, 4 heads, vocab 1000; fp32; one thread): greedy, batch 1 (48 new tokens)
and a left-padded batch 4 (32 new tokens), sampling vs greedy at batch 1.

Every call generates exactly the requested tokens (no EOS). ``tokens/s`` (new tokens, all rows, over the
median time of one whole generate call, prefill included) is in each row's extra_info. Correctness: on CPU
(fp32) engine's greedy tokens equal transformers' exactly; on CUDA (bf16, where different kernels round
differently and greedy paths may part after a near-tie) each token engine picks must be the best by
transformers' fp32 logits of engine's own prefix (teacher forcing), within 4x transformers' own bf16 error
there; sampled tokens must lie inside the top-p nucleus by the same measure.
"""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

import engine

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
PROMPT = 32 if CUDA else 16
# (name, batch, new tokens, left padding of the rows (cycled), sampling)
CASES = ([("greedy bs1", 1, 256, (0,), False), ("greedy bs16", 16, 128, (0, 5, 11, 2), False)] if CUDA
         else [("greedy bs1", 1, 48, (0,), False), ("greedy bs4", 4, 32, (0, 5, 11, 2), False)])


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # on CPU: one thread for both sides


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model in DTYPE, the same in fp32, engine model): the same random weights, on DEVICE."""
    if CUDA:
        cfg = T.GPT2Config()  # GPT-2 small
    else:
        cfg = T.GPT2Config(n_embd=128, n_layer=4, n_head=4, vocab_size=1000, n_positions=256)
    cfg.eos_token_id = cfg.bos_token_id = None
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(cfg).eval()
    if not CUDA:  # larger weights than the init: peaked, varied logits, so greedy paths are well defined
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    d = tmp_path_factory.mktemp("gpt2_bench")
    hf.to(DTYPE).save_pretrained(d)
    hf = hf.to(DEVICE)
    hf32 = copy.deepcopy(hf).float() if DTYPE != torch.float32 else hf  # the teacher-forcing reference
    return hf, hf32, engine.from_pretrained(d, device=DEVICE, dtype=DTYPE)


def _prompts(B: int, pads: tuple[int, ...], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(B)
    ids = torch.randint(0, vocab, (B, PROMPT), generator=g)
    mask = torch.ones(B, PROMPT, dtype=torch.long)
    for b in range(B):
        mask[b, :pads[b % len(pads)]] = 0
    return ids.to(DEVICE), mask.to(DEVICE)


def _run(provider: str, hf, m, ids, mask, new: int, sample: dict | None):
    """A no-argument callable running one generate call for ``provider`` (sampling: engine only)."""
    if provider.startswith("transformers"):
        return lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
    kw = dict(do_sample=True, seed=0, **sample) if sample else {}
    return lambda: m.generate(ids, attention_mask=mask, max_new_tokens=new, **kw)


def _check_teacher_forced(hf, hf32, out: torch.Tensor, mask: torch.Tensor, new: int, *,
                          top_p: float | None) -> None:
    """Each of the ``new`` tokens of ``out`` is HF's best pick (greedy) or inside HF's top-p nucleus, judged on
    fp32 logits of ``out``'s own prefixes, up to a tolerance of 4x transformers' own error in DTYPE there
    (engine's error may be 2x transformers', and a wrong pick needs two logits off: 2 x 2)."""
    full = torch.cat([mask, torch.ones(mask.shape[0], new, dtype=mask.dtype, device=mask.device)], 1)
    pos = (full.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf32(out, attention_mask=full, position_ids=pos).logits[:, -new - 1:-1].float()  # (B, new, V)
        low = hf(out, attention_mask=full, position_ids=pos).logits[:, -new - 1:-1].float()
    tol = 4 * float((low - ref).abs().max()) + 1e-4
    picked = ref.gather(-1, out[:, -new:, None])  # (B, new, 1)
    if top_p is None:
        gap = ref.amax(-1) - picked[..., 0]
        assert (gap <= tol).all(), f"engine picked a token {gap.max():.4f} below the best logit (tolerance {tol:.4f})"
        return
    probs = torch.softmax(ref, -1)
    above = (probs * (ref > picked + tol)).sum(-1)  # mass of the tokens surely more likely than the pick
    assert (above < top_p).all(), "a sampled token lies outside the top-p nucleus"


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("name,B,new,pads,_", CASES, ids=[c[0] for c in CASES])
def test_generate_greedy(bench, benchmark, models, provider, name, B, new, pads, _):
    hf, hf32, m = models
    ids, mask = _prompts(B, pads, m.config.vocab_size)
    fn = _run(provider, hf, m, ids, mask, new, None)
    group = f"generate gpt2 {name} prompt{PROMPT} new{new} {str(DTYPE).split('.')[-1]}"
    out = bench(fn, provider=provider, group=group, extra={"area": "generate", "batch": B, "new_tokens": new})
    if getattr(benchmark, "stats", None) is not None:
        benchmark.extra_info["tokens/s"] = B * new / benchmark.stats.stats.median
    assert out.shape == (B, PROMPT + new)
    if CUDA:
        if provider == "engine":
            _check_teacher_forced(hf, hf32, out, mask, new, top_p=None)
    else:
        other = _run("engine" if provider == "transformers" else "transformers", hf, m, ids, mask, new, None)()
        assert torch.equal(out, other)


@pytest.mark.parametrize("provider", ["engine", "greedy-engine"])
def test_generate_sampling_vs_greedy(bench, benchmark, models, provider):
    """engine top-p 0.9 sampling vs engine greedy at batch 1 (speedup < 1 = sampling's extra cost per token)."""
    hf, hf32, m = models
    new = 256 if CUDA else 48
    ids, mask = _prompts(1, (0,), m.config.vocab_size)
    sample = {"top_p": 0.9} if provider == "engine" else None
    fn = _run("engine", hf, m, ids, mask, new, sample)
    group = f"generate gpt2 bs1 new{new} {str(DTYPE).split('.')[-1]} top-p 0.9 vs greedy"
    out = bench(fn, provider=provider, group=group, extra={"area": "generate", "batch": 1, "new_tokens": new})
    if getattr(benchmark, "stats", None) is not None:
        benchmark.extra_info["tokens/s"] = new / benchmark.stats.stats.median
    assert out.shape == (1, PROMPT + new)
    _check_teacher_forced(hf, hf32, out, mask, new, top_p=0.9 if sample else None)
