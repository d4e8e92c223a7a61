"""python -m tests.mutation [--area AREA ...] [--file PATH] [--budget MIN] [--all | --sample N] ...

Plants one bug at a time in a scratch copy (see runner.py), runs the tests mapped to the mutated file
(targets.py) with -x and a timeout, and writes results.json + report.md (report.py). Not collected by pytest:
run it on demand from the repository root. Exit status 0 when the run finished (whatever the score). AREA: one
of report.AREAS (kernels, csrc, ops, generate, models, corpus, hf); targets.py maps each file to its area.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

from tests.mutation import report, runner, targets
from tests.mutation.cpp_mutants import CPP_MUTANTS
from tests.mutation.operators import Mutant, find_mutants


def _sample(mutants: list[Mutant], n: int, seed: str) -> list[Mutant]:
    """``n`` mutants stratified by operator (round-robin over operators, random within each), in source order."""
    if n >= len(mutants):
        return mutants
    rng = random.Random(seed)
    by_op: dict[str, list[Mutant]] = defaultdict(list)
    for m in mutants:
        by_op[m.operator].append(m)
    for group in by_op.values():
        rng.shuffle(group)
    picked: list[Mutant] = []
    ops = sorted(by_op)
    while len(picked) < n:
        for op in ops:
            if by_op[op] and len(picked) < n:
                picked.append(by_op[op].pop())
    return sorted(picked, key=lambda m: m.start)


def _interleave(per_file: list[list]) -> list:
    """Round-robin over files, so a budget cut leaves every file sampled."""
    out, i = [], 0
    while any(i < len(f) for f in per_file):
        out += [f[i] for f in per_file if i < len(f)]
        i += 1
    return out


def _python_jobs(args) -> list[tuple[Mutant, str, tuple[str, ...]]]:
    per_file = []
    for path, (area, tests, n) in targets.PY_TARGETS.items():
        if (args.area and area not in args.area) or (args.file and path not in args.file):
            continue
        source = (runner.ROOT / path).read_text()
        ms = find_mutants(path, source, skip_names=frozenset(targets.SKIP.get(path, {})))
        if args.rerun is not None:
            ms = [m for m in ms if m.id in args.rerun]
        elif args.match:
            ms = [m for m in ms if any(s in m.id for s in args.match)]
        elif not args.all:
            ms = _sample(ms, args.sample or n, f"{args.seed}:{path}")
        per_file.append([(m, area, tests) for m in ms])
    return _interleave(per_file)


def _row(m, area: str, tests: tuple[str, ...], outcome: runner.Outcome | None) -> dict:
    is_cpp = not isinstance(m, Mutant)
    row = {"id": m.id, "area": area, "path": m.path, "function": "" if is_cpp else m.function,
           "operator": "cpp" if is_cpp else m.operator, "line": 0 if is_cpp else m.line,
           "original": m.old if is_cpp else m.original, "replacement": m.new if is_cpp else m.replacement,
           "tests": list(tests), "status": outcome.status if outcome else "not run",
           "seconds": round(outcome.seconds, 1) if outcome else 0.0, "detail": outcome.detail if outcome else ""}
    if is_cpp:
        row["why"] = m.why
    _explain(row)
    return row


def _explain(row: dict) -> None:
    """Attach targets.py's notes (equivalent / gpu-only) to a result row."""
    row.pop("equivalent", None)
    row.pop("gpu_only", None)
    row.pop("killed_elsewhere", None)
    if targets.EQUIVALENT.get(row["id"]):
        row["equivalent"] = targets.EQUIVALENT[row["id"]]
    if targets.GPU_ONLY.get(row["id"]):
        row["gpu_only"] = targets.GPU_ONLY[row["id"]]
    if targets.KILLED_ELSEWHERE.get(row["id"]):
        row["killed_elsewhere"] = targets.KILLED_ELSEWHERE[row["id"]]


