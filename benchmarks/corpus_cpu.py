"""The full CPU corpus benchmark: 20k lines of the length mix with all-MiniLM-L6-v2, engine vs transformers.

    python benchmarks/corpus_cpu.py [--lines 20000] [--repeats 2] [--threads 2] [--json out.json]

Providers, interleaved in every repeat (same process, same thread count, fp32, 256-token truncation):
  transformers   padded batches of 32 in input order + mean pooling + L2 norm (tokenization included)
  engine         Embedder.encode: token-budget batches sorted by length (tokenization included)
  engine-corpus  embed_corpus: the whole job (reads and hashes the file and the model, writes shards + manifest)
Prints each time, the medians with min/max, the speedups over transformers computed per repeat (median and
range), the load average before and after, and checks every result against transformers (cosine > 1 - 1e-5).
The target (issue 17): engine >= 1.5x transformers. The pytest-benchmark version (CI-sized) is test_corpus.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository root
from benchmarks.corpus_mix import make_corpus, minilm_dir, transformers_padded  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the times and ratios here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from engine.corpus import embed_corpus, load_embeddings
    from engine.embed import Embedder

    path = minilm_dir()
    load = [os.getloadavg()]
    texts = make_corpus(args.lines, seed=0)
    emb = Embedder.from_pretrained(path)
    hf = transformers.AutoModel.from_pretrained(str(path), attn_implementation="sdpa").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    tokens = sum(map(len, emb.tokenize(texts)[0]))
    print(f"{args.lines} lines, {tokens} tokens after truncation at {emb.spec.max_length}; torch threads "
          f"{torch.get_num_threads()}; load average {load[0]}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="corpus_bench_"))
    corpus_file = tmp / "corpus.txt"
    corpus_file.write_text("\n".join(texts) + "\n", encoding="utf-8")

    def run_corpus() -> torch.Tensor:
        embed_corpus(emb, corpus_file, tmp / "out", batch_tokens=args.batch_tokens, overwrite=True, progress=False)
        return torch.from_numpy(load_embeddings(tmp / "out")[0])

    providers = {"transformers": lambda: transformers_padded(hf, hf_tok, texts, max_length=emb.spec.max_length),
                 "engine": lambda: emb.encode(texts, batch_tokens=args.batch_tokens),
                 "engine-corpus": run_corpus}
    times: dict[str, list[float]] = {p: [] for p in providers}
    ref = None
    for rep in range(args.repeats):
        for name, fn in providers.items():
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            ref = out if name == "transformers" else ref
            worst = float((out * ref).sum(-1).min())
            assert worst > 1 - 1e-5, f"{name}: lowest cosine to transformers {worst}"
            print(f"  repeat {rep}: {name:<14} {dt:8.2f} s  {tokens / dt:8.0f} tokens/s  (load {os.getloadavg()[0]:.2f})",
                  flush=True)
    load.append(os.getloadavg())
    result = {"lines": args.lines, "tokens": tokens, "threads": torch.get_num_threads(), "times_s": times,
              "loadavg_before": load[0], "loadavg_after": load[1], "ratios": {}}
    print(f"medians (min-max) over {args.repeats} repeats; load average before {load[0]}, after {load[1]}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<14} {med:8.2f} s ({min(ts):.2f}-{max(ts):.2f})  {tokens / med:8.0f} tokens/s")
    for name in ("engine", "engine-corpus"):
        ratios = [h / e for h, e in zip(times["transformers"], times[name])]
        result["ratios"][name] = ratios
        print(f"  {name} speedup over transformers: median {statistics.median(ratios):.2f}x "
              f"(per repeat {', '.join(f'{r:.2f}x' for r in ratios)}; target >= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
