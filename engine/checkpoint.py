"""Checkpoints: read Hugging Face or engine directories, remap names, load a model (engine/convert.py writes
engine's format).

Accepted directories (config.json plus weights, in this order of preference):
    model.safetensors | model.safetensors.index.json (shards) | pytorch_model.bin | pytorch_model.bin.index.json
A ``python -m engine convert`` directory holds engine's config.json and model.safetensors with engine's tensor
names and layouts (fused qkv, Linear-layout GPT-2 weights, tied weights stored once).

Loading is lazy (safetensors ``safe_open``, ``torch.load(mmap=True, weights_only=True)``): every name, shape and
size is checked against the model before any tensor data is read, then tensors are read one at a time
straight to the target device and dtype, and assigned into a model built on the meta device (no throw-away
initialisation), so peak host memory stays near one copy of the weights. Pickled code is never executed.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.backend import resolve_device
from engine.config import T5_FAMILIES, ModelConfig, load_config
from engine.models import Rename, build_model, hf_rename

_TIED = {"mlm.decoder", "lm_head.weight"}  # dropped silently when the model ties them to its embeddings
# Weights of another head (or a T5 decoder, for an encoder-only class) are dropped with a warning, not an error.
_HEAD_PREFIXES = ("mlm.", "nsp.", "qa.", "classifier.", "pooler.", "sop.", "decoder.")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
# safetensors' dtype names (the header's "dtype") -> torch dtypes
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def model_dir(path: object, *, name: str = "path") -> Path:
    """``path`` as an existing directory; TypeError / FileNotFoundError / ValueError naming ``name`` otherwise
    (never the current directory for "", never a raw OSError for a name the OS cannot take)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike (a model directory); got {type(path).__name__}")
    if os.fspath(path) in ("", b""):
        raise ValueError(f"{name} is empty; expected a model directory")
    p = Path(os.fsdecode(path))
    try:
        is_dir = p.is_dir()
    except OSError as exc:  # e.g. a name longer than the OS allows
        shown = str(p) if len(str(p)) <= 80 else str(p)[:77] + "..."
        raise ValueError(f"{name} {shown!r} cannot be used as a directory: {exc.strerror}") from None
    if not is_dir:
        raise FileNotFoundError(f"{name} {str(p)!r} is not a directory (expected a Hugging Face or engine model "
                                "folder)")
    return p


class TensorSource:
    """Lazy, read-only view of the tensors in one checkpoint directory: ``shape(name)`` and ``get(name)``."""

    def __init__(self, path: str | os.PathLike, *, device: torch.device) -> None:
        self.path = Path(path)
        self.device = device
        self._file_of: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        self.kind = ""
        p = self.path
        if (p / "model.safetensors").is_file():
            self.kind = "safetensors"
            self._add(p / "model.safetensors")
        elif (p / "model.safetensors.index.json").is_file():
            self.kind = "safetensors"
            self._add_index(p / "model.safetensors.index.json")
        elif (p / "pytorch_model.bin").is_file():
            self.kind = "bin"
            self._add(p / "pytorch_model.bin")
        elif (p / "pytorch_model.bin.index.json").is_file():
            self.kind = "bin"
            self._add_index(p / "pytorch_model.bin.index.json")
        else:
            raise FileNotFoundError(
                f"no weights in {str(p)!r}: expected model.safetensors, model.safetensors.index.json, "
                "pytorch_model.bin or pytorch_model.bin.index.json"
            )

    def _add_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index} is not a valid shard index (need a 'weight_map' object): {exc}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (index.parent / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{index.name} lists shard files that do not exist: {', '.join(missing)}")
        for f in files:
            self._add(index.parent / f)
        stray = sorted(set(weight_map) - set(self._file_of))
        if stray:
            raise ValueError(f"{index.name} maps tensors that are not in their shard files: {', '.join(stray[:10])}")

    def _add(self, file: Path) -> None:
        try:
            if self.kind == "safetensors":
                dev = self.device
                where = f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}" \
                    if dev.type == "cuda" else "cpu"
                handle = safe_open(str(file), framework="pt", device=where)
                names = list(handle.keys())
            else:
                try:
                    handle = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    handle = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
                if not isinstance(handle, dict) or not all(isinstance(v, torch.Tensor) for v in handle.values()):
                    raise ValueError("expected a flat dict of tensors (a state dict)")
                names = list(handle)
        except Exception as exc:  # safetensors / torch raise their own types for corrupt or truncated files
            raise ValueError(f"cannot read {file}: corrupt, truncated or not a {self.kind} checkpoint "
                             f"({type(exc).__name__}: {exc})") from None
        self._open[file] = handle
        for n in names:
            if n in self._file_of:
                raise ValueError(f"tensor {n!r} appears in both {self._file_of[n].name} and {file.name}")
            self._file_of[n] = file

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        h = self._open[self._file_of[name]]
        return tuple(h.get_slice(name).get_shape()) if self.kind == "safetensors" else tuple(h[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        h = self._open[self._file_of[name]]
        if self.kind == "safetensors":
            code = h.get_slice(name).get_dtype()
            if code not in _ST_DTYPES:
                raise ValueError(f"tensor {name!r} in {self._file_of[name]} has dtype {code}, which engine cannot "
                                 "load (expected a floating-point dtype: F32, F16, BF16 or F64)")
            return _ST_DTYPES[code]
        return h[name].dtype

    def get(self, name: str) -> torch.Tensor:
        file = self._file_of[name]
        h = self._open[file]
        try:
            t = h.get_tensor(name) if self.kind == "safetensors" else h[name]
        except Exception as exc:
            raise ValueError(f"cannot read tensor {name!r} from {file}: {type(exc).__name__}: {exc}") from None
        return t.to(self.device)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self._open)


class DictSource(TensorSource):
    """A TensorSource over tensors already in memory (e.g. a transformers model's state dict)."""

    def __init__(self, tensors: dict[str, torch.Tensor], *, device: torch.device) -> None:
        self.path, self.device, self.kind, self._tensors = Path("<state dict>"), device, "dict", tensors
        self._file_of, self._open = {n: self.path for n in tensors}, {}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name].detach().to(self.device)


