"""The output directory of a corpus job: a manifest, the row ids, and one .npy file per shard.

    OUT/manifest.json      what was embedded (model, input and option hashes), the shard plan, totals at the end
    OUT/ids.npy            int64 (rows,): the input record number of each output row
    OUT/shard-00000.npy    float32 / float16 (rows in this shard, dim), rows in input order
    OUT/shard-00000.json   that shard's counts (rows, tokens, truncated, seconds); written just before its .npy
    OUT/.lock              held (flock) by the process that owns the manifest while the job runs

Every file is written to a temporary name in OUT, flushed to disk and renamed into place, so a file that
exists is complete. A shard counts as done when its .npy exists (it is renamed last); a job killed at any
moment leaves finished shards, possibly a sidecar without its .npy and temporary files, all of which the next
run handles (temporaries are removed, unfinished shards are embedded again). Files whose names engine does not
write are never touched.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

MANIFEST, IDS, LOCK = "manifest.json", "ids.npy", ".lock"
KIND = "engine-embeddings"
VERSION = 1
_OURS = re.compile(r"(manifest\.json|ids\.npy|shard-\d{5,}\.(npy|json)|\.lock|\..+\.tmp-\d+)")
_TMP = re.compile(r"\..+\.tmp-\d+")
_FAULT: dict[str, int] = {}


class OutputError(ValueError):
    """The output directory cannot be used as asked (names the directory and what to do)."""


def fault(point: str) -> None:
    """Test hook: ENGINE_CORPUS_FAULT="point:N" kills this process (SIGKILL) the N-th time ``point`` is hit,
    as a crash or ``kill -9`` would at that moment. Points: manifest-tmp (manifest written, not yet renamed),
    batch (inside a shard), shard-tmp (a shard's .npy written, not renamed), shard (a shard finished)."""
    spec = os.environ.get("ENGINE_CORPUS_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == point:
        _FAULT[point] = _FAULT.get(point, 0) + 1
        if _FAULT[point] == int(n or 1):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npy"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # not supported here (e.g. some network file systems): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None], *, point: str | None = None) -> None:
    """Write ``path`` through ``write(binary file)`` to a temporary name beside it, fsync, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    if point:
        fault(point)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_json(path: Path, obj: dict, *, point: str | None = None) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()), point=point)


def save_npy(path: Path, array: np.ndarray, *, point: str | None = None) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), point=point)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of an .npy file, or None when it is not a readable .npy file."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
        return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError):
        return None


class Store:
    """One output directory. ``prepare`` (one process) checks or creates it; any process writes shards."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self._lock = None

    # ---- the process that owns the manifest ------------------------------------------------------------
    def prepare(self, manifest: dict, ids: np.ndarray, *, overwrite: bool) -> list[int]:
        """Start or resume the job ``manifest`` describes; returns the shards still to embed.

        The manifest's "identity" (model, input and option hashes) must equal the one on disk to resume;
        otherwise OutputError unless ``overwrite``, which deletes engine's files (only those) first."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"output {str(out)!r} exists and is not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
            names = [n for n in os.listdir(out) if n != LOCK]
        except PermissionError as exc:
            raise OutputError(f"cannot write to output directory {str(out)!r}: {exc.strerror}") from None
        foreign = sorted(n for n in names if not _OURS.fullmatch(n))
        if MANIFEST not in names and foreign:
            raise OutputError(f"output directory {str(out)!r} is not empty and holds no engine manifest "
                              f"(e.g. {foreign[0]!r}); choose a new or empty directory")
        self._take_lock()  # before reading the state it acts on, and before changing anything
        names = [n for n in os.listdir(out) if n != LOCK]
        old = self.read_manifest() if MANIFEST in names else None
        if old is not None and old.get("identity") != manifest["identity"]:
            if not overwrite:
                raise OutputError(f"{str(out)!r} holds embeddings of {_differences(old, manifest)}: pass "
                                  "overwrite=True (--overwrite) to replace them, or choose another output")
        if old is not None and (old.get("identity") != manifest["identity"] or overwrite):
            self._clear(names)
        elif old is None:
            self._clear(names)  # only engine's names are here: leftovers of a start that never wrote a manifest
        for n in names:
            if _TMP.fullmatch(n) and (out / n).exists():
                (out / n).unlink()
        save_npy(out / IDS, ids)
        save_json(out / MANIFEST, manifest, point="manifest-tmp")
        return [k for k in range(len(manifest["shards"])) if not self.done(k, manifest)]

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            f = open(self.out / LOCK, "a+b")
        except PermissionError as exc:
            raise OutputError(f"cannot write to output directory {str(self.out)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise OutputError(f"another job is writing {str(self.out)!r} (its lock is held); wait for it or "
                              "choose another output") from None
        self._lock = f

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _clear(self, names: list[str]) -> None:
        """Delete engine's files: shards first, the manifest last (a crash in between leaves a manifest)."""
        for n in sorted((n for n in names if _OURS.fullmatch(n) and n not in (MANIFEST, LOCK)), reverse=True):
            (self.out / n).unlink(missing_ok=True)
        (self.out / MANIFEST).unlink(missing_ok=True)

    def finish(self, manifest: dict) -> dict:
        """Mark the job complete with totals summed from every shard's sidecar; returns the final manifest."""
        totals = {"rows": 0, "tokens": 0, "truncated": 0}
        for k in range(len(manifest["shards"])):
            if not self.done(k, manifest):
                raise OutputError(f"shard {k} of {str(self.out)!r} is missing at the end of the job")
            stats = json.loads((self.out / shard_name(k)).with_suffix(".json").read_text())
            for key in totals:
                totals[key] += int(stats[key])
        final = {**manifest, "complete": True, "totals": totals}
        save_json(self.out / MANIFEST, final)
        return final

    # ---- any process ----------------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        try:
            m = json.loads((self.out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutputError(f"cannot read {str(self.out / MANIFEST)!r}: {exc}") from None
        if not isinstance(m, dict) or m.get("kind") != KIND:
            raise OutputError(f"{str(self.out / MANIFEST)!r} is not an engine embeddings manifest")
        if m.get("version") != VERSION:
            raise OutputError(f"{str(self.out / MANIFEST)!r} has format version {m.get('version')!r}; this "
                              f"engine reads version {VERSION}")
        return m

    def done(self, k: int, manifest: dict) -> bool:
        """Shard k is finished: its .npy and sidecar exist and the .npy has the planned shape and dtype."""
        path = self.out / shard_name(k)
        if not path.exists() or not path.with_suffix(".json").exists():
            return False
        rows = manifest["shards"][k]["rows"]
        want = ((rows, manifest["dim"]), np.dtype(manifest["identity"]["options"]["output_dtype"]))
        if npy_header(path) != want:
            raise OutputError(f"{str(path)!r} is not the shard this job planned (expected shape {want[0]} "
                              f"{want[1]}); pass --overwrite to embed everything again")
        return True

    def write_shard(self, k: int, vectors: np.ndarray, stats: dict) -> None:
        """Commit shard k: its sidecar, then its .npy (the rename that makes it done)."""
        path = self.out / shard_name(k)
        save_json(path.with_suffix(".json"), {"shard": k, **stats})
        save_npy(path, vectors, point="shard-tmp")


def _differences(old: dict, new: dict) -> str:
    """Say what changed between two manifests' identities, for the refusal message."""
    a, b = old.get("identity") or {}, new["identity"]
    parts = []
    if a.get("model_sha256") != b["model_sha256"]:
        parts.append(f"another model (sha256 {str(a.get('model_sha256'))[:12]}..., now {b['model_sha256'][:12]}...)")
    if a.get("input_sha256") != b["input_sha256"]:
        parts.append(f"another input (sha256 {str(a.get('input_sha256'))[:12]}..., now {b['input_sha256'][:12]}...)")
    oa, ob = a.get("options") or {}, b["options"]
    changed = [f"{k} {oa.get(k)!r} -> {ob.get(k)!r}" for k in sorted(set(oa) | set(ob)) if oa.get(k) != ob.get(k)]
    if changed:
        parts.append("other options (" + ", ".join(changed) + ")")
    return " and ".join(parts) or "another job"


def load_embeddings(out: str | os.PathLike, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (rows, dim), ids (rows,) int64 record numbers) of a finished corpus job's directory.

    mmap: memory-map the shards (the concatenation is still one copy; read shards yourself to avoid it).
    """
    store = Store(out)
    if not (store.out / MANIFEST).is_file():
        raise OutputError(f"{str(store.out)!r} holds no engine embeddings (no {MANIFEST})")
    m = store.read_manifest()
    if not m.get("complete"):
        raise OutputError(f"the job writing {str(store.out)!r} has not finished; run it again to complete it")
    parts = [np.load(store.out / s["file"], mmap_mode="r" if mmap else None) for s in m["shards"]]
    ids = np.load(store.out / IDS)
    vectors = np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
    if len(vectors) != len(ids):
        raise OutputError(f"{str(store.out)!r}: {len(vectors)} rows but {len(ids)} ids")
    return vectors, ids
