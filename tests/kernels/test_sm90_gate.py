"""Static sm_90 gate: what every kernel configuration compiles to, checked without a GPU.

The builds are the AOT compile test's (conftest.py: every configuration the launchers can pick, specialised as at
launch). Read from ptxas's -v report and the SASS (engine.kernels.audit), per kernel family:

- no register spills (spill stores + loads), except the documented allowances below;
- no wgmma serialized by ptxas (its "wgmma.mma_async instructions are serialized" warnings, C7510-C7515);
- attention: wgmma (HGMMA), never mma.sync (HMMA), in every configuration, 16-bit and fp32 (three TF32 products)
  alike; at most ``MAX_WAITS`` wgmma waits per iteration of the hot loop; K/V tiles by TMA where the launch
  takes that path (no cp.async in the hot loop but for mask or relative-bias tiles), by cp.async where it takes
  the pointer path;
- attention backward (attention_bwd): wgmma, never mma.sync, in the dK/dV and dQ kernels and in their hot loops
  (the Delta preprocess has no product);
- memory-bound kernels (LayerNorm, GELU, decode): 16-byte global loads and stores (LDG/STG.128, or 16-byte
  cp.async for the decode K/V tiles);
- shared memory within the H200's 227 KiB (test_aot.py).

The table printed at the end of the session shows each number, so a change's effect on the compiled code is
visible in review. Run it for another Triton (e.g. 3.6, the H200 machine's) with that Triton installed:
``python -m pytest tests/kernels -q`` in its environment (README, "Static sm_90 gate").
"""
from __future__ import annotations

import pytest

from engine.kernels import aot

# Configuration name -> (spill bytes allowed (stores + loads), the Triton versions that need it, why). Keep short;
# every entry is a known cost, and an entry that stops being needed fails test_spill_allowances_are_used.
SPILL_ALLOWANCE: dict[str, tuple[int, tuple[str, ...], str]] = {
    "attn_fp32_d256_causal_m64n16w4s2": (
        5600, ("3.6", "3.9"),
        "fp32 at D=256: each TF32 product needs the query tile split in two in registers, 2 x 64 x 256 fp32 values "
        "over one warpgroup (256 registers per thread) before anything else; no tile shape avoids it (measured: "
        "3788 B under Triton 3.9, 5512 B under 3.6; README, fp32 attention)"),
    "attnbwd_bf16_d256_causal_kvm16n64w8s1_qm64n16w4s1/attn_bwd_dkdv": (
        1100, ("3.9",),
        "backward dK/dV at D=256: two 64 x 256 fp32 accumulators are 128 registers per thread over two warpgroups "
        "before the tiles of four products; the smallest wgmma tile (16 queries x 64 keys) spills 988 B under Triton "
        "3.9 (not measured under 3.6)"),
    "attnbwd_fp32_d64_causal_kvm16n64w4s2_qm64n32w4s2/attn_bwd_dkdv": (
        100, ("3.9",),
        "fp32 backward dK/dV at D=64: the three-TF32 split of four products' operands; the smallest wgmma tile "
        "(16 queries x 64 keys, one warpgroup) spills 88 B under Triton 3.9 (larger fp32 head dims run PyTorch)"),
    "attnbwd_bf16_d128_causal_varlen_kvm32n128w8s2_qm128n64w8s2/attn_bwd_dkdv": (
        64, ("3.9",),
        "varlen backward dK/dV at D=128: the dense build of the same tile takes 252 registers without spilling; "
        "the per-sequence offsets push it over (40 B under Triton 3.9)"),
    "attnbwd_bf16_d80_causal_varlen_kvm32n128w8s2_qm128n64w8s2/attn_bwd_dkdv": (
        64, ("3.9",), "as the D=128 varlen backward, with the head-dim mask of D=80 in a 128 tile (48 B under 3.9)"),
    "attn_bf16_d256_bidir_keypad_lse_dropout_m128n64w8s2": (
        300, ("3.9",),
        "dropout at D=256 (fwd.DROPOUT_CONFIGS): the Philox state of 32 scores per thread beside a 128 x 256 "
        "accumulator over two warpgroups; 252 B under Triton 3.9"),
    "attn_bf16_d256_bidir_addmask_m128n64w8s2": (
        16, ("3.6",), "a per-row mask at D=256 on 128 x 64 tiles: 16 B (255 registers) under Triton 3.6, 0 under 3.9"),
}


# Configuration name -> (the Triton versions, why) where ptxas's serialization of wgmma is a known, open cost.
SERIAL_ALLOWANCE: dict[str, tuple[tuple[str, ...], str]] = {
    "attnbwd_bf16_d64_bidir_addmask_kvm32n128w8s2_qm128n64w8s2/attn_bwd_dkdv": (
        ("3.9",),
        "backward dK/dV with a per-row additive mask: the transposed (keys x queries) mask tile read in the loop "
        "makes ptxas serialize the wgmma (C7515) whether it starts the product or is added to the scaled scores; "
        "boolean per-row masks and key-padding masks do not (open: load the tile in query-major order)"),
}


def _allowed(name: str) -> int:
    import triton

    bytes_, versions, _ = SPILL_ALLOWANCE.get(name, (0, (), ""))
    return bytes_ if any(triton.__version__.startswith(v) for v in versions) else 0


