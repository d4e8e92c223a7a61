"""The benchmark report pieces on CPU: group parsing, rows, summary ratios, text/markdown/JSON writers, the plot
writer, RESULTS.md updates, the ceilings code paths, and the `bench` fixture machinery end to end (a fake
benchmark file run by pytest in a subprocess with benchmarks/conftest.py)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_bench_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _load("report")
ceilings = _load("ceilings")


def fake_result(group: str, provider: str, median: float, **extra) -> dict:
    """A pytest-benchmark JSON entry as `--benchmark-json` writes it (the fields the report reads)."""
    return {"group": group, "name": f"test_x[{provider}]", "params": {"provider": provider},
            "extra_info": {"provider": provider, **extra}, "stats": {"median": median, "mean": median * 1.1}}


@pytest.fixture
def results() -> list[dict]:
    rng = random.Random(7)
    out = []
    for hd in (64, 128):
        for causal in (False, True):
            for n in (512, 1024, 2048):
                flops = 4 * 16 * n * n * hd / (2 if causal else 1)
                for provider in ("engine", "torch-flash", "torch-cudnn"):
                    med = rng.uniform(0.5e-3, 3e-3)
                    group = f"attention d{hd} {'causal' if causal else 'noncausal'} N={n}"
                    out.append(fake_result(group, provider, med, **{"TFLOP/s": flops / med / 1e12}))
    med = rng.uniform(1e-4, 2e-4)
    out.append(fake_result("layer_norm 65537x768 bf16", "engine", med, **{"GB/s": 2e8 / med / 1e9}))
    out.append(fake_result("layer_norm 65537x768 bf16", "torch", med * 1.7, **{"GB/s": 2e8 / med / 1.7e9}))
    out.append(fake_result("sampler B=1 V=50257", "torch", 3e-4))  # a group with no engine result
    return out


@pytest.mark.parametrize("group, expected", [
    ("attention d64 causal N=1024", ("attention", 1024, 64, True)),
    ("attention d128 noncausal N=16384", ("attention", 16384, 128, False)),
    ("attention D=64 non-causal N=513", ("attention", 513, 64, False)),
    ("decode B=16 hd64 cache=4096", ("decode", None, 64, None)),
    ("layer_norm 65536x768 bf16", ("layer_norm", None, None, None)),
    ("Gelu, bias N=77 bidirectional", ("gelu", 77, None, False)),
])
def test_parse_group(group, expected):
    got = report.parse_group(group)
    assert (got["area"], got["n"], got["head_dim"], got["causal"]) == expected


def test_extra_info_keys_override_the_group_name():
    item = fake_result("attention d64 causal N=1024", "engine", 1e-3,
                       area="attention-varlen", n="2048", head_dim=128, causal="false")
    row = report.make_row(item)
    assert (row["area"], row["n"], row["head_dim"], row["causal"]) == ("attention-varlen", 2048, 128, False)
    assert row["provider"] == "engine" and row["median_s"] == 1e-3


def test_rows_without_timings_are_dropped():
    class Errored:
        has_error, stats = True, None

    no_stats = {"group": "g", "name": "n", "extra_info": {"provider": "engine"}, "stats": None}
    assert report.make_rows([no_stats, Errored(), fake_result("g", "engine", 0.0)]) == []


def test_summary_ratios_are_reference_time_over_engine_time(results):
    rows = report.make_rows(results)
    summary = {e["group"]: e for e in report.summarize(rows)}
    assert len(summary) == 2 * 2 * 3 + 2
    by = {(r["group"], r["provider"]): r["median_s"] for r in rows}
    for group, e in summary.items():
        if e["engine"] is None:
            assert group.startswith("sampler") and e["fastest"] == {"provider": "torch", "median_s": 3e-4}
            continue
        assert e["engine"]["median_s"] == by[(group, "engine")]
        for ref, s in e["speedups"].items():
            assert s == pytest.approx(by[(group, ref)] / by[(group, "engine")], rel=1e-12)
    assert summary["layer_norm 65537x768 bf16"]["speedups"] == {"torch": pytest.approx(1.7)}
    gm = report.geomean_speedups(report.summarize(rows))
    flash = [e["speedups"]["torch-flash"] for e in summary.values() if "torch-flash" in e["speedups"]]
    expect = math.exp(sum(math.log(s) for s in flash) / len(flash))
    assert gm[("attention", "torch-flash")] == (pytest.approx(expect, rel=1e-12), 12)


def test_spread_beside_each_ratio_and_noise_flagged():
    """Ratios carry [ref q1 / engine q3 - ref q3 / engine q1]; wider than NOISY_SPREAD: flagged, warned about, and
    left out of the geometric mean (0.00x / 192x for identical code was the failure this guards against)."""
    def timed(group, provider, q1, median, q3):
        item = fake_result(group, provider, median)
        item["stats"].update(q1=q1, q3=q3, min=q1 * 0.9, max=q3 * 1.1)
        return item

    rows = report.make_rows([timed("gelu steady", "engine", 0.98e-3, 1.0e-3, 1.02e-3),
                             timed("gelu steady", "torch", 1.47e-3, 1.5e-3, 1.53e-3),
                             timed("gelu loaded", "engine", 0.2e-3, 1.0e-3, 9.0e-3),
                             timed("gelu loaded", "torch", 1.0e-3, 1.1e-3, 1.2e-3)])
    summary = {e["group"]: e for e in report.summarize(rows)}
    steady, loaded = summary["gelu steady"], summary["gelu loaded"]
    assert steady["spread"]["torch"] == (pytest.approx(1.47 / 1.02), pytest.approx(1.53 / 0.98))
    assert steady["noisy"] == [] and loaded["noisy"] == ["torch"]
    text = report.format_table(list(summary.values()))
    assert "torch 1.50x [1.44-1.56]" in text and "torch 1.10x [0.11-6.00] noisy" in text
    assert re.search(r"warning: 1 of 2 speedups are inside the noise .*gelu loaded vs torch", text)
    assert report.geomean_speedups(list(summary.values())) == {("gelu", "torch"): (pytest.approx(1.5), 1)}
    md = report.to_markdown(list(summary.values()), meta={"threads": 3}, ceilings=None)
    assert "(3 threads)" in md and "**warning: 1 of 2" in md


def test_peak_fractions_use_the_measured_ceilings(results):
    rows = report.make_rows(results)
    rows[0]["frac_peak"], rows[0]["peak"] = 0.123, "matmul"  # already set by the fixture: kept
    c = {"copy_GB/s": 3917.0, "matmul_TFLOP/s": 771.5}
    report.add_peak_fractions(rows, c)
    assert rows[0]["frac_peak"] == 0.123
    for r in rows[1:]:
        if r.get("TFLOP/s"):
            assert (r["frac_peak"], r["peak"]) == (pytest.approx(r["TFLOP/s"] / 771.5), "matmul")
        elif r.get("GB/s"):
            assert (r["frac_peak"], r["peak"]) == (pytest.approx(r["GB/s"] / 3917.0), "copy")
        else:
            assert "frac_peak" not in r


def test_text_and_markdown_tables(results):
    rows = report.make_rows(results)
    report.add_peak_fractions(rows, {"copy_GB/s": 3917.0, "matmul_TFLOP/s": 771.5})
    summary = report.summarize(rows)
    text = report.format_table(summary, title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].startswith("group")
    for e in summary:
        line = next(l for l in lines if l.startswith(e["group"] + " "))
        for ref, s in e["speedups"].items():
            assert f"{ref} {s:.2f}x" in line
    assert "no engine result (fastest: torch" in text and "geo-mean speedup" in lines[-1]
    meta = {"date": "2026-01-02 03:04 UTC", "device": "Fake GPU", "torch": "9.9", "triton": "8.8",
            "cuda": "13.0", "python": "3.12", "command": "pytest benchmarks/"}
    md = report.to_markdown(summary, meta=meta, ceilings={"copy_GB/s": 3917.0, "matmul_TFLOP/s": 771.5,
                                                          "matmul_dtype": "bfloat16", "matmul_n": 8192})
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + len(summary)
    assert len({l.count("|") for l in table}) == 1
    assert "Fake GPU" in md and "3917 GB/s" in md and "772 TFLOP/s" in md and "`pytest benchmarks/`" in md
    assert report.format_table([]) == "(no benchmark results)"


def test_write_report_round_trips_json(tmp_path, results):
    rows = report.make_rows(results)
    written = report.write_report(tmp_path / "out", rows, meta={"date": "d", "command": "c"},
                                  ceilings={"copy_GB/s": 100.0, "matmul_TFLOP/s": 10.0})
    doc = json.loads(written["json"].read_text())
    assert doc["summary"] == json.loads(json.dumps(report.summarize(rows)))
    assert len(doc["rows"]) == len(results) and doc["ceilings"]["copy_GB/s"] == 100.0
    assert written["txt"].read_text().strip() == report.format_table(report.summarize(rows))
    assert written["md"].read_text().count("\n| attention") == 12


def test_plot_is_skipped_cleanly_without_matplotlib(tmp_path, results, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    rows = report.make_rows(results)
    assert report.plot_attention(rows, tmp_path / "a.png") is None
    assert "png" not in report.write_report(tmp_path, rows)
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "attention.png").exists()


def test_plot_writes_a_png_when_matplotlib_is_installed(tmp_path, results):
    pytest.importorskip("matplotlib")  # optional dependency; the report skips the plot without it
    rows = report.make_rows(results)
    out = report.plot_attention(rows, tmp_path / "attention.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.plot_attention([r for r in rows if r["area"] != "attention"], tmp_path / "none.png") is None


def test_update_results_md_replaces_only_the_marked_section(tmp_path):
    p = tmp_path / "RESULTS.md"
    p.write_text(f"# head\nkeep me\n{report.RESULTS_START}\nold numbers\n{report.RESULTS_END}\ntail\n")
    report.update_results_md(p, "| new | table |\n")
    text = p.read_text()
    assert "old numbers" not in text and "| new | table |" in text
    assert text.startswith("# head\nkeep me\n") and text.endswith(f"{report.RESULTS_END}\ntail\n")
    (tmp_path / "bad.md").write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        report.update_results_md(tmp_path / "bad.md", "x")


def test_cli_reads_pytest_benchmark_json(tmp_path, results, capsys):
    src = tmp_path / "bench.json"
    src.write_text(json.dumps({"benchmarks": results, "datetime": "2026-01-02T03:04:05", "machine_info": {}}))
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"copy_GB/s": 50.0, "matmul_TFLOP/s": 1.0}))
    assert report.main([str(src), "--ceilings", str(c), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "attention d64 causal N=512" in out and "layer_norm 65537x768 bf16" in out
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["meta"]["date"] == "2026-01-02 03:04 UTC" and doc["meta"]["device"] == "(not recorded)"
    assert all("frac_peak" in r for r in doc["rows"] if r.get("TFLOP/s") or r.get("GB/s"))


def test_ceilings_measure_on_cpu():
    c = ceilings.measure("cpu", quick=True)
    assert c["device"] == "cpu" and c["matmul_dtype"] == "float32"
    for key in ("copy_GB/s", "matmul_TFLOP/s"):
        assert math.isfinite(c[key]) and c[key] > 0
    assert ceilings.copy_bandwidth("cpu", nbytes=(1 << 20) + 12, reps=2) > 0
    assert ceilings.matmul_tflops("cpu", n=67, dtype=torch.float32, reps=2) > 0
    assert "copy" in ceilings.describe(c) and "TFLOP/s" in ceilings.describe(c)
    with pytest.raises(ValueError, match="nbytes"):
        ceilings.copy_bandwidth("cpu", nbytes=2)
    with pytest.raises(ValueError, match="n must be positive"):
        ceilings.matmul_tflops("cpu", n=0)


def test_ceilings_load_only_matching_device(tmp_path):
    p = tmp_path / "c.json"
    good = {"name": ceilings.device_name(torch.device("cpu")), "copy_GB/s": 10.5, "matmul_TFLOP/s": 0.3}
    p.write_text(json.dumps(good))
    assert ceilings.load(p, device="cpu") == good
    p.write_text(json.dumps({**good, "name": "NVIDIA H200"}))
    assert ceilings.load(p, device="cpu") is None
    p.write_text(json.dumps({**good, "copy_GB/s": -1}))
    assert ceilings.load(p, device="cpu") is None
    p.write_text("{not json")
    assert ceilings.load(p, device="cpu") is None
    assert ceilings.load(tmp_path / "missing.json", device="cpu") is None
    assert ceilings.main(["--device", "cpu", "--quick", "--json", str(tmp_path / "m.json")]) == 0
    assert ceilings.load(tmp_path / "m.json", device="cpu") is not None


FAKE_BENCH = '''
import pytest, torch, torch.nn.functional as F

@pytest.mark.parametrize("n", [33, 65])
@pytest.mark.parametrize("provider", ["engine", "torch"])
def test_attention(bench, rotating, provider, n):
    sets = rotating(lambda: [torch.randn(1, 2, n, 16) for _ in range(3)], nbytes=3 * 2 * n * 16 * 4)
    out = bench(lambda: F.scaled_dot_product_attention(*sets()), provider=provider, group=f"attn N={n}",
                flops=4 * 2 * n * n * 16, extra={"area": "attention", "n": n, "head_dim": 16, "causal": False})
    ref = F.scaled_dot_product_attention(*[t.double() for t in sets.last])
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)

@pytest.mark.parametrize("provider", ["engine", "torch"])
def test_norm(bench, provider):
    x = torch.randn(37, 129)
    out = bench(lambda: F.layer_norm(x, (129,)), provider=provider, group="layer_norm 37x129", nbytes=2 * x.numel() * 4)
    torch.testing.assert_close(out.double(), F.layer_norm(x.double(), (129,)), rtol=1e-4, atol=1e-5)
'''


def _run_fake_suite(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    d = tmp_path / "benchmarks"
    d.mkdir()
    for name in ("conftest.py", "report.py", "ceilings.py"):
        shutil.copy(BENCH_DIR / name, d / name)
    (d / "test_fake.py").write_text(FAKE_BENCH)
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(d), "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
         "-p", "no:anyio",
         "--engine-report", str(out),
         "--benchmark-json", str(tmp_path / "bench.json"), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((tmp_path / "bench.json").read_text())


def test_bench_fixture_end_to_end(tmp_path):
    proc, bench_json = _run_fake_suite(tmp_path, "--engine-threads", "1")
    assert "engine vs reference" in proc.stdout
    for group in ("attn N=33", "attn N=65", "layer_norm 37x129"):
        assert any(l.startswith(group + " ") and "torch " in l for l in proc.stdout.splitlines()), group
    # Small CPU defaults (pytest-benchmark's own on CUDA); rates and peak fractions recorded.
    max_time, min_rounds = (1.0, 5) if torch.cuda.is_available() else (0.05, 3)
    for b in bench_json["benchmarks"]:
        assert float(b["options"]["max_time"]) == max_time and b["options"]["min_rounds"] == min_rounds
        info = b["extra_info"]
        rate = info.get("TFLOP/s") or info.get("GB/s")
        assert rate > 0 and 0 < info["frac_peak"] and info["calls_per_round"] >= 1
        assert info["median_s"] == pytest.approx(b["stats"]["median"], rel=1e-12)
        assert info["threads"] == 1  # pinned by --engine-threads below
        assert info["min_s"] <= info["q1_s"] <= info["median_s"] <= info["q3_s"] <= info["max_s"]
    meta = bench_json["engine_meta"]  # recorded by the conftest for `report.py BENCH.json` elsewhere
    assert "pytest" in meta["command"] and meta["torch"] == torch.__version__ and meta["threads"] == 1
    assert "1 torch threads" in proc.stdout
    for line in proc.stdout.splitlines():  # every ratio has its spread beside it
        if line.startswith(("attn N=", "layer_norm 37x129")):
            assert re.search(r"torch [\d.]+x \[[\d.]+-[\d.]+\]", line), line
    assert bench_json["engine_ceilings"]["copy_GB/s"] > 0
    doc = json.loads((tmp_path / "report" / "results.json").read_text())
    attn = [r for r in doc["rows"] if r["group"].startswith("attn")]
    assert len(attn) == 4 and all(r["area"] == "attention" and r["head_dim"] == 16 for r in attn)
    assert {r["n"] for r in attn} == {33, 65} and doc["ceilings"]["device"] in ("cpu", "cuda")
    assert (tmp_path / "report" / "summary.md").exists() and (tmp_path / "report" / "summary.txt").exists()


def test_bench_options_given_by_the_user_are_kept_and_times_are_per_call(tmp_path):
    _, bench_json = _run_fake_suite(tmp_path, "--benchmark-max-time=0.02", "--benchmark-min-rounds=4", "-k", "norm",
                                    env={"ENGINE_BENCH_CALLS": "3"})
    assert len(bench_json["benchmarks"]) == 2
    for b in bench_json["benchmarks"]:
        assert float(b["options"]["max_time"]) == 0.02 and b["options"]["min_rounds"] == 4
        # Three calls per timed round: pytest-benchmark's own numbers are rescaled to one call.
        info, st = b["extra_info"], b["stats"]
        assert info["calls_per_round"] == 3 and st["iterations"] % 3 == 0
        assert info["median_s"] == pytest.approx(st["median"], rel=1e-12)
        assert st["min"] <= st["median"] <= st["max"] and st["rounds"] >= 4


def _bench_conftest():
    spec = importlib.util.spec_from_file_location("_test_bench_conftest", BENCH_DIR / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rotation_cycles_through_input_sets():
    conf = _bench_conftest()
    made = []
    rot = conf.Rotation(lambda: made.append(object()) or made[-1], nbytes=1 << 10)
    expected = 1 if not torch.cuda.is_available() else min(256, math.ceil(4 * 60e6 / 1024))
    assert len(rot) == len(made) and (len(rot) == 1 or len(rot) >= expected // 2)
    seen = [rot() for _ in range(2 * len(rot) + 1)]
    assert seen[: len(rot)] == made and seen[len(rot): 2 * len(rot)] == made and rot.last is seen[-1]
    with pytest.raises(ValueError, match="nbytes"):
        conf.Rotation(lambda: None, nbytes=0)


def test_per_call_stats_rescales_pytest_benchmark_stats():
    from pytest_benchmark.stats import Stats

    conf = _bench_conftest()

    class Meta:  # the two attributes of pytest-benchmark's Metadata that the rescale touches
        def __init__(self, data):
            self.stats, self.iterations = Stats(), 2
            self.stats.data.extend(data)

    m = Meta([0.3, 0.9, 0.6])
    assert m.stats.median == pytest.approx(0.6)  # cached before the rescale
    assert conf._per_call_stats(m, 3) is True
    assert (m.stats.median, m.stats.min, m.stats.max) == (pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.3))
    assert m.iterations == 6
    assert conf._per_call_stats(None, 3) is True and conf._per_call_stats(m, 1) is True
    assert m.stats.median == pytest.approx(0.2)


def test_results_md_has_the_markers_the_report_fills(tmp_path, results):
    p = tmp_path / "RESULTS.md"
    shutil.copy(BENCH_DIR / "RESULTS.md", p)
    before = p.read_text()
    assert "No GPU measurement has been recorded yet" in before
    src = tmp_path / "bench.json"
    src.write_text(json.dumps({"benchmarks": results, "engine_meta": {"date": "2026-01-02 03:04 UTC",
                                                                        "device": "NVIDIA H200", "command": "x"}}))
    assert report.main([str(src), "--results-md", str(p)]) == 0
    after = p.read_text()
    assert "No GPU measurement has been recorded yet" not in after and "on NVIDIA H200" in after
    head, tail = before.split(report.RESULTS_START)[0], before.split(report.RESULTS_END)[1]
    assert after.startswith(head) and after.endswith(tail)
