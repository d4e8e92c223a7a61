"""What a compiled sm_90 kernel looks like: ptxas's report (-v) and the machine code (cuobjdump -sass), summarised.

``ptxas_report(log)`` reads registers, stack frame, spill bytes and performance warnings (C7515: "wgmma.mma_async
instructions are serialized") from ptxas's verbose log. ``sass_report(sass)`` counts the instructions that decide
speed on Hopper, over the whole kernel and per iteration of its hot loop:

  HGMMA  wgmma (async warpgroup tensor-core MMA)     HMMA    mma.sync (the Ampere path)
  UTMALDG TMA tensor load (cp.async.bulk.tensor)     LDGSTS  cp.async (per-thread global -> shared copies)
  LDG128 16-byte global loads (LDG.E.128...)         STG128  16-byte global stores
  LOCAL  LDL/STL (spilled registers)                 WAITS   WARPGROUP.DEPBAR (waits for wgmma results)

The hot loop is the innermost loop (a backward branch) with the most tensor-core instructions, else the longest
one. ``table(rows)`` formats results as a compact text table for review. Pure text processing: no GPU, no Triton.
"""
from __future__ import annotations

import re

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_BRA_TARGET = re.compile(r"0x([0-9a-f]+)")


def ptxas_report(log: str) -> dict:
    """Registers, stack frame and spill bytes, and the warnings, from ``ptxas -v`` output for one kernel."""
    out = {"regs": None, "stack": 0, "spill_stores": 0, "spill_loads": 0, "warnings": []}
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["stack"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    for line in log.splitlines():
        if "warning" in line.lower() or "Performance Loss" in line:
            out["warnings"].append(re.sub(r"^\S*ptxas\S*\s*", "", line.strip()))
    return out


def _classes(op: str) -> list[str]:
    """The counters an opcode (with its modifiers, e.g. LDG.E.128.CONSTANT) adds to."""
    base = op.split(".")[0]
    mods = op.split(".")[1:]
    if base == "HGMMA":
        return ["hgmma"]
    if base == "HMMA":
        return ["hmma"]
    if base in ("UTMALDG", "UBLKCP"):
        return ["tma"]
    if base == "LDGSTS":
        return ["ldgsts", "ldgsts128"] if "128" in mods else ["ldgsts"]
    if base == "LDG":
        return ["ldg", "ldg128"] if "128" in mods else ["ldg"]
    if base == "STG":
        return ["stg", "stg128"] if "128" in mods else ["stg"]
    if base in ("LDL", "STL"):
        return ["local"]
    if base == "FFMA":
        return ["ffma"]
    if op.startswith("WARPGROUP.DEPBAR"):
        return ["waits"]
    return []


COUNTERS = ("hgmma", "hmma", "tma", "ldgsts", "ldgsts128", "ldg", "ldg128", "stg", "stg128", "local", "ffma", "waits")


def sass_report(sass: str) -> dict:
    """Instruction counts of one kernel's SASS (``cuobjdump -sass``): {"all": counts, "loop": counts or None,
    "loops": number of innermost loops}. Counts are keyed by ``COUNTERS`` plus "instrs"."""
    instrs = []  # (address, opcode, operands)
    for line in sass.splitlines():
        m = _INSTR.match(line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(3), m.group(4)))

    def count(body):
        c = dict.fromkeys(COUNTERS, 0)
        for _, op, _ in body:
            for k in _classes(op):
                c[k] += 1
        c["instrs"] = len(body)
        return c

    loops = []  # (start index, end index) of backward branches
    index = {addr: i for i, (addr, _, _) in enumerate(instrs)}
    for i, (addr, op, rest) in enumerate(instrs):
        if op.split(".")[0] == "BRA":
            t = _BRA_TARGET.search(rest)
            if t and int(t.group(1), 16) <= addr and int(t.group(1), 16) in index:
                loops.append((index[int(t.group(1), 16)], i))
    inner = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    bodies = [count(instrs[a:b + 1]) for a, b in inner]
    hot = max(bodies, key=lambda c: (c["hgmma"] + c["hmma"], c["instrs"]), default=None)
    return {"all": count(instrs), "loop": hot, "loops": len(inner)}


def _fmt_spill(r: dict) -> str:
    return "0" if not (r["spill_stores"] or r["spill_loads"]) else f"{r['spill_stores']}/{r['spill_loads']}"


def table(rows: list[dict]) -> str:
    """One line per compiled configuration: registers, spill bytes (stores/loads), shared memory (KiB),
    tensor-core instructions (HGMMA wgmma, HMMA mma.sync), how K/V reach shared memory (TMA loads, LDGSTS
    cp.async), 16-byte global loads / all global loads, and per hot-loop iteration: wgmma waits, LDGSTS, TMA and
    local-memory accesses; then ptxas's warning codes."""
    head = (f"{'configuration':<46} {'regs':>4} {'spill':>9} {'smem':>6} {'HGMMA':>5} {'HMMA':>4} {'TMA':>4} "
            f"{'LDGSTS':>6} {'LDG128':>9} | {'wait':>4} {'gsts':>4} {'tma':>3} {'lcl':>4} | warnings")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("ok") and r.get("regs") is None:
            lines.append(f"{r['name']:<46} FAILED: {str(r.get('error'))[:120]}")
            continue
        a, lp = r["sass"]["all"], r["sass"]["loop"]
        loop = (f"{lp['waits']:>4} {lp['ldgsts']:>4} {lp['tma']:>3} {lp['local']:>4}" if lp else
                f"{'-':>4} {'-':>4} {'-':>3} {'-':>4}")
        codes = sorted({c for w in r["warnings"] for c in re.findall(r"\((C\d+)\)", w)})
        smem = f"{r['shared'] / 1024:.1f}" if r.get("shared") is not None else "?"
        lines.append(
            f"{r['name'][:46]:<46} {r['regs']:>4} {_fmt_spill(r):>9} {smem:>6} {a['hgmma']:>5} {a['hmma']:>4} "
            f"{a['tma']:>4} {a['ldgsts']:>6} {a['ldg128']:>4}/{a['ldg']:<4} | {loop} | {','.join(codes)}"
            + ("" if r.get("ok") else f"  FAILED: {r.get('error')}"))
    return "\n".join(lines)
