"""``python -m engine bench``: a short self-check and timing of engine's public ops on this device.

For each op (layer_norm, add_layer_norm, rms_norm, add_rms_norm, gelu, bias_gelu, gelu_and_mul,
scaled_dot_product_attention, decode_attention, and sampling.probs when the sampler is built) it runs engine's op
and PyTorch's own op on the same random inputs, compares both with a float64 reference, times both, and prints one
table row:

    op | shape | dtype | backend | engine ms | torch ms | speedup [IQR] | max err | OK

Timing: engine and torch are timed alternately (engine, torch, torch, engine, ...), so a load change on a shared
machine hits both; ``engine ms`` / ``torch ms`` are medians. ``speedup`` is the median of the per-pair ratios
torch / engine (above 1: engine is faster), with the interquartile range of those ratios in brackets. When that
range is wider than ``NOISY_SPREAD`` (q3 / q1 > 1.5) the row says "noisy": the ratio is not a result, rerun on a
quieter machine. The torch thread count is pinned for the whole run (``threads``, default: torch's current
setting) and printed in the header. A row is OK when engine's max abs error vs the float64 reference is at most
2x PyTorch's own error in the same dtype plus a small dtype floor. Ops that do not exist yet print "not
available" instead of failing. ``main`` returns 1 when any check failed, 2 for a bad argument, else 0.

On a CPU, ``ENGINE_BACKEND=auto`` dispatches to PyTorch, so engine and torch run the same code there; the
``backend`` column says what engine.backend chose for each op's tensors.

The ops' inputs, PyTorch counterparts and float64 references are ``engine.bench_cases``; this file checks, times
and reports them.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine import backend
from engine.bench_cases import Case, make_cases

# Absolute error floor added to the "2x torch's own error" rule, per dtype (ulp-sized at values of order 1).
ERROR_FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


NOISY_SPREAD = 1.5  # a ratio whose interquartile range spans more than this factor (q3 / q1) is noise


def _once_ms(fn: Callable[[], Any], is_cuda: bool) -> float:
    """One call of ``fn`` in ms: CUDA events on CUDA (the device is idle before the first), else perf_counter."""
    if is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_samples(*fns: Callable[[], Any], device: str | torch.device, warmup: int = 1,
                 reps: int = 10) -> list[list[float]]:
    """Wall times (ms) of each function, ``reps`` each, warm-up calls excluded; the functions are interleaved
    (round r runs them in order, round r + 1 in reverse), so a change of machine load affects all alike."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1; got {reps}")
    is_cuda = torch.device(device).type == "cuda"
    for fn in fns:
        for _ in range(max(0, warmup)):
            fn()
    if is_cuda:
        torch.cuda.synchronize()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(_once_ms(fns[i], is_cuda))
    return times


