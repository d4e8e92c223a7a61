"""T5 benchmarks: engine vs transformers on the same random T5 weights, in the same run; every result is checked.

CPU (fp32, one thread; a small flan-T5-like model: gated-gelu, d_model 256, 4 + 4 layers, 4 heads of 64, d_ff 1024,
vocab 2000, untied head):
    encoder forward, batch 8 x 128, full and with 12% padding (runs packed)   (target: no slower than transformers)
    greedy generate, batch 1 (32 source tokens, 48 new) and a padded batch 4 (32 new)   (same target)
CUDA (bf16):
    flan-t5-base-sized greedy generate at batch 1 (d_model 768, 12 + 12 layers, 12 heads of 64, d_ff 2048,
    vocab 32128; 64 source tokens, 128 new)                          (target: >= 5x transformers' generate)
    T5-XL-sized encoder (d_model 2048, 24 layers, 32 heads of 64, d_ff 5120), batch 8 x 512
                                                                     (target: >= 1.5x transformers)
Correctness: on CPU, engine's greedy tokens equal transformers' and the encoder outputs agree to 1e-4 (relative); on
CUDA, each greedy token must be the best by transformers' fp32 logits of engine's own prefix (teacher forcing) up
to 4x transformers' own bf16 error there, and the encoder's bf16 error vs fp32 must be at most 2x transformers' own.
On CUDA, engine's T5 attention gathers the relative position bias inside the flash kernels (dense, varlen for the
packed encoder, decode); transformers materialises the bias as SDPA's float mask. The attention op alone, with and
without the bias: benchmarks/test_attention.py, "relative-bias".
"""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

from engine.checkpoint import from_transformers

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
SMALL = dict(vocab_size=2000, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4)
BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)  # flan-t5-base
XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32)  # t5-v1_1-xl / flan-t5-xl
_MODELS: dict[str, tuple] = {}


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # on CPU: one thread for both sides


def models(size: str, arch: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(transformers model in DTYPE, the same in fp32, engine's copy), random weights on DEVICE, built once."""
    key = f"{size}-{arch}"
    if key not in _MODELS:
        _MODELS.clear()  # one set alive at a time (the XL encoder is ~5 GB in fp32)
        cfg = T.T5Config(**{"small": SMALL, "base": BASE, "xl": XL}[size], feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                         architectures=[arch])
        torch.manual_seed(0)
        with torch.device(DEVICE):
            hf32 = getattr(T, arch)(cfg).eval()
            with torch.no_grad():  # weights larger than the init: varied logits, well-defined greedy paths
                for p in hf32.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        hf = copy.deepcopy(hf32).to(DTYPE) if DTYPE != torch.float32 else hf32
        _MODELS[key] = (hf, hf32, from_transformers(hf, device=DEVICE, dtype=DTYPE))
    return _MODELS[key]


def source(B: int, N: int, vocab: int, pads: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(B * 1000 + N)
    ids = torch.randint(3, vocab, (B, N), generator=g)
    mask = torch.ones(B, N, dtype=torch.long)
    for b in range(B):
        p = pads[b % len(pads)]
        if p:
            mask[b, N - p:] = 0  # right padding, as a tokenizer pads
    return ids.to(DEVICE), mask.to(DEVICE)


# ---- encoder --------------------------------------------------------------------------------------------------
# (size, batch, length, right padding of the rows (cycled)); the padded CPU batch (12% padding) runs packed
ENC_CASES = [("xl", 8, 512, (0,))] if CUDA else [("small", 8, 128, (0,)), ("small", 8, 128, (0, 37, 0, 90))]


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("size,B,N,pads", ENC_CASES, ids=lambda v: "padded" if v == (0, 37, 0, 90) else None)
def test_t5_encoder(bench, benchmark, provider, size, B, N, pads):
    hf, hf32, ours = models(size, "T5EncoderModel")
    ids, mask = source(B, N, hf.config.vocab_size, pads)
    padded = " padded 12%" if any(pads) else ""
    group = f"t5-{size} encoder {str(DTYPE).split('.')[-1]} {DEVICE} {B}x{N}{padded}"
    with torch.inference_mode():
        fn = (lambda: ours(ids, mask)) if provider == "engine" else \
            (lambda: hf(input_ids=ids, attention_mask=mask).last_hidden_state)
        out = bench(fn, provider=provider, group=group, extra={"area": "model", "tokens": int(mask.sum())})
        ref = hf32(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        keep = mask.bool()
        scale = ref[keep].abs().max()
        err = ((out.float() - ref)[keep].abs().max() / scale).item()
        if CUDA:  # bf16: within 2x transformers' own bf16 error
            own = ((hf(input_ids=ids, attention_mask=mask).last_hidden_state.float() - ref)[keep].abs().max()
                   / scale).item()
            assert err <= 2 * own + 1e-3, f"{provider}: relative error {err:.3g}, transformers' own {own:.3g}"
        else:
            assert err < 1e-4, f"{provider}: relative error {err:.3g} vs transformers fp32"


# ---- generation -----------------------------------------------------------------------------------------------
# (name, size, batch, source length, new tokens, right padding of the rows (cycled))
GEN_CASES = ([("greedy bs1", "base", 1, 64, 128, (0,))] if CUDA
             else [("greedy bs1", "small", 1, 32, 48, (0,)), ("greedy bs4", "small", 4, 32, 32, (0, 5, 11, 2))])


def _check_teacher_forced(hf, hf32, ids, mask, out: torch.Tensor) -> None:
    """Each generated token of ``out`` (B, 1 + new) is the best by transformers' fp32 logits of its own prefix, up
    to 4x transformers' own bf16 error there."""
    with torch.no_grad():
        ref = hf32(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits.float()
        low = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits.float()
    tol = 4 * float((low - ref).abs().max()) + 1e-4
    gap = ref.amax(-1) - ref.gather(-1, out[:, 1:, None])[..., 0]
    assert (gap <= tol).all(), f"engine picked a token {gap.max():.4f} below the best logit (tolerance {tol:.4f})"


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("name,size,B,N,new,pads", GEN_CASES, ids=[c[0] for c in GEN_CASES])
def test_t5_generate(bench, benchmark, provider, name, size, B, N, new, pads):
    hf, hf32, ours = models(size, "T5ForConditionalGeneration")
    ids, mask = source(B, N, hf.config.vocab_size, pads)
    kw = dict(attention_mask=mask, max_new_tokens=new, eos_token_id=[])  # exactly `new` tokens per call
    if provider == "engine":
        fn = lambda: ours.generate(ids, **kw)  # noqa: E731
    else:
        fn = lambda: hf.generate(ids, do_sample=False, **kw)  # noqa: E731
    group = f"generate t5-{size} {name} src{N} new{new} {str(DTYPE).split('.')[-1]}"
    out = bench(fn, provider=provider, group=group, extra={"area": "generate", "batch": B, "new_tokens": new})
    if getattr(benchmark, "stats", None) is not None:
        benchmark.extra_info["tokens/s"] = B * new / benchmark.stats.stats.median
    assert out.shape == (B, 1 + new)
    if CUDA:
        if provider == "engine":
            _check_teacher_forced(hf, hf32, ids, mask, out)
    else:
        other = ours.generate(ids, **kw) if provider == "transformers" else hf.generate(ids, do_sample=False, **kw)
        assert torch.equal(out, other)
