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


def _script(stem: str):
    """benchmarks/<stem>.py as a module (loaded once; the scripts are not a package import)."""
    name = f"_engine_bench_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{stem}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


DTYPE = torch.bfloat16 if CUDA else torch.float32
CASES = _script("overhead").cases(DEVICE, DTYPE)


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


def test_instruction_counts_pair_the_measured_dumps(tmp_path):
    """overhead_ir.py (the callgrind counts; the valgrind run itself takes minutes, so not here): dumps are read in
    callgrind's part order (cg.10 after cg.9); only those that record a call made exactly --calls times are
    measured loops; they pair up as (engine, torch) per case; a count of them other than 2 x cases, or a loop that
    ran outside the toggle, is an error."""
    ir = _script("overhead_ir")
    loop = "fn=(1) f\ncalls=10 0x1\n"
    dumps = {1: "summary: 123", 2: loop + "events: Ir", 9: loop + "totals: 4000", 10: loop + "summary: 2500",
             11: "calls=100 0x1\nsummary: 7", 12: loop + "summary: 9000", 13: loop + "summary: 6000"}
    for part, text in dumps.items():
        (tmp_path / f"cg.{part}").write_text(f"# callgrind format\n{text}\n")
    (tmp_path / "cg").write_text(loop + "summary: 5\n")  # the final dump callgrind writes without a part number
    assert ir.dump_totals(tmp_path, 10) == [0, 4000, 2500, 9000, 6000]
    rows = ir.per_call([4000, 2500, 9000, 6000], [("gelu", "8x64"), ("pad_input", "13x64")], 10)
    assert rows == [{"op": "gelu", "case": "8x64", "engine": 400.0, "torch": 250.0, "over": 150.0},
                    {"op": "pad_input", "case": "13x64", "engine": 900.0, "torch": 600.0, "over": 300.0}]
    with pytest.raises(RuntimeError, match="3 dumps of 1-call loops; the 2 cases need 4"):
        ir.per_call([1, 2, 3], [("a", ""), ("b", "")], 1)
    with pytest.raises(RuntimeError, match="holds 5 instructions for 10 calls"):
        ir.per_call([400, 5], [("a", "")], 10)


def test_instruction_counts_need_valgrind(monkeypatch, capsys):
    ir = _script("overhead_ir")
    monkeypatch.setattr(ir.shutil, "which", lambda name: None)
    assert ir.main(["--only", "gelu"]) == 2
    assert "valgrind is not on PATH" in capsys.readouterr().err
