"""`python -m engine bench` (engine/bench.py) and the GPU report script, checked on CPU."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.ops
from engine import bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_report.sh"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ENGINE_BACKEND", "TRITON_INTERPRET")}


def test_cli_quick_runs_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "engine", "bench", "--quick", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=_clean_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("engine bench on cpu") and "ENGINE_BACKEND=auto" in lines[0]
    assert re.search(rf"torch {re.escape(torch.__version__)}, \d+ threads;", lines[0])
    assert re.match(r"op\s+shape\s+dtype\s+backend\s+engine ms\s+torch ms\s+speedup \[IQR\]\s+max err\s+OK",
                    lines[1])
    rows = {l.split()[0] for l in lines[3:-1]}
    assert {"layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm", "gelu", "bias_gelu", "gelu_and_mul",
            "sdpa", "decode_attention", "sampling.probs"} <= rows
    assert re.match(r"\d+ passed, 0 failed, \d+ not available", lines[-1])
    for line in lines[3:-1]:  # each op ran on the torch path (CPU, auto; the sampler is C++) and passed, or is missing
        backend = "c++" if line.startswith("sampling") else "torch"
        assert (f" {backend} " in line and re.search(r"\sOK(\s|$)", line)) or "not available" in line, line


def _fake_ops(monkeypatch) -> None:
    """Every public op present and correct (PyTorch itself), whatever the other modules provide today."""
    def add_ln(x, r, w, b, eps=1e-5):
        s = x + r
        return F.layer_norm(s, (x.shape[-1],), w, b, eps), s

    def decode(q, kc, vc, lens, scale=None):
        keep = (torch.arange(kc.shape[2])[None, :] < lens[:, None].long())[:, None, None, :]
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=keep)

    fakes = {"layer_norm": F.layer_norm, "add_layer_norm": add_ln, "gelu": F.gelu,
             "bias_gelu": lambda x, b, approximate="none": F.gelu(x + b, approximate=approximate),
             "scaled_dot_product_attention": F.scaled_dot_product_attention, "decode_attention": decode}
    for name, fn in fakes.items():
        monkeypatch.setattr(engine.ops, name, fn, raising=False)


def test_every_op_checked_when_present(monkeypatch, capsys):
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    _fake_ops(monkeypatch)
    rows = {r.op: r for r in bench.run("cpu", quick=True)}
    for op in ("layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm", "gelu", "gelu tanh", "bias_gelu",
               "gelu_and_mul tanh", "sdpa", "sdpa causal", "decode_attention"):
        r = rows[op]
        assert r.ok is True and r.backend == "torch", (op, r)
        assert r.max_err < r.tol and r.engine_ms > 0 and r.torch_ms > 0
    assert bench.main("cpu", quick=True) == 0
    assert "0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("broken", ["wrong", "raises", "nan"])
def test_a_wrong_op_fails_the_run(monkeypatch, capsys, broken):
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    _fake_ops(monkeypatch)

    def bad_gelu(x, approximate="none"):
        if broken == "raises":
            raise RuntimeError("kernel exploded")
        out = F.gelu(x, approximate=approximate)
        if broken == "nan":
            out = out.clone()
            out.view(-1)[5] = float("nan")
            return out
        return out * 1.001 + 1e-3

    monkeypatch.setattr(engine.ops, "gelu", bad_gelu)
    assert bench.main("cpu", quick=True) == 1
    out = capsys.readouterr().out
    gelu_lines = [l for l in out.splitlines() if l.startswith("gelu ")]
    assert gelu_lines and all("FAIL" in l for l in gelu_lines)
    assert "kernel exploded" in out if broken == "raises" else "> tol" in out
    assert re.search(r"FAILED: gelu, gelu tanh$", out.strip())


def test_missing_ops_are_reported_not_fatal(monkeypatch, capsys):
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    _fake_ops(monkeypatch)
    monkeypatch.delattr(engine.ops, "decode_attention")
    monkeypatch.setitem(sys.modules, "engine.sampling", None)  # import engine.sampling now fails
    assert bench.main("cpu", quick=True) == 0
    out = capsys.readouterr().out
    for prefix in ("decode_attention ", "sampling.probs "):
        line = next(l for l in out.splitlines() if l.startswith(prefix))
        assert line.rstrip().endswith("n/a  not available")
    assert "2 not available" in out


def test_bad_device():
    with pytest.raises(ValueError, match="device must be"):
        bench._resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be"):
        bench._resolve_device("not a device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA, which is not available"):
            bench._resolve_device("cuda")
    assert bench.main("tpu", quick=True) == 2
    assert bench.main("cuda:x", quick=True) == 2


def test_max_err_rules():
    ref = torch.randn(7, 5, dtype=torch.float64)
    out = (ref + 0.25).float()
    assert bench._max_err(out, ref) == pytest.approx(0.25, abs=1e-6)
    bad = out.clone()
    bad[3, 2] = float("nan")
    assert bench._max_err(bad, ref) == math.inf
    assert bench._max_err(out[:, :4], ref) == math.inf
    assert bench._max_err((out, ref + 2), (ref, ref)) == pytest.approx(2.0)
    assert bench._max_err((out,), (ref, ref)) == math.inf


def test_spread_beside_every_ratio_and_noise_flagged(monkeypatch, capsys):
    """Identical code on both sides: the ratio sits near 1 with its interquartile range; an engine op whose time
    jumps around (a loaded machine) is flagged noisy with a warning instead of a bare 0.00x or 192x."""
    _fake_ops(monkeypatch)
    steady = engine.ops.gelu
    jumpy = iter([0.0, 0.02] * 100)

    def erratic(x, approximate="none"):
        time.sleep(next(jumpy))  # 0 ms, 20 ms, 0 ms, ...: the ratio swings by orders of magnitude
        return steady(x, approximate=approximate)

    monkeypatch.setattr(engine.ops, "gelu", erratic)
    assert bench.main("cpu", quick=True) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0] + (" tanh" if " tanh " in line else ""): line for line in out.splitlines()[3:-1]}
    for op in ("gelu", "gelu tanh"):
        m = re.search(r"\s([\d.]+)x \[([\d.]+)-([\d.]+)\]( noisy)?", rows[op])
        assert m, rows[op]
        lo, mid, hi = float(m[2]), float(m[1]), float(m[3])
        assert lo <= mid <= hi and m[4] == " noisy" and hi / lo > bench.NOISY_SPREAD
    w = re.search(r"warning: (\d+) of (\d+) speedups are inside the noise .*gelu", err)
    assert w and 2 <= int(w[1]) and int(w[2]) == sum(bool(re.search(r"\dx \[", r)) for r in out.splitlines()[3:-1])
    assert err.count("\n") == 1


def test_threads_pinned_for_the_run(monkeypatch, capsys):
    _fake_ops(monkeypatch)
    seen = []
    real = engine.ops.layer_norm
    monkeypatch.setattr(engine.ops, "layer_norm", lambda *a, **k: (seen.append(torch.get_num_threads()),
                                                                   real(*a, **k))[1])
    before = torch.get_num_threads()
    assert bench.main("cpu", quick=True, threads=1) == 0
    assert ", 1 threads;" in capsys.readouterr().out.splitlines()[0]
    assert set(seen) == {1} and torch.get_num_threads() == before
    for bad in (0, -2, 1.5, True):
        assert bench.main("cpu", quick=True, threads=bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("engine bench: error: threads must be a positive integer") and err.count("\n") == 1


def test_time_samples_interleave():
    log = []
    times = bench.time_samples(lambda: log.append("a"), lambda: log.append("b"), device="cpu", warmup=1, reps=4)
    assert log == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t) for t in times] == [4, 4]
    assert bench.quartiles([1.0, 2.0, 3.0, 4.0, 100.0]) == (2.0, 3.0, 4.0)
    assert not bench.noisy(0.9, 1.2) and bench.noisy(0.5, 1.1) and bench.noisy(0.0, 1.0)


def test_time_ms():
    assert bench.time_ms(lambda: time.sleep(0.004), device="cpu", warmup=0, reps=3) >= 4.0
    calls = []
    bench.time_ms(lambda: calls.append(1), device="cpu", warmup=2, reps=5)
    assert len(calls) == 7
    with pytest.raises(ValueError, match="reps"):
        bench.time_ms(lambda: None, device="cpu", reps=0)


def test_gpu_report_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_gpu_report_stage_list_is_sane():
    proc = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, timeout=30,
                          env={**_clean_env(), "ENGINE_REPORT_BUDGET": "330"})
    assert proc.returncode == 0, proc.stderr
    stages = [l.split() for l in proc.stdout.splitlines()
              if re.match(r"^\S+\s+\d+ s\s+(check|info)\s+guaranteed \d+ s$", l)]
    names = [s[0] for s in stages]
    assert names == ["versions", "build", "ceilings", "engine-bench", "gpu-tests", "benchmarks"]
    limits = {s[0]: int(s[1]) for s in stages}
    kinds = {s[0]: s[3] for s in stages}
    assert all(0 < v <= 180 for v in limits.values())
    assert {k for k, v in kinds.items() if v == "check"} == {"build", "engine-bench", "gpu-tests", "benchmarks"}
    budget = int(re.search(r"budget (\d+) s", proc.stdout).group(1))
    assert budget <= 360  # six minutes for everything, inside a 15-minute lease that includes the start
    guaranteed = {s[0]: int(s[5]) for s in stages}
    assert guaranteed["benchmarks"] >= 120 and sum(guaranteed.values()) < budget
    assert guaranteed["benchmarks"] <= limits["benchmarks"]
    text = SCRIPT.read_text()
    for needle in ("pip install --no-build-isolation --no-deps", "pytest -m gpu tests/", "--benchmark-json",
                   "--engine-report", "timeout -s INT", "/opt/torch/.venv/bin/python3"):
        assert needle in text, needle


def test_gpu_report_runs_its_cpu_stages(tmp_path):
    """The script end to end on CPU with the slow stages skipped: ceilings written, the rest reported skipped,
    exit status 3 (incomplete) because check stages were skipped."""
    env = {**_clean_env(), "PYTHON": sys.executable, "ENGINE_REPORT_SKIP": "build,engine-bench,gpu-tests,benchmarks",
           "ENGINE_REPORT_BUDGET": "120"}
    env.pop("OUT", None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.txt").write_text("stale table of an earlier run\n")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "== build: skipped (ENGINE_REPORT_SKIP)" in out and "-- ceilings: ok" in out
    assert re.search(r"torch \d", out) and "RESULT: INCOMPLETE" in out.splitlines()[-1]
    assert (tmp_path / "out" / "ceilings.json").exists() and (tmp_path / "out" / "report.log").exists()
    assert "(no benchmark summary was written)" in out and "stale" not in out
    assert not (tmp_path / "out" / "summary.txt").exists()
