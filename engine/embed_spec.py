"""What an embedding is for a model folder: sentence-transformers' files read into an ``EmbeddingSpec``.

A sentence-transformers folder defines its embedding in files next to the weights: ``modules.json`` (the module
chain), ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``), ``1_Pooling/config.json`` (the
pooling modes), ``Dense`` modules (``2_Dense/config.json`` + weights: activation(linear(vector)), as sentence-T5 /
GTR folders have), a ``Normalize`` module (L2 norm) and ``config_sentence_transformers.json`` (a default prompt).
``embedding_spec`` reads them; a chain engine cannot reproduce exactly (an unknown module or pooling mode, a Dense
activation outside DENSE_ACTIVATIONS, a prompt left out of the pooling, ...) is refused with the file and field
rather than embedded differently. A folder without ``modules.json`` gets mean pooling, no normalisation and the
tokenizer's / model's max length.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
from pathlib import Path
from typing import Sequence

# sentence-transformers' Pooling modes, in the order it concatenates them when several pooling_mode_* flags are on
# (a pooling_mode list, as 6.x writes, is concatenated in its own order)
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# "pooler": the checkpoint's own pooler (tanh(dense(first token))), as transformers' pooler_output
POOLINGS = (*POOLING_MODES, "pooler")
_ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# a Dense module's activation_function (the torch.nn class sentence-transformers instantiates with its defaults)
DENSE_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "GELU": "gelu", "Sigmoid": "sigmoid",
                     "SiLU": "silu"}
_DENSE_KEYS = ("in_features", "out_features", "bias", "activation_function", "module_input_name",
               "module_output_name")
# the feature a Dense module must read and write for engine (it applies Dense modules to the pooled vector)
_SENTENCE_EMBEDDING = "sentence_embedding"


def positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is an integer >= 1 (Python's or numpy's; not a bool), else a ValueError (a wrong
    value) or TypeError (not an integer at all) naming ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


class EmbeddingConfigError(ValueError):
    """A sentence-transformers file that engine cannot follow exactly (names the file and the field)."""


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """A sentence-transformers Dense module: (B, in_features) -> activation(x @ W.T + b) (B, out_features), read
    from and written back to the sentence embedding (its config's module_input_name / module_output_name).

    path: its folder (config.json and model.safetensors or pytorch_model.bin with ``linear.weight`` (out, in)
    and, when ``bias``, ``linear.bias`` (out,)); activation: a value of DENSE_ACTIVATIONS."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """What turns a text into one vector.

    pooling: modes concatenated in this order (each adds ``hidden_size`` columns); dense: Dense modules applied
    in order to the pooled vector; normalize: L2 norm last;
    max_length: tokens per text, special tokens included (longer texts are truncated); lower_case: lower-case
    the text first; prompt: prepended to every text; model_dir: the folder holding the transformer's weights
    (a sentence-transformers Transformer module may live in a sub-folder); source: where this came from.
    """

    pooling: tuple[str, ...] = ("mean",)
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    max_length: int | None = None
    lower_case: bool = False
    prompt: str = ""
    model_dir: str = ""
    source: str = "defaults (no modules.json)"

    def describe(self) -> str:
        dense = "".join(f", Dense {d.in_features}->{d.out_features} {d.activation}" for d in self.dense)
        norm = ", L2-normalised" if self.normalize else ""
        return f"{'+'.join(self.pooling)} pooling{dense}{norm}, max {self.max_length} tokens"


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbeddingConfigError(f"cannot read {what} {str(path)!r}: {exc}") from None


def read_sentence_transformers(path: str | os.PathLike) -> dict | None:
    """The embedding fields a sentence-transformers folder defines, or None when it has no modules.json.

    Returns a dict with the keys of ``EmbeddingSpec`` that the files set (``max_length`` only when
    sentence_bert_config.json gives ``max_seq_length``). Raises EmbeddingConfigError for a module chain other
    than Transformer -> Pooling -> Dense* -> [Normalize], or a pooling or Dense setting engine does not implement.
    """
    root = Path(path)
    if not (root / "modules.json").is_file():
        return None
    modules = _read_json(root / "modules.json", "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise EmbeddingConfigError(f"{root / 'modules.json'} must be a list of objects with a 'type' string")
    kinds = []
    for i, m in enumerate(modules):
        kind = m["type"].rsplit(".", 1)[-1]
        if not m["type"].startswith("sentence_transformers.") or kind not in _ST_MODULES:
            raise EmbeddingConfigError(
                f"modules.json module {i} is {m['type']}, which engine does not implement (it runs Transformer "
                "-> Pooling -> Dense modules -> optional Normalize); its embeddings would differ from "
                "sentence-transformers'")
        kinds.append(kind)
    tail = kinds[2:-1] if kinds[-1:] == ["Normalize"] else kinds[2:]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Dense" for k in tail):
        raise EmbeddingConfigError(f"modules.json chains {' -> '.join(kinds)}; engine runs Transformer -> "
                                   "Pooling -> Dense modules -> optional Normalize")
    dense = tuple(_dense_from_config(root / m.get("path", "")) for m in modules if m["type"].endswith(".Dense"))
    out: dict = {"normalize": kinds[-1] == "Normalize", "model_dir": str(root / modules[0].get("path", "")),
                 "dense": dense,
                 "source": f"sentence-transformers ({root / 'modules.json'})"}
    sbert = Path(out["model_dir"]) / "sentence_bert_config.json"
    if sbert.is_file():
        cfg = _read_json(sbert, "sentence_bert_config.json")
        if not isinstance(cfg, dict):
            raise EmbeddingConfigError(f"{sbert} must hold a JSON object")
        msl = cfg.get("max_seq_length")
        if msl is not None:
            if not isinstance(msl, int) or isinstance(msl, bool) or msl < 1:
                raise EmbeddingConfigError(f"{sbert}: max_seq_length must be a positive integer; got {msl!r}")
            out["max_length"] = msl
        out["lower_case"] = bool(cfg.get("do_lower_case", False))
    pool_file = root / modules[1].get("path", "") / "config.json"
    pool = _read_json(pool_file, "pooling config") if pool_file.is_file() else {}
    if not isinstance(pool, dict):
        raise EmbeddingConfigError(f"{pool_file} must hold a JSON object")
    out["pooling"] = _pooling_from_config(pool, pool_file)
    if pool.get("include_prompt", True) is False:
        out["exclude_prompt"] = True
    st_cfg = root / "config_sentence_transformers.json"
    if st_cfg.is_file():
        cfg = _read_json(st_cfg, "config_sentence_transformers.json")
        name = cfg.get("default_prompt_name") if isinstance(cfg, dict) else None
        if name:
            prompts = cfg.get("prompts") or {}
            if not isinstance(prompts, dict) or not isinstance(prompts.get(name), str):
                raise EmbeddingConfigError(f"{st_cfg}: default_prompt_name {name!r} is not among its prompts")
            out["prompt"] = prompts[name]
    return out


def _dense_from_config(folder: Path) -> DenseSpec:
    """A Dense module's config.json -> DenseSpec (its weights are read by the Embedder)."""
    file = folder / "config.json"
    cfg = _read_json(file, "Dense config")
    if not isinstance(cfg, dict):
        raise EmbeddingConfigError(f"{file} must hold a JSON object")
    unknown = sorted(set(cfg) - set(_DENSE_KEYS))
    if unknown:
        raise EmbeddingConfigError(f"{file}: {', '.join(unknown)} not understood (engine reads "
                                   f"{', '.join(_DENSE_KEYS)})")
    sizes = {}
    for key in ("in_features", "out_features"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise EmbeddingConfigError(f"{file}: {key} must be a positive integer; got {v!r}")
        sizes[key] = v
    # sentence-transformers 6.x: the Dense reads features[module_input_name] (left out: "sentence_embedding") and
    # writes features[module_output_name] (null or left out: the input's name); engine runs it on the pooled vector
    names = {"module_input_name": cfg.get("module_input_name", _SENTENCE_EMBEDDING)}
    names["module_output_name"] = cfg.get("module_output_name")
    if names["module_output_name"] is None:
        names["module_output_name"] = names["module_input_name"]
    for key, v in names.items():
        if not isinstance(v, str) or v != _SENTENCE_EMBEDDING:
            raise EmbeddingConfigError(
                f"{file}: {key} must be {_SENTENCE_EMBEDDING!r} (engine applies Dense modules to the pooled "
                f"sentence embedding only); got {v!r}")
    bias = cfg.get("bias", True)
    if not isinstance(bias, bool):
        raise EmbeddingConfigError(f"{file}: bias must be true or false; got {bias!r}")
    act = cfg.get("activation_function")
    name = act.rsplit(".", 1)[-1] if isinstance(act, str) and act.startswith("torch.nn.") else None
    if name not in DENSE_ACTIVATIONS:
        raise EmbeddingConfigError(
            f"{file}: activation_function {act!r} is not one engine implements (torch.nn's "
            f"{', '.join(DENSE_ACTIVATIONS)})")
    return DenseSpec(str(folder), sizes["in_features"], sizes["out_features"], bias, DENSE_ACTIVATIONS[name])


def _pooling_from_config(pool: dict, file: Path) -> tuple[str, ...]:
    """sentence-transformers' Pooling config -> the modes in its concatenation order (default: mean).

    pooling_mode overrides the pooling_mode_* flags: a mode name (lower-cased, as sentence-transformers before 6.x
    did), or, as sentence-transformers 6.x writes several modes, a list (or tuple) of exact mode names, concatenated
    in the list's order with repeats pooled again. The flags (pooling_mode null or left out) concatenate in the
    fixed POOLING_MODES order. An empty list, an entry that is not a mode name, or another type is refused.
    """
    mode = pool.get("pooling_mode")
    if isinstance(mode, (list, tuple)):
        if not mode:  # sentence-transformers 6.x builds a Pooling of no modes, whose forward fails
            raise EmbeddingConfigError(f"{file}: pooling_mode is an empty list; expected one or more of "
                                       f"{', '.join(POOLING_MODES)}")
        for m in mode:
            if not isinstance(m, str) or m not in POOLING_MODES:
                raise EmbeddingConfigError(
                    f"{file}: pooling_mode {list(mode)!r} holds {m!r}, which is not one of "
                    f"{', '.join(POOLING_MODES)} (sentence-transformers 6.x compares a list's entries exactly, "
                    "case included)")
        return tuple(mode)
    if mode is not None:
        if not isinstance(mode, str):
            raise EmbeddingConfigError(f"{file}: pooling_mode must be a mode name or a list of them; got "
                                       f"{type(mode).__name__} {mode!r}")
        mode = mode.lower()
        if mode not in POOLING_MODES:
            raise EmbeddingConfigError(f"{file}: pooling_mode {mode!r} is not one of {', '.join(POOLING_MODES)}")
        return (mode,)
    flags = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
             "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
             "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
    unknown = sorted(k for k in pool if k.startswith("pooling_mode_") and k not in flags.values() and pool[k])
    if unknown:
        raise EmbeddingConfigError(f"{file} turns on {', '.join(unknown)}, which engine does not implement")
    others_on = sorted(flags[m] for m in POOLING_MODES if m != "mean" and pool.get(flags[m]))
    if others_on and flags["mean"] not in pool:
        # before 6.0, sentence-transformers' mean flag defaults to true (cls + mean here); 6.x reads a left-out
        # flag as off (cls alone): two readings, so the file must say which
        raise EmbeddingConfigError(
            f"{file} turns on {', '.join(others_on)} but leaves out pooling_mode_mean_tokens, which "
            "sentence-transformers before 6.0 reads as true (mean pooling added) and 6.x as false; set it to true "
            "or false")
    defaults = {"mean": True}  # sentence-transformers' Pooling defaults (a config without flags: mean)
    modes = tuple(m for m in POOLING_MODES if pool.get(flags[m], defaults.get(m, False)))
    if not modes:
        raise EmbeddingConfigError(f"{file} turns every pooling mode off")
    return modes


def embedding_spec(path: str | os.PathLike, *, max_positions: int, tokenizer_max: int | None,
                   pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                   max_length: int | None = None, prompt: str | None = None) -> EmbeddingSpec:
    """The spec for the folder ``path``: sentence-transformers' files when present, then the caller's overrides.

    max_positions: the model's longest input; tokenizer_max: the tokenizer's model_max_length (or None). As in
    sentence-transformers, the default max length is max_seq_length when given, else the smaller of the two.
    pooling / normalize / max_length / prompt: None keeps the folder's choice.
    pooling: one or more of POOLINGS; several are concatenated in the fixed POOLINGS order (sentence-transformers'
    pooling_mode_* flag order, pooler last) and a repeat counts once, whatever the caller's order (a
    pooling_mode list in the folder's Pooling config keeps its order and repeats, as sentence-transformers 6.x).
    """
    st = read_sentence_transformers(path) or {"model_dir": str(Path(path))}
    if pooling is not None:
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        bad = [m for m in modes if m not in POOLINGS]
        if not modes or bad:
            raise ValueError(f"pooling must be one or more of {', '.join(POOLINGS)}; got {pooling!r}")
        st["pooling"] = tuple(m for m in POOLINGS if m in modes)  # the fixed order, repeats once (see above)
    if normalize is not None:
        st["normalize"] = bool(normalize)
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
        st["prompt"] = prompt
    if st.pop("exclude_prompt", False) and st.get("prompt"):
        raise EmbeddingConfigError(f"{path}: the pooling config leaves the prompt out of the pooling "
                                   "(include_prompt false), which engine does not implement; pass prompt=''")
    if max_length is not None:
        st["max_length"] = positive_int("max_length", max_length)
    elif "max_length" not in st:
        st["max_length"] = min(max_positions, tokenizer_max or max_positions)
    if st["max_length"] > max_positions:
        raise ValueError(f"max_length {st['max_length']} exceeds this model's {max_positions} positions")
    return EmbeddingSpec(**st)
