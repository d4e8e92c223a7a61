"""``python -m engine convert``: write a Hugging Face model folder in engine's format, atomically.

The output folder holds engine's config.json (with ``engine_format``), model.safetensors with engine's tensor names
and layouts, and the source's tokenizer files; engine/checkpoint.py reads it back (and reads the source).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine import atomic
from engine.checkpoint import _instantiate, _read, _resolve, model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "spiece.model")
ENGINE_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES)  # all that `convert` writes


def _engine_output(out: Path) -> str | None:
    """None when ``out`` is an earlier engine conversion that ``--force`` may replace, else why not."""
    entries = sorted(out.iterdir())
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries
               if e.name not in ENGINE_FILES or not e.is_file() or e.is_symlink()]
    if foreign:
        return f"holds files engine did not write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})"
    try:
        ours = "engine_format" in json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    return None if ours else "is not an engine conversion (no config.json with engine_format)"


def convert(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False,
            dtype: torch.dtype | str | None = None, progress: bool = True) -> Path:
    """Write ``hf_dir`` (a Hugging Face model folder) to ``out_dir`` in engine's format; returns out_dir.

    The output (engine's config.json, model.safetensors, the source's tokenizer files) is written into a
    temporary folder next to ``out_dir`` and renamed into place (engine/atomic.py): ``out_dir`` is always either
    what it was before or the complete new conversion, also when the process is killed half-way. A non-empty
    ``out_dir`` is refused unless ``force``; ``force`` replaces an earlier engine conversion as a whole (no file
    of it survives), and refuses a folder holding anything engine did not write (user files are never deleted).
    """
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool; got {type(force).__name__}")
    src = model_dir(hf_dir, name="HF_DIR")
    if not isinstance(out_dir, (str, os.PathLike)) or os.fspath(out_dir) in ("", b""):
        raise TypeError(f"OUT_DIR must be a non-empty str or os.PathLike; got {out_dir!r}")
    out = Path(os.fsdecode(out_dir))
    try:
        out = out.resolve()  # a symlinked OUT_DIR: write where it points
        exists, is_dir = out.exists(), out.is_dir()
    except OSError as exc:
        raise ValueError(f"OUT_DIR {str(out_dir)[:80]!r} cannot be used as a directory: {exc.strerror}") from None
    if out == src.resolve():
        raise ValueError("OUT_DIR must differ from HF_DIR (the source is read while the output is written)")
    if exists and not is_dir:
        raise FileExistsError(f"OUT_DIR {str(out)!r} exists and is not a directory")
    if is_dir and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"OUT_DIR {str(out)!r} is not empty; pass --force (force=True) to replace an "
                                  "earlier conversion there")
        why = _engine_output(out)
        if why is not None:
            raise FileExistsError(f"OUT_DIR {str(out)!r} {why}; --force only replaces an earlier engine "
                                  "conversion: move those files or choose another OUT_DIR")
    _, dtype = _resolve(None, dtype)
    cfg, source, converted = _read(src, torch.device("cpu"), name="HF_DIR")
    if converted:
        raise ValueError(f"{str(src)!r} is already in engine's format")
    _, state = _instantiate(cfg, source, converted, dtype, progress, contiguous=True)
    stored = next(iter(state.values())).dtype
    cfg = dataclasses.replace(cfg, dtype=str(stored).replace("torch.", ""))  # reloads in the stored dtype

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "engine_format": "1"})
        atomic.step("file:model.safetensors")
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        atomic.step("file:config.json")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
                atomic.step(f"file:{name}")

    return atomic.replace_dir(out, fill)


def convert_main(hf_dir: str, out_dir: str, *, force: bool = False, dtype: str | None = None) -> int:
    """``python -m engine convert`` entry point: 0 on success; 2 with one line on stderr for a user error (as
    every other command). The progress line is shown on a terminal only."""
    try:
        out = convert(hf_dir, out_dir, force=force, dtype=dtype, progress=sys.stderr.isatty())
    except (OSError, ValueError, TypeError) as exc:
        print(f"engine convert: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}", file=sys.stderr)
    return 0
