"""Shared benchmark machinery: every benchmark times engine against a reference in the same run.

Use the `bench` fixture:

    def test_layer_norm(bench, provider, ...):
        out = bench(fn, provider=provider, group="layer_norm 65536x768 bf16", nbytes=..., flops=None)
        # then assert `out` is right

- `group` puts engine and its references side by side in pytest-benchmark's report and in the summary.
- `provider` names who ran: "engine", "torch", "torch-flash", "transformers", ...
- `nbytes` / `flops` (per call) turn the median time into GB/s / TFLOP/s in extra_info.
- On CUDA the timed function synchronizes the device, and one untimed warm-up call runs first
  (compilation, autotuning and allocator growth stay out of the numbers).
"""
from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()


@pytest.fixture
def device() -> str:
    return "cuda" if CUDA else "cpu"


@pytest.fixture
def bench(benchmark):
    def run(fn, *, provider: str, group: str, nbytes: float | None = None, flops: float | None = None):
        benchmark.group = group
        benchmark.extra_info["provider"] = provider
        if CUDA:
            def timed():
                out = fn()
                torch.cuda.synchronize()
                return out
        else:
            timed = fn
        timed()  # warm-up, untimed
        out = benchmark(timed)
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        if median:
            benchmark.extra_info["median_s"] = median
            if nbytes:
                benchmark.extra_info["GB/s"] = nbytes / median / 1e9
            if flops:
                benchmark.extra_info["TFLOP/s"] = flops / median / 1e12
        return out

    return run
