"""The sm_90 builds of every kernel configuration, compiled once per test session and shared by the AOT compile
test (test_aot.py) and the static gate (test_sm90_gate.py).

``python -m engine.kernels.aot`` runs in one subprocess without TRITON_INTERPRET (interpreted kernels cannot be
compiled), for the kernel families the selected tests need, on up to two processes. Needs no GPU: Triton's
compiler and its bundled ptxas / cuobjdump run on the CPU. The build starts as soon as the tests are collected and
the tests that read it run last, so the compiles overlap the rest of the session (mostly one interpreter thread).
SASS reports of kernels whose machine code matches an entry of sass_memo.json are taken from it (see SASS_MEMO).
The table of what was built (registers, spills, shared memory, tensor-core and copy instructions) is printed at
the end of the session, with the wall time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from engine.kernels import aot, audit

_FAMILIES = pytest.StashKey[set]()
_BUILDS = pytest.StashKey[dict]()
JOBS = max(1, min(2, os.cpu_count() or 1))
# SASS reports by code hash (engine.kernels.aot.sass_key): a build whose code is unchanged skips cuobjdump (~0.8 s
# of CPU a build); every configuration still compiles in full. Refresh after kernel or Triton changes with
# ``python -m engine.kernels.aot -j 2 --sass-memo tests/kernels/sass_memo.json --update-sass-memo``.
SASS_MEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sass_memo.json")


_RUN = pytest.StashKey[tuple]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Remember which kernel families the selected tests ask for (after -k / -m deselection), start their build in
    the background, and move the tests that need it to the end of the session."""
    needing = [item for item in items if "sm90_builds" in getattr(item, "fixturenames", ())]
    config.stash[_FAMILIES] = {item.callspec.params["family"] for item in needing if hasattr(item, "callspec")}
    if needing:
        config.stash[_RUN] = _start(config)
        ids = {id(item) for item in needing}
        items[:] = [item for item in items if id(item) not in ids] + needing


def _start(config) -> tuple:
    """(process, stdout file, stderr file, start time, families) of the background build."""
    families = sorted(config.stash.get(_FAMILIES, set()) or aot.KERNEL_MODULES)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is the default it keeps
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files: a full pipe would stall it
    proc = subprocess.Popen([sys.executable, "-m", "engine.kernels.aot", "-j", str(JOBS), "--sass-memo", SASS_MEMO,
                             *families],
                            stdout=out, stderr=err, text=True, env=env)
    return proc, out, err, time.perf_counter(), families


def pytest_unconfigure(config):
    run = config.stash.get(_RUN, None)
    if run is not None and run[0].poll() is None:  # the session ended before its tests ran (-x, Ctrl-C)
        run[0].kill()
        run[0].wait()


@pytest.fixture(scope="session")
def sm90_builds(pytestconfig) -> dict:
    """{"rows": {family: [result dicts of engine.kernels.aot.compile_spec]}, "seconds": wall time, "stderr"}."""
    pytest.importorskip("triton")
    run = pytestconfig.stash.get(_RUN, None) or _start(pytestconfig)
    proc, out, err, t0, families = run
    try:
        proc.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out.seek(0)
    err.seek(0)
    rows = [json.loads(line) for line in out.read().splitlines() if line.startswith("{")]
    builds = {"rows": {f: [r for r in rows if r["module"] == f] for f in families},
              "seconds": time.perf_counter() - t0, "stderr": err.read()[-3000:], "returncode": proc.returncode}
    pytestconfig.stash[_BUILDS] = builds
    return builds


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    builds = config.stash.get(_BUILDS, None)
    if not builds:
        return
    import triton

    rows = [r for family in builds["rows"].values() for r in family]
    terminalreporter.section(f"sm_90 builds (triton {triton.__version__})")
    terminalreporter.write_line(audit.table(rows))
    memo = sum(1 for r in rows if r.get("sass_memo"))
    terminalreporter.write_line(f"{len(rows)} configurations compiled in {builds['seconds']:.0f} s wall "
                                f"({JOBS} processes, from collection on, beside the other tests); SASS of "
                                f"{len(rows) - memo} disassembled, {memo} unchanged kernels from {SASS_MEMO}")
