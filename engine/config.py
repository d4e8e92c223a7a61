"""One ``ModelConfig`` for every family engine runs, the typed checks of its fields, and ``load_config``.

``ModelConfig`` checks every field is what it claims (a fractional layer count, a string for a number: never
silently int()-ed). ``to_dict`` / ``from_dict`` round-trip engine's own config.json, the one ``python -m engine
convert`` writes (it carries ``"engine_format"`` so a loader can tell the two apart); ``ModelConfig.from_hf`` reads a
Hugging Face config.json (engine/hf_config.py does the parsing). ``load_config`` reads a folder's config.json (either
kind) and, for HF folders of generating families, generation_config.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

ENGINE_FORMAT = 1

# HF class name -> (family, head). The head decides what ``model(...)`` returns (see engine/models).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "GPT2Model": ("gpt2", "base"),
    "GPT2LMHeadModel": ("gpt2", "lm"),
    "BertModel": ("bert", "base"),
    "BertForMaskedLM": ("bert", "mlm"),
    "BertForSequenceClassification": ("bert", "seq_cls"),
    "BertForQuestionAnswering": ("bert", "qa"),
    "BertForNextSentencePrediction": ("bert", "nsp"),
    "BertForPreTraining": ("bert", "pretraining"),
    "AlbertModel": ("albert", "base"),
    "AlbertForMaskedLM": ("albert", "mlm"),
    "AlbertForSequenceClassification": ("albert", "seq_cls"),
    "RobertaModel": ("roberta", "base"),
    "RobertaForMaskedLM": ("roberta", "mlm"),
    "RobertaForSequenceClassification": ("roberta", "seq_cls"),
    # T5 family: "base" = the encoder's last hidden state, "seq2seq" = the decoder's, "lm" = logits
    **{f"{p}{cls}": (p.lower(), head) for p in ("T5", "MT5", "UMT5")
       for cls, head in (("EncoderModel", "base"), ("Model", "seq2seq"), ("ForConditionalGeneration", "lm"))},
}
T5_FAMILIES = ("t5", "mt5", "umt5")
FAMILIES = ("gpt2", "bert", "albert", "roberta", *T5_FAMILIES)
_DEFAULT_ARCH = {"gpt2": "GPT2LMHeadModel", "bert": "BertModel", "albert": "AlbertModel", "roberta": "RobertaModel",
                 "t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration",
                 "umt5": "UMT5ForConditionalGeneration"}
# Longest input of a T5-family model: relative positions set no limit (transformers sets none either).
T5_MAX_SEQ_LEN = 1 << 20

# HF activation names that are exactly erf GELU ("none") or the tanh approximation ("tanh"): gelu_new,
# gelu_fast, gelu_accurate and gelu_pytorch_tanh all compute 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).
GELU_APPROXIMATION: dict[str, str] = {
    "gelu": "none",
    "gelu_python": "none",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
    "gelu_accurate": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_python_tanh": "tanh",
}


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
DTYPES = ("float32", "float16", "bfloat16", "float64")  # the compute dtypes engine loads weights in


@dataclasses.dataclass
class ModelConfig:
    """Everything the model code needs, for every family (fields a family does not use keep their defaults).

    family: "gpt2" | "bert" | "albert" | "roberta" | "t5" | "mt5" | "umt5"; architecture: the HF class name whose
    main output ``model(...)`` returns; gelu: "none" (erf) or "tanh" for the MLP (and the MLM head of BERT/ALBERT).
    """

    family: str
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-12
    gelu: str = "none"
    type_vocab_size: int = 0
    pad_token_id: int | None = None
    num_labels: int = 2
    # Carried through `engine convert` for the CLI: class names of a classifier head, how its logits become
    # scores (problem_type, as transformers' text-classification pipeline reads it), and the special ids.
    id2label: dict[str, str] | None = None
    problem_type: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
    # The dtype the checkpoint's config names (HF "dtype" / "torch_dtype"): from_pretrained's default, as with
    # transformers' dtype="auto" (one of DTYPES to be usable; others are refused when they would be used).
    dtype: str | None = None
    # ALBERT: factorised embeddings and shared layers.
    embedding_size: int | None = None
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    # GPT-2 attention scaling options.
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    # T5 family (d_model = hidden_size, d_ff = intermediate_size, num_layers = the encoder's layers).
    d_kv: int | None = None  # per-head width when heads * d_kv != hidden_size (None: hidden_size // num_heads)
    num_decoder_layers: int | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    activation: str = "gelu"  # the MLP's activation: "gelu" (approximation in `gelu`) or "relu"
    gated_mlp: bool = False  # act(x @ W_gate) * (x @ W_up) (T5 v1.1 "gated-gelu"), else act(x @ W_in)
    scale_decoder_outputs: bool = False  # T5 v1.0: decoder output * d_model**-0.5 before the LM head
    decoder_start_token_id: int | None = None
    # Dropout probabilities, used only in training mode (``model.train()``); transformers' defaults when absent.
    hidden_dropout: float = 0.0  # each sublayer's output (BERT hidden_dropout_prob, GPT-2 resid_pdrop, T5 dropout_rate)
    attention_dropout: float = 0.0  # the attention probabilities (attention_probs_dropout_prob, attn_pdrop, T5's)
    embedding_dropout: float = 0.0  # the embeddings' output (BERT hidden_dropout_prob, GPT-2 embd_pdrop, T5's)
    classifier_dropout: float = 0.0  # before a sequence-classification head (classifier_dropout[_prob] or hidden)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
            )
        if ARCHITECTURES[self.architecture][0] != self.family:
            raise ValueError(f"architecture {self.architecture} does not belong to family {self.family!r}")
        if self.gelu not in ("none", "tanh"):
            raise ValueError(f"gelu must be 'none' or 'tanh'; got {self.gelu!r}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu'; got {self.activation!r}")
        for name, kind in _FIELD_KINDS.items():  # every field has the type it claims (engine config.json too)
            _check(name, getattr(self, name), kind)
        if self.family in T5_FAMILIES:
            for name in ("d_kv", "num_decoder_layers"):  # optional for other families, needed by T5's
                _check(name, getattr(self, name), "count")
            if self.relative_attention_num_buckets < 4:  # bidirectional: 2 signs x (exact + log) buckets
                raise ValueError(f"relative_attention_num_buckets must be >= 4; got "
                                 f"{self.relative_attention_num_buckets}")
            # The log buckets scale by 1 / log(max_distance / max_exact): with max_distance <= max_exact the buckets
            # past the exact ones fall instead of rise, below 0 for long enough inputs (transformers raises an
            # IndexError mid-forward). max_exact: num_buckets // 4 for the encoder's bidirectional buckets, // 2 the
            # decoder's.
            exact = {"the encoder's": 4} if self.head == "base" else {"the encoder's": 4, "the decoder's": 2}
            for side, div in exact.items():
                max_exact = self.relative_attention_num_buckets // div
                if self.relative_attention_max_distance <= max_exact:
                    raise ValueError(
                        f"relative_attention_max_distance must be greater than {side} exact-distance bucket count "
                        f"(relative_attention_num_buckets // {div} = {max_exact}), as T5's log buckets scale by 1 / "
                        f"log(max_distance / that count); got {self.relative_attention_max_distance}")
        elif self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.family == "roberta" and (self.pad_token_id is None or self.pad_token_id >= self.vocab_size):
            raise ValueError("RoBERTa needs pad_token_id in [0, vocab_size) (its position ids start at "
                             f"pad_token_id + 1); got {self.pad_token_id!r}")
        if self.family == "roberta" and self.max_seq_len < 1:
            raise ValueError(f"max_position_embeddings ({self.max_position_embeddings}) leaves no position for "
                             f"RoBERTa after pad_token_id + 1 = {self.pad_token_id + 1}")
        if self.id2label is not None and len(self.id2label) != self.num_labels:
            raise ValueError(f"id2label has {len(self.id2label)} labels but num_labels is {self.num_labels}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError("problem_type 'single_label_classification' needs num_labels > 1 (as transformers "
                             "requires); use 'regression' for a single-output head")

    @property
    def head(self) -> str:
        """"base", "lm", "mlm", "seq_cls", "qa", "nsp" or "pretraining"."""
        return ARCHITECTURES[self.architecture][1]

    @property
    def head_dim(self) -> int:
        return self.d_kv if self.d_kv is not None else self.hidden_size // self.num_heads

    @property
    def max_seq_len(self) -> int:
        """The longest input: RoBERTa's position ids start at pad_token_id + 1, so it loses that many slots; the T5
        family's relative positions set no limit."""
        if self.family == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        if self.family in T5_FAMILIES:
            return T5_MAX_SEQ_LEN
        return self.max_position_embeddings

    @property
    def score_function(self) -> str:
        """How a sequence classifier's logits become the scores users see, exactly as transformers'
        text-classification pipeline decides: "none" (raw, regression), "sigmoid" (per label:
        multi_label_classification, or a single logit) or "softmax"."""
        if self.problem_type == "regression":
            return "none"
        if self.problem_type == "multi_label_classification" or self.num_labels == 1:
            return "sigmoid"
        return "softmax"

    # ---- engine's own config.json -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"engine_format": ENGINE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Parse engine's config.json (as written by ``to_dict``)."""
        if d.get("engine_format") != ENGINE_FORMAT:
            raise ValueError(f"engine_format must be {ENGINE_FORMAT}; got {d.get('engine_format')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields - {"engine_format"})
        if unknown:
            raise ValueError(f"unknown fields in engine config: {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in d)
        if missing:
            raise ValueError(f"engine config is missing fields: {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in fields})

    # ---- Hugging Face config.json (parsed in engine/hf_config.py) -------------------------------------------
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        """Parse an HF config.json dict; raise ValueError for anything engine cannot run exactly."""
        from engine.hf_config import from_hf  # engine.hf_config imports this module

        return from_hf(cls, d)


# ---- typed fields: each value must be what it claims (no silent int("12") / int(2.5) / int(True)) ------------
_EXPECTED = {
    "count": "a positive integer",
    "size": "an integer >= 0",
    "eps": "a finite number > 0",
    "bool": "true or false",
    "str": "a string",
    "token": "a token id (an integer >= 0) or null",
    "tokens": "a token id, a list of token ids, or null",
    "count?": "a positive integer or null",
    "labels": "an object mapping label ids 0..n-1 to names, or null",
    "problem": f"one of {', '.join(PROBLEM_TYPES)}, or null",
    "dtype": "a dtype name (a string) or null",
}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid(v: object, kind: str) -> bool:
    if kind == "count":
        return _is_int(v) and v >= 1
    if kind == "size":
        return _is_int(v) and v >= 0
    if kind == "eps":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if v is None:
        return kind in ("token", "tokens", "count?", "labels", "problem", "dtype")
    if kind == "token":
        return _is_int(v) and v >= 0
    if kind == "tokens":
        return (_is_int(v) and v >= 0) or (isinstance(v, list) and bool(v) and all(_is_int(i) and i >= 0 for i in v))
    if kind == "count?":
        return _is_int(v) and v >= 1
    if kind == "labels":
        return isinstance(v, dict) and bool(v) and sorted(map(str, v)) == sorted(str(i) for i in range(len(v))) \
            and all(isinstance(x, str) for x in v.values())
    if kind == "problem":
        return v in PROBLEM_TYPES
    if kind == "dtype":
        return isinstance(v, str)
    raise AssertionError(kind)


def _check(name: str, value: object, kind: str) -> Any:
    if not _valid(value, kind):
        raise ValueError(f"{name} must be {_EXPECTED[kind]}; got {value!r}")
    return value


_FIELD_KINDS = {
    "vocab_size": "count", "hidden_size": "count", "num_layers": "count", "num_heads": "count",
    "intermediate_size": "count", "max_position_embeddings": "count", "layer_norm_eps": "eps",
    "type_vocab_size": "size", "pad_token_id": "token", "num_labels": "count", "id2label": "labels",
    "problem_type": "problem", "bos_token_id": "token", "eos_token_id": "tokens", "tie_word_embeddings": "bool",
    "dtype": "dtype", "embedding_size": "count?", "num_hidden_groups": "count", "inner_group_num": "count",
    "scale_attn_weights": "bool", "scale_attn_by_inverse_layer_idx": "bool",
    "d_kv": "count?", "num_decoder_layers": "count?", "relative_attention_num_buckets": "count",
    "relative_attention_max_distance": "count", "activation": "str", "gated_mlp": "bool",
    "scale_decoder_outputs": "bool", "decoder_start_token_id": "token",
}


def _read_json(file: str) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{file} must hold a JSON object; got {type(d).__name__}")
    return d


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read ``path/config.json`` (engine's or Hugging Face's) into a ModelConfig.

    For a Hugging Face folder of a family that generates (GPT-2, the T5 family), ``generation_config.json`` (when
    present) supplies the EOS and pad ids (and T5's decoder start id), as it does for transformers' ``generate``.
    Errors name the file and the field.
    """
    folder = os.fspath(path)
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {folder!r}")
    d = _read_json(file)
    try:
        if "engine_format" in d:
            return ModelConfig.from_dict(d)
        cfg = ModelConfig.from_hf(d)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None
    gen_file = os.path.join(folder, "generation_config.json")
    if (cfg.family == "gpt2" or cfg.family in T5_FAMILIES) and os.path.isfile(gen_file):
        g = _read_json(gen_file)
        keys = [("eos_token_id", "tokens"), ("pad_token_id", "token")]
        if cfg.family in T5_FAMILIES:
            keys.append(("decoder_start_token_id", "token"))
        try:
            for key, kind in keys:
                if key in g:
                    setattr(cfg, key, _check(key, g[key], kind))
        except ValueError as exc:
            raise ValueError(f"{gen_file}: {exc}") from None
    return cfg
