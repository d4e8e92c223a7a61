"""Atomic writes: a directory (or a file) is built under a temporary name next to its destination, flushed to disk,
then renamed into place, so a reader (or a process killed half-way) sees the complete old one or the complete new
one, never a mixture.

    replace_dir(out, fill)     # fill(tmp) writes the files; tmp then replaces ``out`` as a whole
    write_file(path, data)     # bytes or str, the same way for one file

Swapping a directory that exists: on Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the two names in one step, so
``out`` is never absent. Where that call is missing (other systems, filesystems without it) the old directory is
renamed aside first and the new one renamed in (two renames: for an instant ``out`` does not exist; a process killed
between them leaves the old directory complete under ``.NAME.engine-old-PID-XXXX`` beside it). The displaced old
directory is then deleted. Temporary names start with ``.NAME.engine-tmp-PID-`` / ``.NAME.engine-old-PID-``; those
of dead processes are removed by the next ``replace_dir`` of the same destination.

``STEP_HOOK`` (tests only): called with the name of each step ("file:<name>" from the writer, then "synced",
"set aside" (two-rename fallback only), "swapped", "cleaned") so a test can kill the process at every point.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_path", "replace_dir", "step", "write_file"]

STEP_HOOK: Callable[[str], None] | None = None
_TMP, _OLD = ".engine-tmp-", ".engine-old-"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def step(name: str) -> None:
    """Report a step of a write to ``STEP_HOOK`` (fault-injection tests); writers call it after each file."""
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # no such call / not on this fs
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Delete temporary folders of earlier writes to ``out`` whose process has died."""
    for mark in (_TMP, _OLD):
        prefix = f".{out.name}{mark}"
        for p in out.parent.glob(f"{prefix}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def replace_dir(out: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a new directory with ``fill(tmp)`` and put it at ``out`` in place of whatever directory was there.

    ``out``'s parent is created when missing; a new ``out`` gets the usual permissions (umask), a replaced one
    keeps its mode. Every file ``fill`` leaves in ``tmp`` is flushed to disk before the swap. On any error (or
    interrupt) before the swap, ``out`` is untouched and the temporary folder is removed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.with_name(f".{out.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)  # mode 0o777 & ~umask, like any new folder
    try:
        if out.is_dir():
            os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                fsync_path(f)
        fsync_path(tmp)
        step("synced")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        os.rename(tmp, out)
        old = None
    elif _exchange(tmp, out):
        old = tmp  # now holds the previous contents
    else:
        old = out.with_name(f".{out.name}{_OLD}{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, old)
        step("set aside")
        os.rename(tmp, out)
    fsync_path(out.parent)
    step("swapped")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    step("cleaned")
    return out