# wgmma waits per hot-loop iteration: one for the scores before the softmax (the P @ V product's result is
# waited for one iteration later); fp32 issues each dot as three TF32 products, six waits.
MAX_WAITS = {"16bit": 1, "fp32": 6}


def _rows(sm90_builds, family):
    rows = [r for r in sm90_builds["rows"][family] if r["ok"] or r["regs"] is not None]
    if not rows:
        pytest.fail(f"no {family} builds to check:\n{sm90_builds['stderr']}")
    return rows


def _failures(rows, check) -> list[str]:
    return [f"{r['name']}: {msg}" for r in rows for msg in [check(r)] if msg]


@pytest.mark.parametrize("family", aot.KERNEL_MODULES)
def test_no_spills_and_no_serialized_wgmma(sm90_builds, family):
    import triton

    def check(r):
        spilled = r["spill_stores"] + r["spill_loads"]
        allowed = _allowed(r["name"])
        if spilled > allowed:
            return f"{spilled} bytes of spills (allowed {allowed}), {r['regs']} registers"
        serial = [w for w in r["warnings"] if "serialized" in w]
        versions = SERIAL_ALLOWANCE.get(r["name"], ((), ""))[0]
        if serial and not any(triton.__version__.startswith(v) for v in versions):
            return f"ptxas: {serial[0]}"
        return None

    assert not (bad := _failures(_rows(sm90_builds, family), check)), "\n".join(bad)


def test_spill_allowances_are_used(sm90_builds):
    """An allowance for a configuration that no longer exists, or no longer spills under a Triton it names, must
    go (or lose that version)."""
    def family(name):  # the backward's builds are named attnbwd_...
        return "attention_bwd" if name.startswith("attnbwd") else "attention"

    built = {f for f in ("attention", "attention_bwd") if f in sm90_builds["rows"]}
    if not built:
        pytest.skip("attention builds not selected")
    spills = {r["name"]: r["spill_stores"] + r["spill_loads"] for f in built for r in sm90_builds["rows"][f]}
    names = [name for name in SPILL_ALLOWANCE if family(name) in built]
    missing = [name for name in names if name not in spills]
    stale = [name for name in names if _allowed(name) and not spills.get(name)]
    assert not missing, f"allowances for configurations that are not built: {missing}"
    assert not stale, f"allowances for configurations that do not spill under this Triton: {stale}"


@pytest.mark.parametrize("family", ["attention"])
def test_attention_uses_wgmma_and_tma(sm90_builds, family):
    def check(r):
        a, loop = r["sass"]["all"], r["sass"]["loop"]
        if a["hmma"] or not a["hgmma"]:
            return f"{a['hgmma']} wgmma (HGMMA) and {a['hmma']} mma.sync (HMMA): want wgmma only"
        if loop is None or not loop["hgmma"]:
            return "no loop with tensor-core instructions"
        kind = "fp32" if r["name"].startswith("attn_fp32") else "16bit"
        if loop["waits"] > MAX_WAITS[kind]:
            return f"{loop['waits']} wgmma waits per loop iteration (at most {MAX_WAITS[kind]})"
        if "_ptr" in r["name"]:
            if loop["tma"] or not loop["ldgsts"]:
                return f"pointer path: {loop['ldgsts']} cp.async and {loop['tma']} TMA loads per iteration"
        elif loop["tma"] < 2:
            return f"{loop['tma']} TMA loads per iteration (want K and V by TMA)"
        elif loop["ldgsts"] and "mask" not in r["name"] and "_bias" not in r["name"]:
            # a mask or (fp32) relative-bias tile may still arrive by cp.async
            return f"{loop['ldgsts']} cp.async per iteration beside TMA"
        return None

    assert not (bad := _failures(_rows(sm90_builds, family), check)), "\n".join(bad)


@pytest.mark.parametrize("family", ["attention_bwd"])
def test_attention_backward_uses_wgmma(sm90_builds, family):
    def check(r):
        if r["kernel"] == "_attn_bwd_preprocess":
            return None
        a, loop = r["sass"]["all"], r["sass"]["loop"]
        if a["hmma"] or not a["hgmma"]:
            return f"{a['hgmma']} wgmma (HGMMA) and {a['hmma']} mma.sync (HMMA): want wgmma only"
        if loop is None or not loop["hgmma"]:
            return "no loop with tensor-core instructions"
        return None

    assert not (bad := _failures(_rows(sm90_builds, family), check)), "\n".join(bad)


@pytest.mark.parametrize("family", ["norm", "gelu", "decode"])
def test_memory_bound_kernels_move_16_bytes_per_access(sm90_builds, family):
    def check(r):
        a = r["sass"]["all"]
        if r["kernel"] == "_decode_split_kernel":  # K/V tiles by 16-byte cp.async; the output is tiny
            return None if a["ldgsts128"] else f"{a['ldgsts']} cp.async, none of 16 bytes"
        if not a["ldg128"]:
            return f"no 16-byte global loads ({a['ldg']} loads)"
        if r["kernel"] != "_decode_combine_kernel" and not a["stg128"]:
            return f"no 16-byte global stores ({a['stg']} stores)"
        return None

    assert not (bad := _failures(_rows(sm90_builds, family), check)), "\n".join(bad)
