"""The sm_90 builds of every kernel configuration, compiled once per test session and shared by the AOT compile
test (test_aot.py) and the static gate (test_sm90_gate.py).

``python -m engine.kernels.aot`` runs in one subprocess without TRITON_INTERPRET (interpreted kernels cannot be
compiled), for the kernel families the selected tests need, on up to two processes. Needs no GPU: Triton's
compiler and its bundled ptxas / cuobjdump run on the CPU. The table of what was built (registers, spills,
shared memory, tensor-core and copy instructions) is printed at the end of the session, with the wall time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from engine.kernels import aot, audit

_FAMILIES = pytest.StashKey[set]()
_BUILDS = pytest.StashKey[dict]()
JOBS = max(1, min(2, os.cpu_count() or 1))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Remember which kernel families the selected tests ask for (after -k / -m deselection)."""
    config.stash[_FAMILIES] = {item.callspec.params["family"] for item in items
                               if "sm90_builds" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")}


@pytest.fixture(scope="session")
def sm90_builds(pytestconfig) -> dict:
    """{"rows": {family: [result dicts of engine.kernels.aot.compile_spec]}, "seconds": wall time, "stderr"}."""
    pytest.importorskip("triton")
    families = sorted(pytestconfig.stash.get(_FAMILIES, set()) or aot.KERNEL_MODULES)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is the default it keeps
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engine.kernels.aot", "-j", str(JOBS), *families],
                          capture_output=True, text=True, env=env, timeout=3600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    builds = {"rows": {f: [r for r in rows if r["module"] == f] for f in families},
              "seconds": time.perf_counter() - t0, "stderr": proc.stderr[-3000:], "returncode": proc.returncode}
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
    terminalreporter.write_line(f"{len(rows)} configurations compiled in {builds['seconds']:.0f} s wall "
                                f"({JOBS} processes)")
