"""Every kernel configuration the launchers can pick compiles for Hopper (sm_90) and fits H200 shared memory.

Runs `python -m engine.kernels.aot` in a subprocess without TRITON_INTERPRET (interpreted kernels cannot be
compiled). Needs no GPU: Triton's compiler and its bundled ptxas run on the CPU.
"""
import json
import os
import subprocess
import sys

import pytest

from engine.kernels import aot

pytest.importorskip("triton")


@pytest.mark.parametrize("module", aot.KERNEL_MODULES)
def test_every_configuration_compiles_for_sm90(module):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.kernels.aot", module], capture_output=True, text=True, env=env, timeout=1500
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no configurations compiled for {module}:\n{proc.stderr[-3000:]}"
    failures = [r for r in rows if not r["ok"]]
    assert not failures, "\n".join(f"{r['name']} (warps={r['num_warps']}): {r['error']}" for r in failures)
    assert all(r["shared"] <= aot.H200_MAX_SHARED_BYTES for r in rows)
    assert proc.returncode == 0, proc.stderr[-3000:]