def _plan(cfg: ModelConfig, source: TensorSource, converted: bool) -> dict[str, list]:
    """engine name -> [(part, source name, transpose, parts)]; raises ValueError naming every tensor the family
    does not know."""
    plan: dict[str, list] = {}
    aliases: dict[str, list] = {}
    unknown: list[str] = []
    for n in source.names():
        r = Rename(n) if converted else hf_rename(cfg, n)
        if r is None:
            unknown.append(n)
        elif r.name:
            (aliases if r.alias else plan).setdefault(r.name, []).append((r.part, n, r.transpose, r.parts))
    if unknown:
        raise ValueError(
            f"unexpected tensors for a {cfg.family} checkpoint ({len(unknown)}): {', '.join(sorted(unknown)[:20])}"
        )
    for name, srcs in aliases.items():
        plan.setdefault(name, srcs)
    return plan


def load_state_dict(cfg: ModelConfig, source: TensorSource, expected: dict[str, torch.Size], *,
                    converted: bool, dtype: torch.dtype | None, progress: bool = False,
                    contiguous: bool = False) -> dict[str, torch.Tensor]:
    """Read, remap and check every tensor ``expected`` (engine name -> shape) needs; returns them loaded.

    contiguous: make every tensor contiguous (always done off the CPU; convert needs it for saving).
    """
    plan = _plan(cfg, source, converted)
    surplus = sorted(n for n in plan if n not in expected and n not in _TIED)
    # Weights of another head of the same family (a pre-training checkpoint loaded as BertModel, say) are
    # dropped with a warning, as transformers does; surplus body weights (more layers than the config has)
    # mean the config does not describe this checkpoint: an error. Engine checkpoints must match exactly.
    heads = [n for n in surplus if n.startswith(_HEAD_PREFIXES)]
    body = [n for n in surplus if n not in heads]
    if (converted and surplus) or body:
        srcs = sorted(e[1] for n in (surplus if converted else body) for e in plan[n])
        raise ValueError(f"unexpected tensors in the checkpoint (no place for them in {cfg.architecture} as "
                         f"configured): {', '.join(srcs[:20])}")
    if heads:
        srcs = sorted(e[1] for n in heads for e in plan[n])
        warnings.warn(f"{cfg.architecture} does not use these checkpoint tensors: {', '.join(srcs[:20])}",
                      stacklevel=3)
    missing = [n for n in expected if n not in plan]
    problems = [f"{n} (no source tensor)" for n in missing]
    for name, shape in expected.items():
        srcs = plan.get(name)
        if not srcs:
            continue
        parts = sorted(e[0] for e in srcs)
        count = 1 if parts == [-1] else srcs[0][3]
        if parts != [-1] and parts != list(range(count)):
            found = [e[1] for e in srcs]
            need = ("several source tensors map to it" if -1 in parts else "needs query, key and value" if count == 3
                    else f"needs all {count} of its stacked source tensors")
            problems.append(f"{name} ({need}; found {found})")
            continue
        for part, src, transpose, _ in srcs:
            want = tuple(shape)
            if part >= 0:
                want = (want[0] // count,) + want[1:]
            if transpose:
                want = want[::-1]
            found = source.shape(src)
            if found != want:
                problems.append(f"{src} has shape {found}, expected {want}")
            kind = source.dtype(src)
            if not kind.is_floating_point:
                problems.append(f"{src} has dtype {str(kind).replace('torch.', '')}, expected a floating-point tensor")
    if problems:
        raise ValueError(f"checkpoint does not fit {cfg.architecture} ({len(problems)} problems): "
                         + "; ".join(problems[:20]))
    if dtype is None:  # the config's dtype (transformers' dtype="auto"), else the checkpoint's own
        if cfg.dtype is not None:
            if cfg.dtype not in _DTYPES:
                raise ValueError(f"config.json names dtype {cfg.dtype!r}, which engine does not compute in; pass "
                                 "dtype= (float32, float16, bfloat16 or float64)")
            dtype = _DTYPES[cfg.dtype]
        else:
            dtype = next((source.dtype(e[1]) for name in expected for e in plan[name]), torch.float32)
            if dtype not in _DTYPES.values():
                raise ValueError(f"the checkpoint stores {str(dtype).replace('torch.', '')} weights, which engine "
                                 "does not compute in; pass dtype= (float32, float16, bfloat16 or float64)")
    state: dict[str, torch.Tensor] = {}
    for i, (name, shape) in enumerate(expected.items()):
        pieces = []
        for _, src, transpose, _ in sorted(plan[name]):
            t = source.get(src)
            t = t.to(dtype) if t.is_floating_point() else t
            pieces.append(t.t() if transpose else t)
        t = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)
        # On the CPU a transposed GPT-2 weight stays a view of the mapped file (F.linear takes it as is): no copy.
        state[name] = t if t.device.type == "cpu" and not contiguous else t.contiguous()
        if progress:
            print(f"\rloading tensors {i + 1}/{len(expected)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return state


def _resolve(device: str | torch.device | None, dtype: torch.dtype | str | None) -> tuple[torch.device, Any]:
    dev = torch.device("cpu") if device is None else resolve_device(device)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or a torch.dtype; got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype is not None and dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be float32, float16, bfloat16 or float64; got {dtype!r}")
    return dev, dtype


def _read(path: str | os.PathLike, dev: torch.device, *, name: str = "path") -> tuple[ModelConfig, TensorSource, bool]:
    p = model_dir(path, name=name)
    cfg = load_config(p)
    converted = json.loads((p / "config.json").read_text(encoding="utf-8")).get("engine_format") is not None
    return cfg, TensorSource(p, device=dev), converted


def _instantiate(cfg: ModelConfig, source: TensorSource, converted: bool, dtype: Any, progress: bool,
                 contiguous: bool = False) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    plan = _plan(cfg, source, converted)
    with torch.device("meta"):
        model = build_model(cfg, with_pooler=("pooler.weight" in plan) if cfg.head == "base" else None,
                            with_lm_head="lm_head.weight" in plan)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = load_state_dict(cfg, source, expected, converted=converted, dtype=dtype, progress=progress,
                            contiguous=contiguous)
    return model, state


def _finish(model: torch.nn.Module, trainable: object) -> torch.nn.Module:
    """Eval mode; requires_grad off, or (``trainable``) on, each parameter in its own writable memory (loaded
    tensors may share a memory-mapped file or the source model's storage, which an optimizer must not write)."""
    if not isinstance(trainable, bool):
        raise TypeError(f"trainable must be True or False; got {type(trainable).__name__}")
    if trainable:
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
    model.requires_grad_(trainable)
    return model.eval()


def from_pretrained(path: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | str | None = None, progress: bool = False,
                    trainable: bool = False) -> torch.nn.Module:
    """Load a Hugging Face model directory or an ``engine convert`` directory as an engine model.

    device: where the weights go (default "cpu"); dtype: float32, float16 or bfloat16 (default: the
    checkpoint's). Returns an nn.Module in eval mode with requires_grad off; ``model(input_ids,
    attention_mask=None, token_type_ids=None)`` returns the main output of ``config.architecture``.
    trainable: parameters require grad (each in its own memory), ready for any torch optimizer; call
    ``model.train()`` for dropout (the config's probabilities) and ``model.eval()`` to turn it off.
    """
    dev, dtype = _resolve(device, dtype)
    cfg, source, converted = _read(path, dev)
    model, state = _instantiate(cfg, source, converted, dtype, progress)
    model.load_state_dict(state, strict=True, assign=True)
    return _finish(model, trainable)


def from_transformers(hf_model: torch.nn.Module, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | str | None = None, trainable: bool = False) -> torch.nn.Module:
    """An engine model with the weights of an in-memory transformers model (same checks and options as
    from_pretrained; ``trainable`` copies every parameter, so training one model never changes the other)."""
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(getattr(hf_model, "config", None), "to_dict"):
        raise TypeError(f"hf_model must be a transformers model (an nn.Module with a config); got "
                        f"{type(hf_model).__name__}")
    dev, dtype = _resolve(device, dtype)
    d = hf_model.config.to_dict()
    d["architectures"] = [type(hf_model).__name__]
    cfg = ModelConfig.from_hf(d)
    tensors = dict(hf_model.state_dict())
    head, emb = (getattr(hf_model, f"get_{k}_embeddings", lambda: None)() for k in ("output", "input"))
    if cfg.family in T5_FAMILIES and head is not None and emb is not None and head.weight is emb.weight:
        tensors.pop("lm_head.weight", None)  # tied: the head is the shared embedding (one parameter, as in HF)
    source = DictSource(tensors, device=dev)
    model, state = _instantiate(cfg, source, False, dtype, False, contiguous=True)
    model.load_state_dict(state, strict=True, assign=True)
    return _finish(model, trainable)
