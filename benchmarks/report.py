"""The benchmark report: engine vs reference per group, as a text table, JSON, markdown and an attention plot.

Input is pytest-benchmark's results, either the live session objects (benchmarks/conftest.py prints the table at
the end of every ``pytest benchmarks/`` run) or a ``--benchmark-json`` file:

    python benchmarks/report.py BENCH.json [--ceilings CEILINGS.json] [--out DIR] [--results-md benchmarks/RESULTS.md]

Each benchmark becomes a row: its group, provider ("engine", "torch", "torch-flash", ...), median time, and the
rates the ``bench`` fixture put in extra_info (GB/s, TFLOP/s, fraction of the measured peak). The attention
fields (area, N, head dim, causal) come from extra_info keys "area", "n", "head_dim", "causal" when present,
else are parsed from the group name, e.g. "attention d64 causal N=1024".

In the summary, ``speedup`` = reference median / engine median: above 1 means engine is faster. Beside each
ratio the table gives its spread, [reference q1 / engine q3 - reference q3 / engine q1] from the two interquartile
ranges (per call), and marks it "noisy" when that range is wider than ``engine.bench.NOISY_SPREAD`` (1.5x): such a
ratio is not a result (a loaded machine), and a warning line says so; geometric means leave noisy ratios out.
The header gives the torch thread count the run was pinned to (benchmarks/conftest.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import math
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from engine.atomic import write_file
from engine.bench import NOISY_SPREAD, noisy

RATE_KEYS = ("TFLOP/s", "GB/s", "tokens/s")
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


def parse_group(group: str) -> dict[str, Any]:
    """Fields encoded in a group name: area (first word), n (``N=1024``), head_dim (``d64``, ``D=64``,
    ``hd64``), causal (words "causal" / "noncausal", "non-causal", "bidirectional", "full")."""
    out: dict[str, Any] = {"area": None, "n": None, "head_dim": None, "causal": None}
    words = group.replace(",", " ").split()
    if words:
        out["area"] = words[0].lower()
    m = re.search(r"\bN\s*=\s*(\d+)", group)
    if m:
        out["n"] = int(m.group(1))
    m = re.search(r"\b(?:d|hd|D\s*=\s*|head_dim\s*=\s*)(\d+)\b", group)
    if m:
        out["head_dim"] = int(m.group(1))
    lowered = {w.lower() for w in words}
    if lowered & {"noncausal", "non-causal", "bidirectional", "full", "causal=false"}:
        out["causal"] = False
    elif lowered & {"causal", "causal=true"}:
        out["causal"] = True
    return out


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    s = str(v).strip().lower()
    return True if s in ("1", "true", "yes", "causal") else False if s in ("0", "false", "no", "none", "") else None


def _as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def make_row(item: Any) -> dict[str, Any] | None:
    """One report row from a pytest-benchmark result (a session ``Metadata`` object or its JSON dict).
    Returns None for results without timing data (errored or disabled benchmarks)."""
    if not isinstance(item, dict):
        if getattr(item, "has_error", False) or getattr(item, "stats", None) is None:
            return None
        item = item.as_dict(include_data=False)
    stats = item.get("stats") or {}
    extra = dict(item.get("extra_info") or {})
    # Per call: the bench fixture may time several calls per round (CUDA) and records median_s per call.
    median = extra.get("median_s") or stats.get("median")
    if not isinstance(median, (int, float)) or median <= 0:
        return None
    params = item.get("params") or {}
    group = item.get("group") or item.get("name") or "?"
    row: dict[str, Any] = parse_group(group)
    row.update(group=group, name=item.get("name", "?"), median_s=float(median),
               provider=str(extra.get("provider") or params.get("provider") or "?"))
    for key, conv in (("area", str), ("n", _as_int), ("head_dim", _as_int), ("causal", _as_bool)):
        if extra.get(key) is not None:
            row[key] = conv(extra[key])
    for key in RATE_KEYS + ("frac_peak", "peak"):
        if extra.get(key) is not None:
            row[key] = extra[key]
    for key in ("q1", "q3", "min", "max"):  # per call (the bench fixture rescales multi-call rounds)
        value = extra.get(f"{key}_s", stats.get(key))
        if isinstance(value, (int, float)) and value > 0:
            row[f"{key}_s"] = float(value)
    row["extra"] = {k: v for k, v in extra.items() if k not in row and k != "provider"}
    return row


def make_rows(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [r for r in (make_row(i) for i in items) if r is not None]


def add_peak_fractions(rows: list[dict[str, Any]], ceilings: dict[str, Any] | None) -> None:
    """Fill ``frac_peak`` (and ``peak``) from measured ceilings where a row has a rate but no fraction yet."""
    if not ceilings:
        return
    for r in rows:
        if r.get("frac_peak") is not None:
            continue
        if r.get("TFLOP/s") and ceilings.get("matmul_TFLOP/s"):
            r["frac_peak"], r["peak"] = r["TFLOP/s"] / ceilings["matmul_TFLOP/s"], "matmul"
        elif r.get("GB/s") and ceilings.get("copy_GB/s"):
            r["frac_peak"], r["peak"] = r["GB/s"] / ceilings["copy_GB/s"], "copy"


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per group: engine's median and rate, and the speedup vs each reference provider."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for group in sorted(groups, key=_natural):
        members = groups[group]
        engine = [r for r in members if r["provider"].startswith("engine")]
        refs = [r for r in members if not r["provider"].startswith("engine")]
        entry: dict[str, Any] = {"group": group, "area": members[0].get("area"), "engine": None, "speedups": {}}
        if engine:
            best = min(engine, key=lambda r: r["median_s"])
            entry["engine"] = {k: best.get(k) for k in ("provider", "median_s", *RATE_KEYS, "frac_peak", "peak")}
            entry["spread"], entry["noisy"] = {}, []
            for ref in sorted(refs, key=lambda r: r["provider"]):
                name = ref["provider"]
                entry["speedups"][name] = ref["median_s"] / best["median_s"]
                if all(k in r for r in (ref, best) for k in ("q1_s", "q3_s")):
                    lo, hi = ref["q1_s"] / best["q3_s"], ref["q3_s"] / best["q1_s"]
                    entry["spread"][name] = (lo, hi)
                    if noisy(lo, hi):
                        entry["noisy"].append(name)
        else:
            fastest = min(members, key=lambda r: r["median_s"])
            entry["fastest"] = {"provider": fastest["provider"], "median_s": fastest["median_s"]}
        out.append(entry)
    return out


def geomean_speedups(summary: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, int]]:
    """(area, reference) -> (geometric-mean speedup, number of groups), noisy ratios left out."""
    acc: dict[tuple[str, str], list[float]] = {}
    for e in summary:
        for ref, s in e["speedups"].items():
            if ref not in e.get("noisy", ()):
                acc.setdefault((e["area"] or "?", ref), []).append(s)
    return {k: (math.exp(sum(map(math.log, v)) / len(v)), len(v)) for k, v in sorted(acc.items())}


def noise_warning(summary: list[dict[str, Any]]) -> str | None:
    """One line naming the ratios inside the noise, or None."""
    total = sum(len(e["speedups"]) for e in summary)
    bad = [f"{e['group']} vs {ref}" for e in summary for ref in e.get("noisy", ())]
    if not bad:
        return None
    return (f"warning: {len(bad)} of {total} speedups are inside the noise (interquartile spread wider than "
            f"{NOISY_SPREAD}x), not results: {'; '.join(bad[:8])}{'; ...' if len(bad) > 8 else ''}")


def _fmt_speedup(e: dict[str, Any], ref: str, s: float) -> str:
    spread = e.get("spread", {}).get(ref)
    if spread is None:
        return f"{ref} {s:.2f}x"
    return f"{ref} {s:.2f}x [{spread[0]:.2f}-{spread[1]:.2f}]" + (" noisy" if ref in e.get("noisy", ()) else "")


def _fmt_ms(s: float | None) -> str:
    return "-" if s is None else (f"{s * 1e3:.3f}" if s < 10 else f"{s * 1e3:.0f}")


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def _fmt_rate(e: dict[str, Any]) -> str:
    for key in RATE_KEYS:
        if e.get(key) is not None:
            return f"{_num(e[key])} {key}"
    return "-"


def table_rows(summary: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    head = ("group", "engine ms", "rate", "% peak", "speedup (ref ms / engine ms) [IQR spread]")
    lines = []
    for e in summary:
        eng = e["engine"]
        if eng is None:
            f = e["fastest"]
            lines.append((e["group"], "-", "-", "-", f"no engine result (fastest: {f['provider']} "
                                                   f"{_fmt_ms(f['median_s'])} ms)"))
            continue
        peak = f"{100 * eng['frac_peak']:.0f}% {eng['peak'] or ''}".strip() if eng.get("frac_peak") else "-"
        vs = ", ".join(_fmt_speedup(e, ref, s) for ref, s in e["speedups"].items()) or "no reference"
        lines.append((e["group"], _fmt_ms(eng["median_s"]), _fmt_rate(eng), peak, vs))
    return head, lines


def format_table(summary: list[dict[str, Any]], *, title: str | None = None) -> str:
    """Fixed-width text: one line per group, then geometric-mean speedups per area and reference."""
    head, lines = table_rows(summary)
    if not lines:
        return (title + "\n" if title else "") + "(no benchmark results)"
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    out = [title] if title else []
    out += [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*l) for l in lines]
    gm = geomean_speedups(summary)
    if gm:
        out.append("geo-mean speedup: " + "; ".join(f"{a} vs {ref} {g:.2f}x ({n})" for (a, ref), (g, n) in gm.items()))
    warning = noise_warning(summary)
    if warning:
        out.append(warning)
    return "\n".join(out)


def _command() -> str:
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    first = f"python -m {prog.parent.name}" if prog.name == "__main__.py" else prog.name
    return " ".join([first, *sys.argv[1:]])


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Date, Python, torch, triton, GPU and CUDA versions (what is importable), and the command line."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "command": _command(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["threads"] = torch.get_num_threads()
        env["cuda"] = torch.version.cuda
        env["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
        env["driver"] = _driver() if torch.cuda.is_available() else None
    except Exception as exc:  # pragma: no cover - torch is a dependency
        env["torch"] = f"unavailable: {exc}"
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def to_markdown(summary: list[dict[str, Any]], *, meta: dict[str, Any], ceilings: dict[str, Any] | None) -> str:
    lines = [f"Measured {meta.get('date', '?')} on {meta.get('device', '?')}; torch {meta.get('torch')} "
             f"({meta.get('threads', '?')} threads), triton {meta.get('triton')}, CUDA {meta.get('cuda')}, driver "
             f"{meta.get('driver')}, Python {meta.get('python')}.",
             f"Command: `{meta.get('command', '?')}`", ""]
    if ceilings:
        lines += [f"Ceilings (measured): copy {_num(ceilings['copy_GB/s'])} GB/s read+write, matmul "
                  f"{_num(ceilings['matmul_TFLOP/s'])} TFLOP/s ({ceilings.get('matmul_dtype', '?')} "
                  f"{ceilings.get('matmul_n', '?')}^3).", ""]
    head, rows = table_rows(summary)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    gm = geomean_speedups(summary)
    if gm:
        lines += ["", "Geometric-mean speedup: " + "; ".join(f"{a} vs {ref} {g:.2f}x over {n} groups"
                                                             for (a, ref), (g, n) in gm.items()) + "."]
    warning = noise_warning(summary)
    if warning:
        lines += ["", f"**{warning}**"]
    return "\n".join(lines) + "\n"


def plot_attention(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """FlashAttention-paper style plot: TFLOP/s vs N per provider, one panel per (head dim, causal).
    Returns the PNG path, or None when matplotlib is missing or there are no attention rates to plot."""
    pts = [r for r in rows if (r.get("area") or "").startswith("attention") and r.get("n") and r.get("TFLOP/s")]
    if not pts:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    panels = sorted({(r.get("head_dim") or 0, bool(r.get("causal"))) for r in pts})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (hd, causal) in zip(axes[0], panels):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in pts:
            if (r.get("head_dim") or 0, bool(r.get("causal"))) == (hd, causal):
                series.setdefault(r["provider"], []).append((r["n"], r["TFLOP/s"]))
        for provider in sorted(series):
            xs, ys = zip(*sorted(series[provider]))
            ax.plot(xs, ys, marker="o", label=provider, linewidth=2.5 if provider.startswith("engine") else 1.5)
        ax.set_xscale("log", base=2)
        ns = sorted({n for pts_ in series.values() for n, _ in pts_})
        ax.set_xticks(ns, [f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n) for n in ns])
        ax.set_ylim(bottom=0)
        ax.set_title(f"head dim {hd or '?'}, {'causal' if causal else 'non-causal'}")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    write_file(out, png.getvalue())
    return out


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], *, meta: dict[str, Any] | None = None,
                 ceilings: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write results.json, summary.md, summary.txt and attention.png (when possible) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = meta or environment()
    add_peak_fractions(rows, ceilings)
    summary = summarize(rows)
    written = {"json": out / "results.json", "md": out / "summary.md", "txt": out / "summary.txt"}
    doc = {"meta": meta, "ceilings": ceilings, "summary": summary, "rows": rows}
    write_file(written["json"], json.dumps(doc, indent=1, default=str) + "\n")
    write_file(written["md"], to_markdown(summary, meta=meta, ceilings=ceilings))
    write_file(written["txt"], format_table(summary) + "\n")
    png = plot_attention(rows, out / "attention.png")
    if png is not None:
        written["png"] = png
    return written


def update_results_md(path: str | Path, section: str) -> None:
    """Replace the text between the results markers of RESULTS.md with ``section`` (a measured summary.md)."""
    p = Path(path)
    text = p.read_text()
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} must contain the markers {RESULTS_START} and {RESULTS_END}")
    write_file(p, text[: start + len(RESULTS_START)] + "\n" + section.rstrip() + "\n" + text[end:])  # temp + rename


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="engine's benchmark report from pytest-benchmark JSON")
    parser.add_argument("bench_json", help="pytest --benchmark-json output, or a results.json written by this module")
    parser.add_argument("--ceilings", default=None, help="ceilings JSON from benchmarks/ceilings.py")
    parser.add_argument("--out", default=None, help="write results.json, summary.md/.txt and attention.png here")
    parser.add_argument("--results-md", default=None, help="also put the markdown table into this RESULTS.md")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.bench_json).read_text())
    saved = data.get("ceilings") or data.get("engine_ceilings")
    ceilings = json.loads(Path(args.ceilings).read_text()) if args.ceilings else saved
    if "rows" in data:  # our own results.json
        rows, meta = data["rows"], data.get("meta") or environment()
    else:  # pytest-benchmark's JSON; benchmarks/conftest.py adds engine_meta (GPU, versions, command)
        rows, meta = make_rows(data.get("benchmarks", [])), data.get("engine_meta")
        if not meta:  # not recorded: say so rather than describe the machine running this command
            meta = {"date": str(data.get("datetime", "?"))[:16].replace("T", " ") + " UTC",
                    "python": (data.get("machine_info") or {}).get("python_version"),
                    "device": "(not recorded)", "command": "(not recorded)"}
    add_peak_fractions(rows, ceilings)
    summary = summarize(rows)
    if args.out:
        for kind, p in write_report(args.out, rows, meta=meta, ceilings=ceilings).items():
            print(f"wrote {kind}: {p}")
    if args.results_md:
        update_results_md(args.results_md, to_markdown(summary, meta=meta, ceilings=ceilings))
        print(f"updated {args.results_md}")
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
