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
"""
from __future__ import annotations

import importlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine import backend

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
class Case:
    """One op check: ``engine()`` and ``torch()`` give outputs compared against ``reference()`` (float64)."""

    op: str
    shape: str
    dtype: torch.dtype
    engine: Callable[[], Any] | None
    torch: Callable[[], Any]
    reference: Callable[[], Any]
    tensors: tuple = ()
    note: str = ""
    backend: str | None = None  # fixed backend name for ops that do not dispatch through engine.backend


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


def _op(name: str) -> Callable | None:
    try:
        ops = importlib.import_module("engine.ops")
    except Exception:
        return None
    return getattr(ops, name, None)


def _sampling_probs() -> Callable | None:
    try:
        mod = importlib.import_module("engine.sampling")
    except Exception:
        return None
    return getattr(mod, "probs", None)


def _sizes(device: torch.device, quick: bool) -> dict[str, tuple]:
    if device.type == "cuda":
        if quick:
            return {"rows": (4096, 1024), "elems": 1 << 22, "attn": (2, 8, 512, 64), "decode": (4, 12, 2048, 64),
                    "vocab": (8, 50257)}
        return {"rows": (16384, 4096), "elems": 1 << 26, "attn": (4, 16, 2048, 128), "decode": (16, 12, 8192, 64),
                "vocab": (64, 50257)}
    if quick:
        return {"rows": (64, 768), "elems": 1 << 14, "attn": (1, 2, 64, 32), "decode": (2, 2, 128, 32),
                "vocab": (2, 1000)}
    return {"rows": (1024, 1024), "elems": 1 << 20, "attn": (2, 4, 256, 64), "decode": (4, 12, 1024, 64),
            "vocab": (8, 50257)}


def _cases(device: torch.device, dtype: torch.dtype, quick: bool, seed: int) -> list[Case]:
    sz = _sizes(device, quick)
    gens: dict[torch.device, torch.Generator] = {}

    def rand(*shape: int, scale: float = 1.0, on: torch.device = device, dt: torch.dtype = dtype) -> torch.Tensor:
        g = gens.setdefault(on, torch.Generator(device=on).manual_seed(seed))  # made where the data lives
        return (torch.randn(*shape, generator=g, device=on, dtype=torch.float32) * scale).to(dtype=dt)

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float64)

    cases: list[Case] = []
    rows, hidden = sz["rows"]
    x, r = rand(rows, hidden), rand(rows, hidden)
    w, b = rand(hidden, scale=0.5) + 1, rand(hidden, scale=0.5)
    ln, aln = _op("layer_norm"), _op("add_layer_norm")
    cases.append(Case(
        "layer_norm", f"{rows}x{hidden}", dtype,
        (lambda: ln(x, (hidden,), w, b, 1e-5)) if ln else None,
        lambda: F.layer_norm(x, (hidden,), w, b, 1e-5),
        lambda: F.layer_norm(f64(x), (hidden,), f64(w), f64(b), 1e-5), (x, w, b)))

    def add_ln_torch() -> tuple[torch.Tensor, torch.Tensor]:
        s = x + r
        return F.layer_norm(s, (hidden,), w, b, 1e-5), s

    def add_ln_ref() -> tuple[torch.Tensor, torch.Tensor]:
        s = f64(x) + f64(r)
        return F.layer_norm(s, (hidden,), f64(w), f64(b), 1e-5), s

    cases.append(Case("add_layer_norm", f"{rows}x{hidden}", dtype,
                      (lambda: aln(x, r, w, b, 1e-5)) if aln else None, add_ln_torch, add_ln_ref, (x, r, w, b)))
    rms, arms = _op("rms_norm"), _op("add_rms_norm")
    cases.append(Case(
        "rms_norm", f"{rows}x{hidden}", dtype, (lambda: rms(x, (hidden,), w, 1e-6)) if rms else None,
        lambda: F.rms_norm(x, (hidden,), w, 1e-6), lambda: F.rms_norm(f64(x), (hidden,), f64(w), 1e-6), (x, w)))
    cases.append(Case(
        "add_rms_norm", f"{rows}x{hidden}", dtype, (lambda: arms(x, r, w, 1e-6)) if arms else None,
        lambda: (F.rms_norm(x + r, (hidden,), w, 1e-6), x + r),
        lambda: (F.rms_norm(f64(x) + f64(r), (hidden,), f64(w), 1e-6), f64(x) + f64(r)), (x, r, w)))

    n = sz["elems"]
    width = 3072 if n >= 3072 * 64 else 768
    g = rand(n // width, width, scale=2.0)
    gb = rand(width)
    gelu, bias_gelu = _op("gelu"), _op("bias_gelu")
    for approx in ("none", "tanh"):
        cases.append(Case(
            "gelu" if approx == "none" else "gelu tanh", f"{n // width}x{width}", dtype,
            (lambda a=approx: gelu(g, approximate=a)) if gelu else None,
            lambda a=approx: F.gelu(g, approximate=a),
            lambda a=approx: F.gelu(f64(g), approximate=a), (g,)))
    cases.append(Case("bias_gelu", f"{n // width}x{width}", dtype,
                      (lambda: bias_gelu(g, gb)) if bias_gelu else None,
                      lambda: F.gelu(g + gb), lambda: F.gelu(f64(g) + f64(gb)), (g, gb)))
    geglu, half = _op("gelu_and_mul"), width // 2  # g as [gate | up] halves

    def geglu_ref(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t[:, :half], approximate="tanh") * t[:, half:]

    cases.append(Case("gelu_and_mul tanh", f"{n // width}x{width}", dtype,
                      (lambda: geglu(g, "tanh")) if geglu else None, lambda: geglu_ref(g),
                      lambda: geglu_ref(f64(g)), (g,)))

    bsz, heads, seq, hd = sz["attn"]
    q, k, v = (rand(bsz, heads, seq, hd) for _ in range(3))
    sdpa = _op("scaled_dot_product_attention")
    for causal in (False, True):
        cases.append(Case(
            "sdpa causal" if causal else "sdpa", f"{bsz}x{heads}x{seq}x{hd}", dtype,
            (lambda c=causal: sdpa(q, k, v, is_causal=c)) if sdpa else None,
            lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c),
            lambda c=causal: F.scaled_dot_product_attention(f64(q), f64(k), f64(v), is_causal=c), (q, k, v)))

    bsz, heads, tmax, hd = sz["decode"]
    dq = rand(bsz, heads, 1, hd)
    kc, vc = rand(bsz, heads, tmax, hd), rand(bsz, heads, tmax, hd)
    lens = torch.randint(1, tmax + 1, (bsz,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    lens[0] = tmax  # one full row
    lens = lens.to(device)
    keep = (torch.arange(tmax, device=device)[None, :] < lens[:, None].long())[:, None, None, :]  # (B, 1, 1, Tmax)
    decode = _op("decode_attention")
    cases.append(Case(
        "decode_attention", f"{bsz}x{heads}x1x{hd} cache {tmax}", dtype,
        (lambda: decode(dq, kc, vc, lens)) if decode else None,
        lambda: F.scaled_dot_product_attention(dq, kc, vc, attn_mask=keep),
        lambda: F.scaled_dot_product_attention(f64(dq), f64(kc), f64(vc), attn_mask=keep), (dq, kc, vc)))

    bsz, vocab = sz["vocab"]
    logits = rand(bsz, vocab, scale=3.0, on=torch.device("cpu"), dt=torch.float32)  # the sampler runs on the CPU
    probs = _sampling_probs()

    def probs_ref(lg: torch.Tensor, temperature: float = 0.8, top_k: int = 50) -> torch.Tensor:
        scaled = lg / temperature
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        return torch.softmax(scaled.masked_fill(scaled < kth, -math.inf), dim=-1)

    cases.append(Case(
        "sampling.probs", f"{bsz}x{vocab} T=0.8 top_k=50", torch.float32,
        (lambda: probs(logits, temperature=0.8, top_k=50)) if probs else None,
        lambda: probs_ref(logits), lambda: probs_ref(f64(logits)), (logits,), note="cpu", backend="c++"))
    return cases


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
            return [_run_case(case, dev, reps) for case in _cases(dev, dtype, quick, seed)]
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
