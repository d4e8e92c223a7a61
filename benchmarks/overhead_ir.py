"""Per-call host overhead as instruction counts (valgrind's callgrind): the same cases as benchmarks/overhead.py,
counted instead of timed.

    python benchmarks/overhead_ir.py [--calls 500] [--only op,...] [--json PATH]

On a shared VM the time of a 10 us call moves by 50% from run to run, so a change of 1 us in a wrapper cannot be
seen in overhead.py's medians. The instructions a call executes barely move: in two runs of unchanged code each
side's count agreed to within 2% and the difference to within ~500 instructions (~0.1 us). This script runs
overhead.py's CPU cases (fp32, one torch thread, ENGINE_BACKEND unset: auto, which on the CPU runs PyTorch's op
behind engine's checks) under callgrind and reports, per case, the instructions of one engine call, of one call of
the torch mirror, and their difference (``over``: what engine's wrapper adds). Instructions are not time (a cache
miss costs more than an add), and callgrind runs ~50x slower than the machine: use this to judge a change to a
wrapper, overhead.py for the microseconds.

How: the child process calls each side ``--calls`` times inside one ``functools.reduce`` (which no op calls),
after a warm-up; callgrind collects only inside ``functools_reduce`` and writes one dump each time it returns. The
dumps that record a call made exactly ``--calls`` times are the measured loops, engine then torch for each case. Needs
valgrind on PATH (Linux); the start-up under callgrind (importing torch) takes about two minutes.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (the cases, JSON output)

_TOGGLE = "functools_reduce"  # the C function of functools.reduce in CPython
_TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)
_PART = re.compile(r"\.(\d+)$")


def dump_totals(folder: str | Path, calls: int, prefix: str = "cg") -> list[int]:
    """The instruction totals of callgrind's dumps ``prefix.1``, ``prefix.2``, ... in ``folder``, in dump order,
    of those that record a call made exactly ``calls`` times (a measured loop; the reduce calls made while torch
    imports do not). A dump without a total counts 0."""
    parts = []
    mark = re.compile(rf"^calls={calls} ", re.M)
    for f in Path(folder).glob(f"{prefix}.*"):
        m = _PART.search(f.name)
        if m:
            text = f.read_text(errors="replace")
            if mark.search(text):
                t = _TOTAL.search(text)
                parts.append((int(m[1]), int(t[1]) if t else 0))
    return [total for _, total in sorted(parts)]


def per_call(totals: list[int], labels: list[tuple[str, str]], calls: int) -> list[dict]:
    """Pairs the measured loops' dump totals (engine, torch per case, as the child runs them) with the cases:
    [{"op", "case", "engine", "torch", "over"}] in instructions per call. Raises unless there are exactly
    2 x len(labels) of them, each holding at least one instruction per call."""
    need = 2 * len(labels)
    if len(totals) != need:
        raise RuntimeError(f"callgrind wrote {len(totals)} dumps of {calls}-call loops; the {len(labels)} cases "
                           f"need {need}")
    if min(totals) < calls:
        raise RuntimeError(f"a measured dump holds {min(totals)} instructions for {calls} calls: the loops did not "
                           f"run inside {_TOGGLE} (totals {totals})")
    rows = []
    for (op, case), eng, ref in zip(labels, totals[::2], totals[1::2]):
        rows.append({"op": op, "case": case, "engine": eng / calls, "torch": ref / calls, "over": (eng - ref) / calls})
    return rows


def chosen(only: set[str]) -> list[tuple]:
    """overhead.py's CPU fp32 cases (op, case, engine call, torch call) whose op is in ``only`` (all when empty), in
    the order the child runs them."""
    return [c for c in overhead.cases("cpu", torch.float32) if not only or c[0] in only]


def _child(calls: int, only: set[str]) -> None:
    """Under callgrind: each case's engine call, then its torch call, ``calls`` times inside one functools.reduce."""
    torch.set_num_threads(1)
    cases = chosen(only)
    for _, _, eng, ref in cases:  # warm-up outside the toggle: first-call caches, allocator growth
        for _ in range(max(50, calls // 5)):
            eng()
            ref()
    for _, _, eng, ref in cases:
        for fn in (eng, ref):
            functools.reduce(lambda acc, _: (fn(), acc)[1], range(calls), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per side and case (default 500)")
    parser.add_argument("--only", default="", help="comma-separated op names to run")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls must be >= 1; got {args.calls}")
    only = {s for s in args.only.split(",") if s}
    if args.child:
        _child(args.calls, only)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("overhead_ir: valgrind is not on PATH (apt install valgrind); use benchmarks/overhead.py for times",
              file=sys.stderr)
        return 2
    want = [(op, case) for op, case, _, _ in chosen(only)]
    if not want:
        print(f"overhead_ir: --only {args.only!r} names no case of benchmarks/overhead.py", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_BACKEND"}  # the default (auto), as users run it
    env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="overhead_ir.") as tmp:
        cmd = [valgrind, "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={_TOGGLE}",
               f"--dump-after={_TOGGLE}", f"--callgrind-out-file={tmp}/cg", sys.executable, __file__, "--child",
               "--calls", str(args.calls), "--only", args.only]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"overhead_ir: the run under callgrind failed ({run.returncode}):\n{run.stderr[-3000:]}",
                  file=sys.stderr)
            return 1
        rows = per_call(dump_totals(tmp, args.calls), want, args.calls)
    import engine

    print(f"engine {engine.__file__}  torch {torch.__version__}  cpu float32  1 thread  {args.calls} calls per side"
          f"  (instructions per call, callgrind)")
    print(f"{'op':<30} {'case':<20} {'engine':>10} {'torch':>10} {'over':>10}")
    for r in rows:
        print(f"{r['op']:<30} {r['case']:<20} {r['engine']:>10.0f} {r['torch']:>10.0f} {r['over']:>10.0f}")
    if args.json:
        overhead.write_json(args.json, {"calls": args.calls, "torch": torch.__version__, "engine": engine.__file__,
                               "unit": "instructions per call (callgrind)"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
