"""Shared benchmark machinery: every benchmark times engine against a reference in the same run.

Use the `bench` fixture:

    def test_layer_norm(bench, provider, ...):
        out = bench(fn, provider=provider, group="layer_norm 65536x768 bf16", nbytes=..., flops=None)
        # then assert `out` is right

- `group` puts engine and its references side by side in pytest-benchmark's report and in the summary.
- `provider` names who ran: "engine", "torch", "torch-flash", "transformers", ...
- `nbytes` / `flops` (per call) turn the median time into GB/s / TFLOP/s in extra_info, and into a fraction of
  the measured device peak ("frac_peak", with "peak" = "copy" or "matmul"; see benchmarks/ceilings.py).
- `extra={...}` adds structured fields to extra_info; the report reads "area", "n", "head_dim", "causal"
  (e.g. extra={"area": "attention", "n": 1024, "head_dim": 64, "causal": True}) and otherwise parses the group.
- On CUDA one untimed warm-up call runs first (compilation, autotuning and allocator growth stay out of the
  numbers), and each timed round synchronizes the device at its end. Calls shorter than ~1 ms are repeated
  back to back within a round (extra_info "calls_per_round"), so the sync does not dominate; the recorded
  times (pytest-benchmark's table and JSON, `benchmark.stats`, extra_info "median_s") are per call.
  ENGINE_BENCH_CALLS=K fixes the calls per round (any device).
- Memory-bound cases whose data fits in L2 (60 MB on the H200) should rotate inputs with the `rotating`
  fixture: `sets = rotating(make_inputs, nbytes=bytes_per_set)`, then `bench(lambda: op(*sets()), ...)`;
  `sets.last` is the input set of the most recent call (to check the returned output against).

Threads: the torch thread count is pinned for the whole session (`--engine-threads N` or ENGINE_BENCH_THREADS=N;
default: torch's setting at start-up), recorded in every result's extra_info "threads" and in the report header,
so engine and its references always run with the same count. Each result also records its per-call q1_s, q3_s,
min_s and max_s, from which the summary prints the spread of every ratio and flags the noisy ones.

At the end of the run a short table (engine vs each reference per group) is printed; `--engine-report DIR`
(or ENGINE_BENCH_REPORT=DIR) also writes results.json, summary.md, summary.txt and attention.png there.
On CPU, pytest-benchmark's --benchmark-max-time / --benchmark-min-rounds default to small values (CI runs
this suite) unless given on the command line.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest
import torch

CUDA = torch.cuda.is_available()
HERE = Path(__file__).resolve().parent
# pytest-benchmark options applied on CPU unless the user passed their own.
CPU_DEFAULTS = {"benchmark_max_time": ("--benchmark-max-time", "0.05"),
                "benchmark_min_rounds": ("--benchmark-min-rounds", 3)}
# CUDA rounds: short calls are repeated back to back (one sync per round); median_s is per call.
ROUND_MIN_S, MAX_CALLS_PER_ROUND = 1e-3, 100
ROTATE_L2_MULTIPLE = 4  # rotate until the sets together are this many times the L2 size
CEILINGS_KEY = pytest.StashKey[dict]()


def _load(name: str) -> Any:
    """Import a sibling module by path (works whatever pytest's import mode and sys.path are)."""
    mod_name = f"_engine_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _load("report")
ceilings_mod = _load("ceilings")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--engine-report", default=os.environ.get("ENGINE_BENCH_REPORT"), metavar="DIR",
                     help="write engine's benchmark report (results.json, summary.md/.txt, attention.png) to DIR")
    parser.addoption("--engine-threads", type=int, default=int(os.environ.get("ENGINE_BENCH_THREADS", "0") or 0),
                     metavar="N", help="torch threads for every benchmark (default: torch's setting at start-up)")


def _user_gave(config: pytest.Config, flag: str) -> bool:
    args = list(config.invocation_params.args) + shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += list(config.getini("addopts"))
    except (ValueError, KeyError):
        pass
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--engine-threads", default=0) or torch.get_num_threads()
    if threads < 1:
        raise pytest.UsageError(f"--engine-threads must be a positive integer; got {threads}")
    torch.set_num_threads(threads)  # pinned: engine and every reference use the same count
    if CUDA:
        return
    for dest, (flag, value) in CPU_DEFAULTS.items():
        if hasattr(config.option, dest) and not _user_gave(config, flag):
            setattr(config.option, dest, value)


@pytest.fixture
def device() -> str:
    return "cuda" if CUDA else "cpu"


@pytest.fixture(scope="module")
def one_cpu_thread():
    """On CPU, one torch thread for engine and its reference alike: small matrices on a shared box only lose to
    OpenMP hand-offs. CUDA runs are left alone. Use with ``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``."""
    n = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ceilings(request: pytest.FixtureRequest) -> dict | None:
    """Measured copy bandwidth and matmul rate of this device, once per session (cheap on CPU).

    ENGINE_CEILINGS=path.json reuses ceilings saved by `benchmarks/ceilings.py --json` on the same device."""
    dev = "cuda" if CUDA else "cpu"
    saved = os.environ.get("ENGINE_CEILINGS")
    c = ceilings_mod.load(saved, device=dev) if saved else None
    if c is None:
        try:
            c = ceilings_mod.measure(dev)
        except Exception as exc:  # a ceiling is context for the numbers, never a reason to fail them
            warnings.warn(f"could not measure device ceilings: {exc}")
            return None
    request.config.stash[CEILINGS_KEY] = c
    return c


