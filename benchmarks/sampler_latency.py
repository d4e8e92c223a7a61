"""B=1 sampler latency over many seeded calls (min and median), for the "< 100 us at B=1" target.

    python benchmarks/sampler_latency.py [--calls 3000]

pytest-benchmark's CPU budget in benchmarks/test_sampler.py takes only a few rounds per case; this script takes
thousands. Two logit spreads: `randn * 3` (the benchmark's GPT-2-like spread) and plain `randn` (flat logits: with
temperature 0.8 and top-p 0.9 the cut then needs most of the vocabulary, the sampler's slow case).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine import sampling

CASES = (("top-p 0.9 T=0.8", dict(temperature=0.8, top_p=0.9)), ("top-k 50", dict(top_k=50)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"{'vocab':>6}  {'logits':<9} {'options':<16} {'min us':>8} {'median us':>10}")
    for V in (50257, 32000):
        for spread in (3.0, 1.0):
            x = torch.randn(1, V, generator=g) * spread
            for name, kw in CASES:
                for i in range(200):  # warm-up
                    sampling.sample(x, **kw, seed=i)
                times = []
                for i in range(args.calls):
                    t0 = time.perf_counter()
                    sampling.sample(x, **kw, seed=i)
                    times.append(time.perf_counter() - t0)
                label = f"randn*{spread:g}"
                print(f"{V:>6}  {label:<9} {name:<16} {min(times) * 1e6:8.1f} {statistics.median(times) * 1e6:10.1f}")


if __name__ == "__main__":
    main()