def _merge(paths: list[Path], report_dir: Path) -> int:
    """One report from several runs: per mutant id, the last run that ran it wins (its equivalence note refreshed
    from targets.EQUIVALENT); the metadata lists every run."""
    merged: dict[str, dict] = {}
    metas = []
    for path in paths:
        data = json.loads(path.read_text())
        metas.append(data["meta"])
        for r in data["results"]:
            if r["status"] == "error" and r["detail"].startswith("pytest exit -"):  # older runs: a crash is a kill
                r.update(status="killed", detail=f"crashed (signal {r['detail'][13:].split(':')[0]})")
            if r["status"] != "not run" or r["id"] not in merged:
                _explain(r)
                merged[r["id"]] = r
    meta = dict(metas[-1], command="; ".join(m["command"] for m in metas), wall_s=sum(m.get("wall_s", 0) for m in metas),
                started=metas[0]["started"], budget_min=sum(m["budget_min"] for m in metas),
                checks=[c for m in metas for c in m.get("checks", [])])
    report.write(report_dir, meta, list(merged.values()))
    print(f"report: {report_dir / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[1])
    p.add_argument("--area", nargs="*", choices=report.AREAS, help="areas to mutate (default: all)")
    p.add_argument("--file", nargs="*", help="only these files (repository-relative, as in targets.py)")
    p.add_argument("--all", action="store_true", help="every mutant, no sampling")
    p.add_argument("--sample", type=int, help="mutants per Python file (default: targets.py's per-file number)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--budget", type=float, default=90.0, help="minutes; no new mutant starts after (default 90)")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout = factor x clean run")
    p.add_argument("--min-timeout", type=float, default=120.0, help="seconds, at least (default 120)")
    p.add_argument("--rerun", type=Path, help="a results.json: rerun only its survivors")
    p.add_argument("--resume", action="store_true", help="with --rerun: the mutants it did not reach instead")
    p.add_argument("--match", nargs="*", help="only mutants whose id contains one of these strings (no sampling)")
    p.add_argument("--report", type=Path, default=runner.ROOT / "mutation-report", help="report directory")
    p.add_argument("-k", dest="keyword", help="pytest -k expression for every run (targeted checks of new tests)")
    p.add_argument("--merge", type=Path, nargs="*", help="results.json files, later ones overriding earlier ones "
                   "per mutant (e.g. a run, then a --rerun after new tests): write their combined report and exit")
    p.add_argument("--list", action="store_true", help="print the selected mutants and exit")
    p.add_argument("--keep-scratch", action="store_true", help="leave the scratch copy (for debugging)")
    args = p.parse_args(argv)
    if args.merge:
        return _merge(args.merge, args.report)
    if args.rerun is not None:
        old = json.loads(args.rerun.read_text())["results"]
        wanted = ("not run",) if args.resume else ("survived",)
        args.rerun = {r["id"] for r in old if r["status"] in wanted}
    t_start = time.monotonic()
    jobs = _python_jobs(args)
    cpp = [] if (args.area and "csrc" not in args.area) or args.file else list(CPP_MUTANTS)
    if args.rerun is not None:
        cpp = [m for m in cpp if m.id in args.rerun]
    elif args.match:
        cpp = [m for m in cpp if any(s in m.id for s in args.match)]
    if args.list:
        for m, area, tests in jobs:
            print(f"{area:9} {m.path}:{m.line} {m.operator:7} {m.original[:60]!r} -> {m.replacement[:60]!r}")
        for m in cpp:
            print(f"csrc      {m.id}: {m.why}")
        print(f"{len(jobs)} Python mutants, {len(cpp)} C++ mutants", file=sys.stderr)
        return 0

    meta = {"command": "python -m tests.mutation " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_min": args.budget,
            "load": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else "?",
            "skipped": targets.SKIP, "checks": []}
    results = [_row(m, a, t, None) for m, a, t in jobs] + [_row(m, "csrc", targets.CPP_TESTS, None) for m in cpp]
    deadline = t_start + args.budget * 60
    extra = ("-k", args.keyword) if args.keyword else ()
    scratch = runner.Scratch(keep=args.keep_scratch)
    try:
        print(f"scratch copy: {scratch.dir}", flush=True)
        meta["checks"] = runner.check_scratch(scratch)
        print("\n".join(meta["checks"]), flush=True)
        clean_s: dict[str, float] = {}

        def timeout_for(tests: tuple[str, ...]) -> float:
            """factor x the clean run time of ``tests``; each test file's clean run (which must pass) runs once."""
            for f in tests:
                if f not in clean_s:
                    clean = scratch.pytest((f,), 3600, extra=extra)
                    if extra and clean.status == "error" and clean.detail.startswith("pytest exit 5"):
                        clean_s[f] = 0.0  # -k selects none of this file's tests: it judges nothing in this run
                        meta["checks"].append(f"no test of {f} matches -k {args.keyword!r}: it judges nothing")
                        print(meta["checks"][-1], flush=True)
                        continue
                    if clean.status != "survived":
                        raise RuntimeError(f"the unmutated tests fail in the copy: {f}: {clean.detail}")
                    clean_s[f] = clean.seconds
                    meta["checks"].append(f"clean run of {f}: {clean.seconds:.0f} s")
                    print(meta["checks"][-1], flush=True)
            return max(args.min_timeout, args.timeout_factor * sum(clean_s[f] for f in tests))

        for i, (m, area, tests) in enumerate(jobs):
            if time.monotonic() > deadline:
                break
            limit = timeout_for(tests)
            with scratch.mutated(m.path, m.apply(scratch.scratch_path(m.path).read_text())):
                outcome = scratch.pytest(tests, limit, extra=extra)
            results[i] = _row(m, area, tests, outcome)
            print(f"[{i + 1}/{len(results)}] {outcome.status:8} {outcome.seconds:6.1f}s {m.path}:{m.line} "
                  f"{m.operator} {m.original[:50]!r} -> {m.replacement[:50]!r} {outcome.detail[:80]}", flush=True)
            meta["wall_s"] = time.monotonic() - t_start
            report.write(args.report, meta, results)
        for j, m in enumerate(cpp):
            i = len(jobs) + j
            if time.monotonic() > deadline:
                break
            limit = timeout_for(targets.CPP_TESTS)
            path = scratch.scratch_path(m.path)
            try:
                with scratch.mutated(m.path, m.apply(path.read_text())):
                    outcome = scratch.build_sampler(900)
                    if outcome.status == "built":
                        built = outcome.seconds
                        outcome = scratch.pytest(targets.CPP_TESTS, limit, extra=extra)
                        outcome.seconds += built
            finally:
                scratch.restore_sampler()
            results[i] = _row(m, "csrc", targets.CPP_TESTS, outcome)
            print(f"[{i + 1}/{len(results)}] {outcome.status:8} {outcome.seconds:6.1f}s {m.id} {outcome.detail[:80]}",
                  flush=True)
            meta["wall_s"] = time.monotonic() - t_start
            report.write(args.report, meta, results)
    finally:
        meta["wall_s"] = time.monotonic() - t_start
        report.write(args.report, meta, results)
        scratch.close()
    print(f"report: {args.report / 'report.md'} ({meta['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