class Rotation:
    """Cycles through several independently made input sets, so a memory-bound benchmark reads from device
    memory instead of L2. ``make()`` returns one input set; ``nbytes`` is the bytes one set occupies.

    On CUDA it makes enough sets to cover ROTATE_L2_MULTIPLE x the L2 size (at most ``max_sets``); elsewhere one.
    Call the object to get the next set; ``last`` is the set the latest call returned.
    """

    def __init__(self, make: Callable[[], Any], *, nbytes: float, max_sets: int = 256) -> None:
        if not nbytes or nbytes <= 0:
            raise ValueError(f"nbytes must be a positive byte count per input set; got {nbytes!r}")
        count = 1
        if CUDA:
            l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 60 << 20)
            count = max(1, min(max_sets, math.ceil(ROTATE_L2_MULTIPLE * l2 / nbytes)))
        self.sets = [make() for _ in range(count)]
        self._i = -1

    def __len__(self) -> int:
        return len(self.sets)

    def __call__(self) -> Any:
        self._i = (self._i + 1) % len(self.sets)
        return self.sets[self._i]

    @property
    def last(self) -> Any:
        return self.sets[max(self._i, 0)]


@pytest.fixture
def rotating() -> type[Rotation]:
    """The Rotation class: ``sets = rotating(make_inputs, nbytes=bytes_per_set)``."""
    return Rotation


def _calls_per_round(fn: Callable[[], Any]) -> int:
    """On CUDA: how many back-to-back calls one timed round makes, so a round lasts >= ROUND_MIN_S and the
    host synchronisation at its end (~10-20 us) stays a small part of it. Timed with CUDA events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end) * 1e-3, 1e-7)
    return max(1, min(MAX_CALLS_PER_ROUND, math.ceil(ROUND_MIN_S / once)))


def _per_call_stats(metadata: Any, calls: int) -> bool:
    """Rescale pytest-benchmark's recorded round times to per-call times when a round made ``calls`` calls, so
    its table, its JSON and ``benchmark.stats.stats.median`` all read per call. True when the stats are per call."""
    if metadata is None or calls == 1:
        return True
    st = getattr(metadata, "stats", None)
    data = getattr(st, "data", None)
    if not isinstance(data, list):
        return False
    data[:] = [d / calls for d in data]
    for name in list(vars(st)):
        if name != "data":  # drop cached statistics computed from the old data
            delattr(st, name)
    if isinstance(getattr(metadata, "iterations", None), int):
        metadata.iterations *= calls
    return True


@pytest.fixture
def bench(benchmark, ceilings):
    def run(fn: Callable[[], Any], *, provider: str, group: str, nbytes: float | None = None,
            flops: float | None = None, extra: Mapping[str, Any] | None = None) -> Any:
        benchmark.group = group
        benchmark.extra_info["provider"] = provider
        benchmark.extra_info["device"] = "cuda" if CUDA else "cpu"
        benchmark.extra_info["threads"] = torch.get_num_threads()
        if extra:
            benchmark.extra_info.update(extra)
        fn()  # warm-up, untimed: compilation, autotuning, allocator growth
        forced = int(os.environ.get("ENGINE_BENCH_CALLS", "0") or 0)
        calls = forced if forced > 0 else (_calls_per_round(fn) if CUDA else 1)

        def timed():
            for _ in range(calls - 1):
                fn()
            out = fn()
            if CUDA:
                torch.cuda.synchronize()
            return out

        out = benchmark(timed)
        stats = getattr(benchmark, "stats", None)
        per_call = _per_call_stats(stats, calls)
        median = stats.stats.median / (1 if per_call else calls) if stats is not None else None
        if median:
            info = benchmark.extra_info
            info["median_s"] = median
            info["calls_per_round"] = calls
            scale = 1 if per_call else calls
            for key in ("q1", "q3", "min", "max"):  # the spread, per call, for the summary's ratio ranges
                info[f"{key}_s"] = getattr(stats.stats, key) / scale
            if nbytes:
                info["GB/s"] = nbytes / median / 1e9
            if flops:
                info["TFLOP/s"] = flops / median / 1e12
            if ceilings:
                if flops and ceilings.get("matmul_TFLOP/s"):
                    info["frac_peak"], info["peak"] = info["TFLOP/s"] / ceilings["matmul_TFLOP/s"], "matmul"
                elif nbytes and ceilings.get("copy_GB/s"):
                    info["frac_peak"], info["peak"] = info["GB/s"] / ceilings["copy_GB/s"], "copy"
        return out

    return run


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Record the environment (GPU, versions, command) and the ceilings in --benchmark-json output, so
    `python benchmarks/report.py BENCH.json` can rebuild the report anywhere."""
    output_json["engine_meta"] = report.environment()
    output_json["engine_ceilings"] = config.stash.get(CEILINGS_KEY, None)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    rows = report.make_rows(session.benchmarks) if session is not None else []
    if not rows:
        return
    c = config.stash.get(CEILINGS_KEY, None)
    report.add_peak_fractions(rows, c)
    summary = report.summarize(rows)
    terminalreporter.write_sep("=", "engine vs reference (speedup = reference time / engine time; "
                                    f"{torch.get_num_threads()} torch threads)")
    if c:
        terminalreporter.write_line(ceilings_mod.describe(c))
    terminalreporter.write_line(report.format_table(summary))
    out_dir = config.getoption("--engine-report", default=None)
    if out_dir:
        written = report.write_report(out_dir, rows, ceilings=c)
        if "png" not in written:
            terminalreporter.write_line("attention plot skipped (matplotlib missing or no attention TFLOP/s rows)")
        terminalreporter.write_line("engine report: " + ", ".join(str(p) for p in written.values()))
