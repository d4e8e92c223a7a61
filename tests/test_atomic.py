"""engine/atomic.py on its own (convert's use of it: tests/test_convert.py): relative destinations, the two-rename
fallback wherever renameat2's exchange is missing, real renameat2 failures, which temporary folders of earlier
writes are removed (only a dead writer's), every file flushed before the swap, and write_file. Each result is read
back from the file system."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from engine import atomic


def tree(d: Path) -> dict[str, str]:
    """name -> contents of every file of a folder (what a reader would find there)."""
    return {p.name: p.read_text() for p in sorted(d.iterdir())}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.engine-"))


def fill_with(files: dict[str, str]):
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return fill


OLD, NEW = {"a": "old a", "b": "old b"}, {"a": "new a", "c": "new c"}


def old_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in OLD.items():
        (out / name).write_text(text)
    return out


def test_relative_destination(tmp_path, monkeypatch):
    """out given relative to the working directory (renameat2 resolves it against AT_FDCWD): made, then replaced."""
    monkeypatch.chdir(tmp_path)
    assert atomic.replace_dir("out", fill_with(OLD)) == Path("out")
    assert tree(tmp_path / "out") == OLD
    atomic.replace_dir(Path("out"), fill_with(NEW))
    assert tree(tmp_path / "out") == NEW and siblings(tmp_path / "out") == []
    atomic.replace_dir("deep/er/out", fill_with(NEW))  # missing parents are made
    assert tree(tmp_path / "deep" / "er" / "out") == NEW


def _renameat2_failing(err: int):
    def renameat2(*args):
        ctypes.set_errno(err)
        return -1
    return types.SimpleNamespace(renameat2=renameat2)


@pytest.mark.parametrize("where", ["not-linux", "no-renameat2", "ENOSYS", "EINVAL", "EOPNOTSUPP"])
def test_two_renames_where_exchange_is_missing(tmp_path, monkeypatch, where):
    """Another system, a C library without renameat2, a kernel or file system without RENAME_EXCHANGE: the old
    folder is renamed aside and the new one in; out ends with exactly the new files, nothing left beside it."""
    if where == "not-linux":
        monkeypatch.setattr(atomic, "sys", types.SimpleNamespace(platform="darwin"))
    else:
        lib = types.SimpleNamespace() if where == "no-renameat2" else _renameat2_failing(getattr(errno, where))
        monkeypatch.setattr(atomic.ctypes, "CDLL", lambda *a, **k: lib)
    steps = []
    monkeypatch.setattr(atomic, "STEP_HOOK", steps.append)
    out = old_out(tmp_path)
    atomic.replace_dir(out, fill_with(NEW))
    assert tree(out) == NEW and siblings(out) == []
    assert steps == ["synced", "set aside", "swapped", "cleaned"]


def test_exchange_errors_are_raised(tmp_path):
    """A renameat2 failure other than 'not supported here' (here: a missing path) is an OSError with its errno,
    not a silent fallback."""
    there = tmp_path / "there"
    there.mkdir()
    with pytest.raises(OSError) as e:
        atomic._exchange(tmp_path / "missing", there)
    assert e.value.errno == errno.ENOENT
    assert there.is_dir()


def test_only_dead_writers_temporary_folders_are_removed(tmp_path, monkeypatch):
    """Before a write, temporary folders of earlier writes to the same out are removed when their process is
    dead; those of a live process (this one, another one, one this user may not signal) and names that are not
    engine's stay, and no live process is signalled."""
    out = old_out(tmp_path)
    # default dispositions: a run under nohup would have the child ignore SIGHUP (os.kill(pid, 1) unseen)
    live = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                                 for s in (signal.SIGHUP, signal.SIGINT)])
    dead = subprocess.Popen(["true"])
    dead.wait()
    foreign = 4_000_000  # above Linux's pid_max: no such process; os.kill below answers as for another user's
    real_kill = os.kill

    def kill(pid, sig):
        if pid == foreign:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_kill(pid, sig)
    monkeypatch.setattr(os, "kill", kill)
    kept = [f".out.engine-tmp-{live.pid}-0a1b2c3d", f".out.engine-old-{live.pid}-0a1b2c3d",
            f".out.engine-tmp-{os.getpid()}-0a1b2c3d", f".out.engine-old-{foreign}-0a1b2c3d",
            ".out.engine-tmp-notapid", f".other.engine-tmp-{dead.pid}-0a1b2c3d"]
    gone = [f".out.engine-tmp-{dead.pid}-0a1b2c3d", f".out.engine-old-{dead.pid}-12345678"]
    try:
        for name in kept + gone:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text(name)
        atomic.replace_dir(out, fill_with(NEW))
        with pytest.raises(subprocess.TimeoutExpired):  # not signalled (a signal's effect is not immediate)
            live.wait(timeout=0.3)
    finally:
        live.kill()
        live.wait()
    assert tree(out) == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["out"])
    assert all(tree(tmp_path / name) == {"f": name} for name in kept)


def test_what_cannot_be_deleted_does_not_fail_the_write(tmp_path, monkeypatch):
    """Leftovers replace_dir cannot remove are left, never an error: a dead writer's leftover that is not a
    folder (write_file's temporary file of a path of the same name), the displaced old folder gone before its
    removal (another cleaner got there first); and fill's own error propagates whatever fill did to the folder."""
    out = old_out(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.engine-tmp-{dead.pid}-0a1b2c3d"
    stale.write_text("a file")

    def swapped(step):
        if step == "swapped":
            for p in siblings(out):
                if p != stale.name:
                    shutil.rmtree(tmp_path / p)
    monkeypatch.setattr(atomic, "STEP_HOOK", swapped)
    atomic.replace_dir(out, fill_with(NEW))
    assert tree(out) == NEW and siblings(out) == [stale.name]

    def fill(tmp):
        shutil.rmtree(tmp)
        raise ValueError("fill failed")
    with pytest.raises(ValueError, match="fill failed"):
        atomic.replace_dir(out, fill)
    assert tree(out) == NEW and siblings(out) == [stale.name]


def test_every_file_is_flushed_before_the_swap(tmp_path, monkeypatch):
    """Every file fill leaves in the folder, and the folder, are fsync'ed before the swap; the parent after it."""
    events = []
    real = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (events.append(Path(p).name), real(p)))
    monkeypatch.setattr(atomic, "STEP_HOOK", lambda s: events.append(s))

    def fill(tmp):
        fill_with(NEW)(tmp)
        (tmp / "sub").mkdir()
    out = old_out(tmp_path)
    atomic.replace_dir(out, fill)
    synced = events.index("synced")
    assert sorted(events[:synced - 1]) == sorted(NEW) and events[synced - 1].startswith(".out.engine-tmp-")
    assert events[synced + 1:] == [tmp_path.name, "swapped", "cleaned"]


def test_write_file(tmp_path, monkeypatch):
    """write_file: str (UTF-8) or bytes, replacing what was there, the file and its folder flushed, no temporary
    file left; data of another type is a TypeError that leaves the old file as it was and nothing beside it."""
    path = tmp_path / "f.json"
    flushed = []
    real = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (flushed.append(Path(p)), real(p)))
    atomic.write_file(path, "ünï")
    assert path.read_bytes() == "ünï".encode() and flushed[-1] == tmp_path and len(flushed) == 2
    atomic.write_file(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(TypeError):
        atomic.write_file(path, 12)
    assert path.read_bytes() == b"\x00\x01" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
