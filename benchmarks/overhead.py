"""Per-call host overhead of every engine op against the torch op it mirrors, on tiny tensors.

    python benchmarks/overhead.py [--device cpu|cuda] [--rounds 41] [--calls 300] [--threads 1] [--json PATH]

Each op is called on tensors so small that the work is negligible, so the time per call is the host's: argument
checks, dispatch, and (on CUDA) the kernel launch. Engine and torch are timed in alternating blocks of ``--calls``
back-to-back calls (order swapped every round), so both see the same machine load; each round gives one per-call
time for each and their difference. The table reports medians over the rounds with the interquartile range
[q1, q3], and the median of the per-round differences (``over``: engine minus torch, the overhead engine adds).
``floor`` is the difference of the two sides' fastest blocks: noise on a shared VM only ever adds time, so the
minima are the steadiest estimate of each side's cost, and their difference of the overhead (it moves far less
between runs than the median, which carries the torch op's own jitter).

Times are this thread's CPU time on the CPU (``--clock thread``: a round that waits for a core shared with other
processes does not count the wait) and wall time on CUDA.

CPU: ``ENGINE_BACKEND=auto`` runs PyTorch's op behind engine's checks, so ``over`` is exactly the wrapper's cost.
CUDA: engine launches its Triton kernel; a round ends with one synchronize, so a time is wall time per call while
the host stays ahead of the GPU (true for tiny tensors): host time. ``--engine-fallback`` also times engine with
ENGINE_BACKEND=torch (PyTorch behind engine's checks, on the same device).

The mirrors: layer_norm -> F.layer_norm; add_layer_norm -> x + r then F.layer_norm; rms_norm / add_rms_norm -> the
same with F.rms_norm; gelu -> F.gelu; bias_gelu -> F.gelu(x + b); gelu_and_mul -> F.gelu(gate) * up on the two
halves; scaled_dot_product_attention -> F.scaled_dot_product_attention (with a key-padding mask in a second row);
varlen_attention (one sequence) -> F.scaled_dot_product_attention on its (1, H, N, D) views, its result viewed back
as (N, H, D); decode_attention (one new token, equal lengths) -> F.scaled_dot_product_attention on the filled part
of the cache; unpad_input / pad_input -> the same torch ops without engine's checks. With a relative position bias
(T5; scaled_dot_product_attention, decode_attention): the mirror is F.scaled_dot_product_attention with the bias
block it needs, gathered from the table once, outside the timing, as its float mask; engine gathers the block from
the (H, 2L - 1) table on every call, so ``over`` is its checks plus that gather.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F


def cases(device: str, dtype: torch.dtype) -> list[tuple[str, str, Callable[[], Any], Callable[[], Any]]]:
    """(op, shape label, engine call, torch call) on tiny random inputs."""
    from engine import ops

    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    x, r, w, b = rnd(8, 64), rnd(8, 64), rnd(64), rnd(64)
    xg = rnd(8, 128)  # [gate | up]
    q, k, v = rnd(1, 2, 8, 32), rnd(1, 2, 8, 32), rnd(1, 2, 8, 32)
    keep = torch.ones(1, 1, 1, 8, dtype=torch.bool, device=device)
    keep[..., -2:] = False
    pq, pk, pv = rnd(8, 2, 32), rnd(8, 2, 32), rnd(8, 2, 32)
    cu = torch.tensor([0, 8], dtype=torch.int32, device=device)
    q1, kc, vc = rnd(1, 2, 1, 32), rnd(1, 2, 16, 32), rnd(1, 2, 16, 32)
    lens = torch.tensor([9], dtype=torch.int32, device=device)
    table8, table16 = rnd(2, 15), rnd(2, 31)  # (H, 2L - 1) relative-position tables, L = 8 and 16
    pos = torch.arange(8, device=device)
    block8 = table8[:, pos[None, :] - pos[:, None] + 7][None]  # (1, H, 8, 8): table[h, L - 1 + j - i]
    block_decode = table16[None, :, None, 16 - 9:16]  # (1, H, 1, 9): the one query at position 8
    hidden = rnd(2, 8, 64)
    am = torch.ones(2, 8, dtype=torch.long, device=device)
    am[1, 5:] = 0
    packed, idx, cu2, _ = ops.unpad_input(hidden, am)

    def unpad_torch():
        keep2 = am.bool()
        seqlens = keep2.sum(dim=1, dtype=torch.int32)
        indices = torch.nonzero(keep2.flatten(), as_tuple=False).flatten()
        cus = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
        return hidden.reshape(-1, 64).index_select(0, indices), indices, cus, int(seqlens.max())

    def sdpa_packed():  # one packed (N, H, D) sequence through torch's SDPA (4-D views), back to (N, H, D)
        o = F.scaled_dot_product_attention(pq.transpose(0, 1)[None], pk.transpose(0, 1)[None],
                                           pv.transpose(0, 1)[None])
        return o[0].transpose(0, 1)

    def pad_torch():
        out = packed.new_zeros(16, 64)
        out.index_copy_(0, idx, packed)
        return out.reshape(2, 8, 64)

    return [
        ("layer_norm", "8x64", lambda: ops.layer_norm(x, (64,), w, b, 1e-5),
         lambda: F.layer_norm(x, (64,), w, b, 1e-5)),
        ("add_layer_norm", "8x64", lambda: ops.add_layer_norm(x, r, w, b, 1e-5),
         lambda: (F.layer_norm(s := x + r, (64,), w, b, 1e-5), s)),
        ("rms_norm", "8x64", lambda: ops.rms_norm(x, (64,), w, 1e-6), lambda: F.rms_norm(x, (64,), w, 1e-6)),
        ("add_rms_norm", "8x64", lambda: ops.add_rms_norm(x, r, w, 1e-6),
         lambda: (F.rms_norm(s := x + r, (64,), w, 1e-6), s)),
        ("gelu", "8x64", lambda: ops.gelu(x), lambda: F.gelu(x)),
        ("bias_gelu", "8x64 tanh", lambda: ops.bias_gelu(x, b, approximate="tanh"),
         lambda: F.gelu(x + b, approximate="tanh")),
        ("gelu_and_mul", "8x128 tanh", lambda: ops.gelu_and_mul(xg, "tanh"),
         lambda: F.gelu(xg[:, :64], approximate="tanh") * xg[:, 64:]),
        ("scaled_dot_product_attention", "1x2x8x32", lambda: ops.scaled_dot_product_attention(q, k, v),
         lambda: F.scaled_dot_product_attention(q, k, v)),
        ("scaled_dot_product_attention", "+ key-padding mask",
         lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=keep),
         lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep)),
        ("scaled_dot_product_attention", "+ relative bias",
         lambda: ops.scaled_dot_product_attention(q, k, v, scale=1.0, relative_position_bias=table8),
         lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=block8, scale=1.0)),
        ("varlen_attention", "8x2x32, 1 seq", lambda: ops.varlen_attention(pq, pk, pv, cu, cu, 8, 8), sdpa_packed),
        ("varlen_attention", "validate=False",
         lambda: ops.varlen_attention(pq, pk, pv, cu, cu, 8, 8, validate=False), sdpa_packed),
        ("decode_attention", "1x2x1x32, cache 16", lambda: ops.decode_attention(q1, kc, vc, lens),
         lambda: F.scaled_dot_product_attention(q1, kc[:, :, :9], vc[:, :, :9])),
        ("decode_attention", "+ relative bias",
         lambda: ops.decode_attention(q1, kc, vc, lens, 1.0, relative_position_bias=table16),
         lambda: F.scaled_dot_product_attention(q1, kc[:, :, :9], vc[:, :, :9], attn_mask=block_decode, scale=1.0)),
        ("unpad_input", "2x8x64", lambda: ops.unpad_input(hidden, am), unpad_torch),
        ("pad_input", "13x64 -> 2x8x64", lambda: ops.pad_input(packed, idx, 2, 8), pad_torch),
    ]


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}
_clock = time.perf_counter


def _block(fn: Callable[[], Any], calls: int, sync: Callable[[], None], backend: str | None) -> float:
    """Seconds per call of ``calls`` back-to-back calls (one sync at the end), with ENGINE_BACKEND=backend."""
    old = os.environ.get("ENGINE_BACKEND")
    if backend is not None:
        os.environ["ENGINE_BACKEND"] = backend
    try:
        t0 = _clock()
        for _ in range(calls):
            fn()
        sync()
        return (_clock() - t0) / calls
    finally:
        if backend is not None:
            if old is None:
                os.environ.pop("ENGINE_BACKEND")
            else:
                os.environ["ENGINE_BACKEND"] = old


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of ``xs``."""
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages (Linux), to print beside the numbers."""
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []


def write_json(path: str, meta: dict, rows: list) -> None:
    """{"meta": meta, "rows": rows} to ``path``, atomically (temp file + rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)