def time_ms(fn: Callable[[], Any], *, device: str | torch.device, warmup: int = 1, reps: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds, warm-up calls excluded (see ``time_samples``)."""
    return statistics.median(time_samples(fn, device=device, warmup=warmup, reps=reps)[0])


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of ``xs`` (inclusive method; a single value gives it three times)."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def noisy(lo: float, hi: float) -> bool:
    """Whether a ratio with this interquartile range [lo, hi] is inside the noise (hi / lo > NOISY_SPREAD)."""
    return not (lo > 0 and hi / lo <= NOISY_SPREAD)


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    backend: str = "-"
    engine_ms: float | None = None
    torch_ms: float | None = None
    max_err: float | None = None
    tol: float | None = None
    ok: bool | None = None  # None: not available
    note: str = ""
    extra: dict = field(default_factory=dict)
    engine_range: tuple[float, float] | None = None  # (min, max) ms
    torch_range: tuple[float, float] | None = None
    speedup: float | None = None  # median of the paired ratios torch / engine
    speedup_iqr: tuple[float, float] | None = None  # (q1, q3) of those ratios

    @property
    def noisy(self) -> bool:
        return self.speedup_iqr is not None and noisy(*self.speedup_iqr)


def _max_err(out: Any, ref: Any) -> float:
    """Largest abs difference over (possibly tuple) outputs; non-finite mismatches count as inf."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    if len(outs) != len(refs):
        return math.inf
    worst = 0.0
    for o, r in zip(outs, refs):
        if not isinstance(o, torch.Tensor) or o.shape != r.shape:
            return math.inf
        o64, r64 = o.detach().to(torch.float64), r.detach().to(torch.float64)
        if not torch.equal(torch.isfinite(o64), torch.isfinite(r64)):
            return math.inf
        finite = torch.isfinite(r64)
        if finite.any():
            worst = max(worst, (o64[finite] - r64[finite]).abs().max().item())
    return worst


def _dispatch(tensors: tuple, op: str) -> str:
    try:
        return "triton" if backend.use_triton(*tensors, op=op) else "torch"
    except Exception as exc:  # a forced backend that cannot run here
        return f"error: {exc}"[:40]


def _run_case(case: Case, device: torch.device, reps: int) -> Row:
    row = Row(case.op, case.shape, str(case.dtype).replace("torch.", ""), note=case.note)
    if case.engine is None:
        row.note = "not available"
        return row
    row.backend = case.backend or _dispatch(case.tensors, case.op.split()[0])
    where = case.tensors[0].device if case.tensors else device
    try:
        ref = case.reference()
        theirs = case.torch()
        ours = case.engine()
        torch_err = _max_err(theirs, ref)
        row.max_err = _max_err(ours, ref)
        row.tol = 2 * torch_err + ERROR_FLOOR.get(case.dtype, 1e-5)
        row.ok = row.max_err <= row.tol
        if not row.ok:
            row.note = f"error {row.max_err:.3g} > tol {row.tol:.3g}"
        eng, ref_t = time_samples(case.engine, case.torch, device=where, reps=reps)
        row.engine_ms, row.torch_ms = statistics.median(eng), statistics.median(ref_t)
        row.engine_range, row.torch_range = (min(eng), max(eng)), (min(ref_t), max(ref_t))
        q1, row.speedup, q3 = quartiles([t / max(e, 1e-9) for e, t in zip(eng, ref_t)])
        row.speedup_iqr = (q1, q3)
    except Exception as exc:
        row.ok = False
        row.note = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:120]
    return row


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table of ``rows`` (one line per op)."""
    head = ("op", "shape", "dtype", "backend", "engine ms", "torch ms", "speedup [IQR]", "max err", "OK")
    lines = []
    for r in rows:
        speed = "-"
        if r.speedup is not None:
            lo, hi = r.speedup_iqr
            speed = f"{_ratio(r.speedup)}x [{_ratio(lo)}-{_ratio(hi)}]" + (" noisy" if r.noisy else "")
        ok = "n/a" if r.ok is None else ("OK" if r.ok else "FAIL")
        lines.append((r.op, r.shape, r.dtype, r.backend,
                      f"{r.engine_ms:.3f}" if r.engine_ms is not None else "-",
                      f"{r.torch_ms:.3f}" if r.torch_ms is not None else "-", speed,
                      f"{r.max_err:.2e}" if r.max_err is not None else "-", ok + (f"  {r.note}" if r.note else "")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths[:-1]), "--")]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _ratio(x: float) -> str:
    """A ratio with 3 significant digits (0.00123, 0.98, 192): never a bare 0.00."""
    return f"{x:.0f}" if x >= 100 else f"{x:#.3g}"


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return backend.resolve_device(device)


def _check_threads(threads: object) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer; got {threads!r}")
    return threads


def run(device: str | torch.device | None = None, *, quick: bool = False, seed: int = 0,
        threads: int | None = None) -> list[Row]:
    """Check and time every op on ``device`` with ``threads`` torch threads (default: the current setting,
    pinned for the run, restored after); returns the rows (printing nothing)."""
    dev = _resolve_device(device)
    threads = torch.get_num_threads() if threads is None else _check_threads(threads)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    reps = (7 if quick else 21) if dev.type == "cuda" else (7 if quick else 15)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return [_run_case(case, dev, reps) for case in make_cases(dev, dtype, quick, seed)]
    finally:
        torch.set_num_threads(saved)


def _header(dev: torch.device, threads: int) -> str:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores visible)"
    triton = "available" if backend.triton_available() else f"unavailable ({backend.triton_import_error()})"
    return (f"engine bench on {dev} [{name}]; torch {torch.__version__}, {threads} threads; triton {triton}; "
            f"ENGINE_BACKEND={os.environ.get('ENGINE_BACKEND', 'auto')}")


def main(device: str | None = None, quick: bool = False, threads: int | None = None) -> int:
    """Entry point of ``python -m engine bench``: print the table; 1 if any check failed, 2 for a bad
    argument (one line on stderr), else 0."""
    try:
        dev = _resolve_device(device)
        threads = torch.get_num_threads() if threads is None else _check_threads(threads)
    except (ValueError, TypeError) as exc:
        print(f"engine bench: error: {exc}", file=sys.stderr)
        return 2
    print(_header(dev, threads), flush=True)
    t0 = time.perf_counter()
    rows = run(dev, quick=quick, threads=threads)
    print(format_table(rows))
    failed = [r.op for r in rows if r.ok is False]
    missing = [r.op for r in rows if r.ok is None]
    passed = sum(1 for r in rows if r.ok)
    print(f"{passed} passed, {len(failed)} failed, {len(missing)} not available "
          f"({time.perf_counter() - t0:.1f} s)" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    shaky = [r.op for r in rows if r.noisy]
    if shaky:
        print(f"warning: {len(shaky)} of {sum(r.speedup is not None for r in rows)} speedups are inside the noise "
              f"(interquartile range of the paired ratios wider than {NOISY_SPREAD}x: {', '.join(shaky)}); they "
              "are not results: rerun on a quieter machine", file=sys.stderr)
    return 1 if failed else 0
