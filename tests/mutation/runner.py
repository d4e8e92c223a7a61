"""Runs mutants in a scratch copy of the repository, never in the user's tree.

Scratch layout (a temporary directory): engine/ (copied, with the built sampler), engine/kernels/ (a copy of
kernels/, so ``engine.kernels`` resolves inside the copy: the editable install's finder maps it to the worktree's
kernels/ and would otherwise win), csrc/, tests/, setup.py, pyproject.toml, README.md. pytest runs there with the
copy first on PYTHONPATH and bytecode writing off (a mutant of the same size written in the same second must not
reuse a stale .pyc). Before any mutant runs, ``check_scratch`` proves the copy is what runs: every module's
``__file__`` lies in the copy, and a planted bug in the copy's GELU kernel fails a test there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("engine", "csrc", "tests", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutation-report")


@dataclasses.dataclass
class Outcome:
    status: str  # killed | survived | timeout | error
    seconds: float
    detail: str  # the first failing test, or the tail of the output


class Scratch:
    """A throwaway copy of the repository; ``scratch_path(rel)`` maps a repository path into it."""

    def __init__(self, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="engine-mutation-"))
        self.keep = keep
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, self.dir / name, ignore=_IGNORE, symlinks=True)
            elif src.exists():
                shutil.copy2(src, self.dir / name)
        shutil.copytree(ROOT / "kernels", self.dir / "engine" / "kernels", ignore=_IGNORE)
        self.sampler = sorted((self.dir / "engine").glob("_sampler*.so"))
        if not self.sampler:
            raise RuntimeError("engine/_sampler*.so is not built in the worktree: run `pip install -e .` first")
        self._saved_sampler = self.dir / "sampler-original.so"
        shutil.copy2(self.sampler[0], self._saved_sampler)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.dir), os.environ.get("PYTHONPATH", "")]),
                    "PYTHONDONTWRITEBYTECODE": "1"}

    def scratch_path(self, rel: str) -> Path:
        if rel.startswith("kernels/"):
            return self.dir / "engine" / rel
        return self.dir / rel

    @contextlib.contextmanager
    def mutated(self, rel: str, text: str) -> Iterator[None]:
        """``rel`` holds ``text`` inside the block; the copy's original is back afterwards (even on Ctrl-C)."""
        path = self.scratch_path(rel)
        original = path.read_text()
        path.write_text(text)
        try:
            yield
        finally:
            path.write_text(original)

    def restore_sampler(self) -> None:
        shutil.copy2(self._saved_sampler, self.sampler[0])

    def build_sampler(self, timeout: float) -> Outcome:
        """Rebuild engine._sampler from the copy's csrc/ in place (20-60 s on 2 cores)."""
        t0 = time.monotonic()
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--build-temp", "build/tmp"]
        proc = _run(cmd, self.dir, self.env, timeout)
        if proc is None:
            return Outcome("timeout", time.monotonic() - t0, "build timed out")
        ok = proc[0] == 0
        return Outcome("built" if ok else "error", time.monotonic() - t0, "" if ok else proc[1][-1500:])

    def pytest(self, tests: tuple[str, ...], timeout: float, *, extra: tuple[str, ...] = ()) -> Outcome:
        """Run ``tests`` (-x: stop at the first failure) in the copy; killed when a test fails."""
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider",
               "-o", "addopts=", "-W", "ignore", *extra, *tests]
        proc = _run(cmd, self.dir, self.env, timeout)
        seconds = time.monotonic() - t0
        if proc is None:
            return Outcome("timeout", seconds, f"no result within {timeout:.0f} s")
        code, out = proc
        if code == 0:
            return Outcome("survived", seconds, "")
        failed = [ln[7:].split(" - ")[0] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
        if code == 1 or (code == 2 and failed):
            return Outcome("killed", seconds, failed[0] if failed else out.strip().splitlines()[-1][:200])
        if code < 0:  # the test process died (a segfault on a wild pointer, an abort): the suite fails loudly
            return Outcome("killed", seconds, f"crashed (signal {-code})")
        return Outcome("error", seconds, f"pytest exit {code}: " + out[-600:])

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str] | None:
    """(exit code, stdout + stderr), or None after ``timeout`` s (the whole process group is killed)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    except BaseException:  # Ctrl-C: take the children down too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out


_ORIGINS = ("import os, engine, engine.ops, engine.kernels.gelu, engine.kernels.attention.decode, "
            "engine.kernels.attention.fwd, engine.kernels.norm, engine.generate, engine._sampler\n"
            "mods = [engine, engine.ops, engine.kernels.gelu, engine.kernels.attention.decode, "
            "engine.kernels.attention.fwd, engine.kernels.norm, engine.generate, engine._sampler]\n"
            "print('\\n'.join(os.path.realpath(m.__file__) for m in mods))")
PLANTED = ("kernels/gelu.py", "cdf = 0.5 * (1.0 + tl.erf(v * 0.7071067811865476))",
           "cdf = 0.5 * (1.0 + tl.erf(v * 0.7071067811865476)) * 1.001")
PLANTED_TEST = ("tests/ops/test_activation.py::test_gelu_matches_float64[3x33-float32-none]",)


def check_scratch(scratch: Scratch) -> list[str]:
    """Proof that mutants run in the copy: module origins, then a planted bug that must fail and a clean run that
    must pass. Returns the lines for the report; raises RuntimeError when the copy is not what runs."""
    proc = _run([sys.executable, "-c", _ORIGINS], scratch.dir, {**scratch.env, "TRITON_INTERPRET": "1"}, 300)
    if proc is None or proc[0] != 0:
        raise RuntimeError(f"importing engine from the scratch copy failed: {proc and proc[1][-2000:]}")
    root = os.path.realpath(scratch.dir)
    files = proc[1].strip().splitlines()
    outside = [f for f in files if not f.startswith(root + os.sep)]
    if outside:
        raise RuntimeError(f"these modules load from outside the scratch copy {root}: {outside}")
    rel, old, new = PLANTED
    source = scratch.scratch_path(rel).read_text()
    if old not in source:
        raise RuntimeError(f"the planted bug's anchor is gone from {rel}: update runner.PLANTED")
    with scratch.mutated(rel, source.replace(old, new)):
        planted = scratch.pytest(PLANTED_TEST, 600)
    clean = scratch.pytest(PLANTED_TEST, 600)
    if planted.status != "killed" or clean.status != "survived":
        raise RuntimeError(f"planted-bug check failed: planted -> {planted.status}, clean -> {clean.status} "
                           f"({planted.detail} {clean.detail})")
    return [f"modules load from the copy ({len(files)} checked, e.g. {files[2]})",
            f"planted bug in the copy's {rel} ({new.split('*')[-1].strip()} on the exact GELU) fails "
            f"{PLANTED_TEST[0]} ({planted.seconds:.1f} s); the clean copy passes it ({clean.seconds:.1f} s)"]