def measure(fns: dict[str, tuple[Callable[[], Any], str | None]], *, rounds: int, calls: int,
            cuda: bool) -> dict[str, dict]:
    """Per-call seconds of each (fn, ENGINE_BACKEND or None), in alternating blocks; returns {name: {"median", "q1",
    "q3", "min"}} plus "over:<name>" entries for each fn's per-round difference to the one named "torch" (its "min":
    the difference of the two fastest blocks, the floor estimate)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn, backend in fns.values():  # warm-up: compiles, caches, allocator growth
        _block(fn, max(20, calls // 5), sync, backend)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in (names if i % 2 == 0 else names[::-1]):
            times[n].append(_block(*fns[n][:1], calls, sync, fns[n][1]))
    out = {}
    for n, ts in times.items():
        q1, med, q3 = quartiles(ts)
        out[n] = {"median": med, "q1": q1, "q3": q3, "min": min(ts)}
        if n != "torch":
            d = [a - b for a, b in zip(ts, times["torch"])]
            q1, med, q3 = quartiles(d)
            out[f"over:{n}"] = {"median": med, "q1": q1, "q3": q3, "min": min(ts) - min(times["torch"])}
    return out


def _us(s: dict) -> str:
    return f"{s['median'] * 1e6:7.2f} [{s['q1'] * 1e6:6.2f}, {s['q3'] * 1e6:6.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--engine-fallback", action="store_true", help="also time engine with ENGINE_BACKEND=torch")
    parser.add_argument("--only", default="", help="comma-separated op names to run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="thread: this thread's CPU time (CPU default: immune to waiting for a busy core); "
                             "wall: elapsed time (CUDA default: includes the GPU sync)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    global _clock
    clock = args.clock or ("wall" if cuda else "thread")
    _clock = CLOCKS[clock]
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    import engine

    rows = []
    load = loadavg()
    print(f"engine {engine.__file__}  torch {torch.__version__}  device {args.device}  dtype {dtype}  "
          f"threads {args.threads}  clock {clock}  rounds {args.rounds} x {args.calls} calls  load {' '.join(load)}")
    head = (f"{'op':<30} {'case':<20} {'engine us [q1, q3]':>26} {'torch us [q1, q3]':>26} {'over us [q1, q3]':>26}"
            f" {'floor':>6}")
    if args.engine_fallback:
        head += f" {'fallback over us':>26}"
    print(head)
    only = {s for s in args.only.split(",") if s}
    for op, label, eng, ref in cases(args.device, dtype):
        if only and op not in only:
            continue
        fns = {"engine": (eng, None), "torch": (ref, None)}
        if args.engine_fallback:
            fns["fallback"] = (eng, "torch")
        res = measure(fns, rounds=args.rounds, calls=args.calls, cuda=cuda)
        line = (f"{op:<30} {label:<20} {_us(res['engine']):>26} {_us(res['torch']):>26} {_us(res['over:engine']):>26}"
                f" {res['over:engine']['min'] * 1e6:6.2f}")
        if args.engine_fallback:
            line += f" {_us(res['over:fallback']):>26}"
        print(line, flush=True)
        rows.append({"op": op, "case": label, **{k: v for k, v in res.items()}})
    if args.json:
        write_json(args.json, {"device": args.device, "dtype": str(dtype), "threads": args.threads, "clock": clock,
                               "rounds": args.rounds, "calls": args.calls, "torch": torch.__version__,
                               "engine": engine.__file__, "load": load}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
