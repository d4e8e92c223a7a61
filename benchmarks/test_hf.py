"""transformers models patched with ``engine.patch`` vs the same models unpatched (attn_implementation="sdpa").

Providers, timed in the same run: "engine" = ``engine.patch(model)`` (attention "engine", fused add + LayerNorm,
bias + GELU and LayerNorm, padded encoder batches packed by the default rule); "transformers" = the unpatched model;
on CUDA also "engine-unpacked" = ``engine.patch(model, pack=False)``, which says whether packing away the padding
pays there. Every case asserts that the patched output matches transformers on the real tokens.

CPU (fp32, random weights): BERT-small 8 x 64 full and ragged (lengths uniform in [0.2 N, N]: 60% fill), GPT-2
small 4 x 64. Target: the patched model is no slower than the unpatched one.
CUDA (bf16): BERT-base 32 x 512 ragged 60% fill (target on the H200: engine >= 1.3x transformers) and 32 x 128 full.
"""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import engine  # noqa: E402

CUDA = torch.cuda.is_available()
BERT = {"small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
GPT2_SMALL = dict(n_embd=256, n_layer=4, n_head=4)
_MODELS: dict[tuple, dict] = {}


def models(name: str, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """{provider: model}: one random model, unpatched and patched copies, built once per (name, device, dtype)."""
    key = (name, device, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        if name == "gpt2-small":
            hf = transformers.GPT2Model(transformers.GPT2Config(attn_implementation="sdpa", **GPT2_SMALL))
        else:
            cfg = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512, attn_implementation="sdpa",
                                          **BERT[name.split("-")[1]])
            hf = transformers.BertModel(cfg)
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        hf = hf.eval().to(device=device, dtype=dtype)
        out = {"transformers": hf, "engine": copy.deepcopy(hf)}
        engine.patch(out["engine"])
        if device == "cuda":
            out["engine-unpacked"] = copy.deepcopy(hf)
            engine.patch(out["engine-unpacked"], pack=False)
        _MODELS.clear()  # keep one set alive at a time
        _MODELS[key] = out
    return _MODELS[key]


def batch(B: int, N: int, *, device: str, ragged: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, N), generator=g)
    lens = torch.randint(int(0.2 * N), N + 1, (B,), generator=g) if ragged else torch.full((B,), N)
    mask = (torch.arange(N)[None] < lens[:, None]).long()
    return ids.to(device), mask.to(device)


def run_case(bench, benchmark, provider: str, name: str, B: int, N: int, *, device: str, dtype: torch.dtype,
             ragged: bool, rtol: float) -> None:
    all_models = models(name, device, dtype)
    if provider not in all_models:
        pytest.skip(f"{provider} runs on CUDA only")
    model, ref = all_models[provider], all_models["transformers"]
    ids, mask = batch(B, N, device=device, ragged=ragged)
    tokens = int(mask.sum())
    group = f"hf-patch {name} {str(dtype).split('.')[-1]} {device} {B}x{N}{' ragged 60%' if ragged else ''}"
    with torch.inference_mode():
        out = bench(lambda: model(ids, attention_mask=mask).last_hidden_state, provider=provider, group=group,
                    extra={"area": "model", "tokens": tokens})
        if benchmark.extra_info.get("median_s"):
            benchmark.extra_info["real_tokens/s"] = tokens / benchmark.extra_info["median_s"]
        expected = ref(ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        err = ((out[keep].float() - expected[keep].float()).abs().max() / expected[keep].float().abs().max()).item()
    assert err < rtol, f"{provider} vs transformers relative error {err:.3g} >= {rtol}"


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("name,B,N,ragged", [("bert-small", 8, 64, False), ("bert-small", 8, 64, True),
                                             ("gpt2-small", 4, 64, False)])
def test_patched_cpu_fp32(bench, benchmark, provider, name, B, N, ragged):
    run_case(bench, benchmark, provider, name, B, N, device="cpu", dtype=torch.float32, ragged=ragged, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("provider", ["engine", "engine-unpacked", "transformers"])
@pytest.mark.parametrize("N,ragged", [(512, True), (128, False)])
def test_patched_bert_base_cuda_bf16(bench, benchmark, provider, N, ragged):
    run_case(bench, benchmark, provider, "bert-base", 32, N, device="cuda", dtype=torch.bfloat16, ragged=ragged,
             rtol=3e-2)
