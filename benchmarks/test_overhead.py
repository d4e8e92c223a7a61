"""Per-call overhead of every engine op on tiny tensors, engine vs the torch op it mirrors, in the same run.

The cases are benchmarks/overhead.py's (one group per op and case: "overhead <op> <case> <device>"). The work
is negligible, so the times are the host's: on the CPU engine's checks and dispatch in front of the same PyTorch
op; on CUDA engine's checks, dispatch and kernel launch against torch's own CUDA op (the bench fixture repeats a
call back to back within a round and synchronizes once, so a time is host time per call). Each case checks that
engine and torch agree. For precise single-thread CPU numbers with spread, run ``python benchmarks/overhead.py``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _overhead_module():
    name = "_engine_bench_overhead"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "overhead.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


DTYPE = torch.bfloat16 if CUDA else torch.float32
CASES = _overhead_module().cases(DEVICE, DTYPE)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CPU ops: no OpenMP hand-off in the numbers
    yield
    torch.set_num_threads(n)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


@pytest.mark.parametrize("provider", ["engine", "torch"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{op}-{case}" for op, case, _, _ in CASES])
def test_op_overhead(bench, provider, index):
    op, case, eng, ref = CASES[index]
    out = bench(eng if provider == "engine" else ref, provider=provider, group=f"overhead {op} {case} {DEVICE}",
                extra={"area": "overhead"})
    other = ref() if provider == "engine" else eng()
    tol = dict(atol=3e-2, rtol=3e-2) if DTYPE == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(_flat(out), _flat(other), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a.float(), b.float(), **tol)
        else:
            assert torch.equal(a, b)
