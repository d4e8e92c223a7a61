"""The mutation report: results.json (every mutant and its outcome) and report.md (scores and survivors), both
written atomically (temp + rename) after every mutant, so an interrupted run still leaves a valid report."""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

AREAS = ("kernels", "csrc", "ops", "generate", "models", "corpus", "hf")
DETECTED = ("killed", "timeout")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def scores(results: list[dict]) -> dict[str, dict[str, int]]:
    """Per area (and "all"): counts per status; ``applied`` excludes mutants that did not build (error)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in results:
        for key in (r["area"], "all"):
            out[key][r["status"]] += 1
            if r["status"] == "survived" and r.get("equivalent"):
                out[key]["equivalent"] += 1
    return {k: dict(v) for k, v in out.items()}


def _score_line(area: str, c: dict[str, int]) -> str:
    applied = sum(c.get(s, 0) for s in ("killed", "timeout", "survived"))
    detected = sum(c.get(s, 0) for s in DETECTED)
    pct = f"{100 * detected / applied:.1f}%" if applied else "-"
    eq = c.get("equivalent", 0)
    pct_eq = f"{100 * detected / (applied - eq):.1f}%" if applied - eq else "-"
    return (f"| {area} | {applied} | {c.get('killed', 0)} | {c.get('timeout', 0)} | {c.get('survived', 0)} | "
            f"{eq} | {c.get('error', 0)} | {c.get('not run', 0)} | {pct} | {pct_eq} |")


def write(report_dir: Path, meta: dict, results: list[dict]) -> None:
    """results.json and report.md under ``report_dir``."""
    _atomic_write(report_dir / "results.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    sc = scores(results)
    lines = ["# Mutation check", "", f"Command: `{meta['command']}`", "",
             f"Started {meta['started']}; wall time {meta.get('wall_s', 0) / 60:.1f} min "
             f"(budget {meta['budget_min']} min); load at start {meta['load']}.", ""]
    lines += [f"- {c}" for c in meta.get("checks", [])]
    lines += ["", "| area | applied | killed | timeout | survived | equivalent | error (no build) | not run | "
              "score | score w/o equivalent |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_score_line(a, sc[a]) for a in (*AREAS, "all") if a in sc]
    per_file: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in results:
        per_file[r["path"]][r["status"]] += 1
    lines += ["", "| file | tests | killed | timeout | survived | error | not run |", "|---|---|---|---|---|---|---|"]
    for path, c in per_file.items():
        tests = next(r["tests"] for r in results if r["path"] == path)
        lines.append(f"| {path} | {', '.join(t.split('/')[-1] for t in tests)} | {c.get('killed', 0)} | "
                     f"{c.get('timeout', 0)} | {c.get('survived', 0)} | {c.get('error', 0)} | {c.get('not run', 0)} |")
    surv = [r for r in results if r["status"] == "survived"]
    lines += ["", f"## Survivors ({len(surv)})", ""]
    for r in surv:
        eq = f" -- equivalent: {r['equivalent']}" if r.get("equivalent") else ""
        eq += f" -- GPU only: {r['gpu_only']}" if r.get("gpu_only") else ""
        eq += f" -- killed outside the map: {r['killed_elsewhere']}" if r.get("killed_elsewhere") else ""
        lines.append(f"- `{r['path']}:{r['line']}` ({r['function']}, {r['operator']}) "
                     f"`{r['original'][:90]}` -> `{r['replacement'][:90]}`{eq}")
    errs = [r for r in results if r["status"] == "error"]
    if errs:
        lines += ["", f"## Errors ({len(errs)}: mutant did not build, or pytest could not run)", ""]
        lines += [f"- `{r['id']}`: {r['detail'][:200]!r}" for r in errs]
    skipped = meta.get("skipped", {})
    if skipped:
        lines += ["", "## Not mutated", ""]
        lines += [f"- `{path}`: {', '.join(f'`{n}`' for n in names)} -- {why}"
                  for (path, why), names in _group(skipped).items()]
    _atomic_write(report_dir / "report.md", "\n".join(lines) + "\n")


def _group(skipped: dict[str, dict[str, str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, names in skipped.items():
        for name, why in names.items():
            out[(path, why)].append(name)
    return out
