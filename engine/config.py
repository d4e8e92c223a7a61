"""One ``ModelConfig`` for every family engine runs, and the parsing of Hugging Face ``config.json`` files.

``ModelConfig.from_hf(dict)`` reads an HF config (GPT-2, BERT, ALBERT, RoBERTa, T5 / mT5 / UMT5) and refuses, with
a clear message naming the field, anything engine cannot run exactly (BERT's relative position embeddings, decoder
BERTs, activations engine does not have, T5 stacks used alone as decoders, unknown architectures) and every value
that is not what it claims (a fractional layer count, a string for a number: never silently int()-ed). ``to_dict`` /
``from_dict`` round-trip engine's own config.json, the one ``python -m engine convert`` writes (it carries
``"engine_format"`` so a loader can tell the two apart).
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

    # ---- Hugging Face config.json -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        """Parse an HF config.json dict; raise ValueError for anything engine cannot run exactly."""
        model_type = d.get("model_type")
        archs = d.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ValueError(f"architectures must be a list of class names; got {archs!r}")
        if len(archs) > 1:
            raise ValueError(f"config.json lists several architectures {archs}; engine needs exactly one")
        if archs:
            arch = archs[0]
            if arch not in ARCHITECTURES:
                raise ValueError(
                    f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
                )
            family = ARCHITECTURES[arch][0]
        elif isinstance(model_type, str) and model_type in FAMILIES:
            family, arch = model_type, _DEFAULT_ARCH[model_type]
        else:
            raise ValueError(
                f"config.json names no architecture and model_type {model_type!r} is not one of "
                f"{', '.join(FAMILIES)}"
            )
        if model_type is not None and model_type != family:
            raise ValueError(f"model_type {model_type!r} does not match architecture {arch}")
        _refuse_unsupported(d, family)
        body = (_from_t5(d, family) if family in T5_FAMILIES else _from_gpt2(d) if family == "gpt2"
                else _from_bert_like(d, family))
        return cls(family=family, architecture=arch, **body, **_common(d, family))


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


def _get(d: dict[str, Any], key: str, kind: str, default: Any) -> Any:
    """``d[key]`` checked against ``kind``; a missing key gives ``default`` (transformers' class default)."""
    return _check(key, d[key], kind) if key in d else default


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


def _refuse_unsupported(d: dict[str, Any], family: str) -> None:
    """HF config values that change what the model computes and that engine does not implement."""
    if family in T5_FAMILIES:
        if _get(d, "is_decoder", "bool", False):
            raise ValueError(f"is_decoder=true is not supported for {family} (a T5 stack used alone as a decoder); "
                             "the encoder-decoder and encoder-only classes are")
    elif family != "gpt2":
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(
                f"position_embedding_type={pos!r} is not supported; only 'absolute' position embeddings are"
            )
    for key in () if family in T5_FAMILIES else ("add_cross_attention",) if family == "gpt2" else \
            ("is_decoder", "add_cross_attention"):
        if _get(d, key, "bool", False):
            raise ValueError(f"{key}=true is not supported ({family} runs as "
                             f"{'a decoder-only LM' if family == 'gpt2' else 'an encoder'} only)")
    if d.get("pruned_heads"):
        raise ValueError("pruned_heads is not supported (engine runs every attention head)")
    if d.get("per_layer_config") is not None:
        raise ValueError("per_layer_config is not supported (engine runs identical layers)")


def _activation(d: dict[str, Any], key: str, default: str) -> str:
    name = _get(d, key, "str", default)
    if name not in GELU_APPROXIMATION:
        raise ValueError(
            f"{key}={name!r} is not supported; supported activations: {', '.join(GELU_APPROXIMATION)}"
        )
    return GELU_APPROXIMATION[name]


def _eps(d: dict[str, Any], default: float) -> float:
    for key in ("layer_norm_eps", "layer_norm_epsilon"):
        if key in d:
            return float(_check(key, d[key], "eps"))
    return default


def _p(d: dict[str, Any], key: str, default: float | None) -> float | None:
    """A dropout probability of the HF config (``default`` when absent or null), checked to lie in [0, 1)."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{key} must be a dropout probability in [0, 1); got {v!r}")
    return float(v)


def _common(d: dict[str, Any], family: str) -> dict[str, Any]:
    """Fields every family reads the same way: labels and how scores are made, special ids, dtype."""
    labels = _check("id2label", d.get("id2label") or None, "labels")  # {} means none, as before
    num_labels = len(labels) if labels else _get(d, "num_labels", "count", 2)  # as transformers: id2label wins
    gpt2 = family == "gpt2"
    bos = d.get("bos_token_id", 50256 if gpt2 else None)
    dtype = d["dtype"] if d.get("dtype") is not None else d.get("torch_dtype")
    return dict(
        id2label=None if labels is None else {str(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))},
        num_labels=num_labels, problem_type=_get(d, "problem_type", "problem", None),
        bos_token_id=bos if _valid(bos, "token") else None,  # unused by engine: carried when well-formed
        # GPT2Config's and T5Config's defaults
        eos_token_id=_get(d, "eos_token_id", "tokens", 50256 if gpt2 else 1 if family in T5_FAMILIES else None),
        pad_token_id=_get(d, "pad_token_id", "token", 1 if family == "roberta" else 0 if family != "gpt2" else None),
        tie_word_embeddings=_get(d, "tie_word_embeddings", "bool", True),
        dtype=_check("dtype", dtype, "dtype") if dtype is not None else None,
    )


def _from_gpt2(d: dict[str, Any]) -> dict[str, Any]:
    hidden = _get(d, "n_embd", "count", 768)
    _get(d, "reorder_and_upcast_attn", "bool", False)  # fp32 softmax: engine's attention always does that
    return dict(
        vocab_size=_get(d, "vocab_size", "count", 50257), hidden_size=hidden,
        num_layers=_get(d, "n_layer", "count", 12), num_heads=_get(d, "n_head", "count", 12),
        intermediate_size=_get(d, "n_inner", "count?", None) or 4 * hidden,
        max_position_embeddings=_get(d, "n_positions", "count", 1024), layer_norm_eps=_eps(d, 1e-5),
        gelu=_activation(d, "activation_function", "gelu_new"),
        scale_attn_weights=_get(d, "scale_attn_weights", "bool", True),
        scale_attn_by_inverse_layer_idx=_get(d, "scale_attn_by_inverse_layer_idx", "bool", False),
        hidden_dropout=_p(d, "resid_pdrop", 0.1), attention_dropout=_p(d, "attn_pdrop", 0.1),
        embedding_dropout=_p(d, "embd_pdrop", 0.1),
    )


def _t5_feed_forward(d: dict[str, Any], family: str) -> tuple[str, str, bool]:
    """(activation, gelu approximation, gated) of a T5 config, as transformers 5.x reads it: ``feed_forward_proj``
    is "ACT" or "gated-ACT" ("gated-gelu" means the tanh GELU; absent: T5Config's "relu", MT5Config's and
    UMT5Config's "gated-gelu"); saved configs may carry the parsed ``dense_act_fn`` / ``is_gated_act``, which take
    precedence."""
    proj = d.get("feed_forward_proj", "relu" if family == "t5" else "gated-gelu")
    parts = proj.split("-") if isinstance(proj, str) else []
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"feed_forward_proj={proj!r} is not valid: expected 'ACT' or 'gated-ACT' "
                         "(e.g. 'relu', 'gated-gelu')")
    act, gated = parts[-1], len(parts) == 2
    if proj == "gated-gelu":
        act = "gelu_new"
    act = _get(d, "dense_act_fn", "str", act)
    gated = _get(d, "is_gated_act", "bool", gated)
    if act == "relu":
        return "relu", "none", gated
    if act in GELU_APPROXIMATION:
        return "gelu", GELU_APPROXIMATION[act], gated
    field = "dense_act_fn" if "dense_act_fn" in d else "feed_forward_proj"
    raise ValueError(f"{field}={d.get(field)!r} is not supported: the activation {act!r} is not one of relu, "
                     f"{', '.join(GELU_APPROXIMATION)} (optionally gated, e.g. 'gated-gelu')")


def _from_t5(d: dict[str, Any], family: str) -> dict[str, Any]:
    activation, approx, gated = _t5_feed_forward(d, family)
    t5 = family == "t5"  # else mT5 / UMT5, whose config classes share their defaults
    layers = _get(d, "num_layers", "count", 6 if t5 else 8)
    # v1.0 checkpoints rescale the decoder output before the tied LM head; transformers 5.x keeps a saved
    # scale_decoder_outputs, else derives it from tie_word_embeddings (mT5 never rescales).
    tie = _get(d, "tie_word_embeddings", "bool", True)
    scale = False if family == "mt5" else _get(d, "scale_decoder_outputs", "bool", tie)
    return dict(
        vocab_size=_get(d, "vocab_size", "count", 32128 if t5 else 250112),
        hidden_size=_get(d, "d_model", "count", 512), num_layers=layers,
        num_heads=_get(d, "num_heads", "count", 8 if t5 else 6),
        intermediate_size=_get(d, "d_ff", "count", 2048 if t5 else 1024),
        max_position_embeddings=_get(d, "n_positions", "count?", None) or 512, layer_norm_eps=_eps(d, 1e-6),
        gelu=approx, activation=activation, gated_mlp=gated, d_kv=_get(d, "d_kv", "count", 64),
        num_decoder_layers=_get(d, "num_decoder_layers", "count?", None) or layers,
        relative_attention_num_buckets=_get(d, "relative_attention_num_buckets", "count", 32),
        relative_attention_max_distance=_get(d, "relative_attention_max_distance", "count", 128),
        scale_decoder_outputs=scale,
        decoder_start_token_id=_get(d, "decoder_start_token_id", "token", None if t5 else 0),
        hidden_dropout=_p(d, "dropout_rate", 0.1), attention_dropout=_p(d, "dropout_rate", 0.1),
        embedding_dropout=_p(d, "dropout_rate", 0.1),
    )


def _from_bert_like(d: dict[str, Any], family: str) -> dict[str, Any]:
    albert = family == "albert"  # ALBERT's config defaults its dropouts to 0 and names the classifier's _prob
    hidden = _p(d, "hidden_dropout_prob", 0.0 if albert else 0.1)
    classifier = _p(d, "classifier_dropout_prob" if albert else "classifier_dropout", 0.1 if albert else None)
    return dict(
        hidden_dropout=hidden, attention_dropout=_p(d, "attention_probs_dropout_prob", 0.0 if albert else 0.1),
        embedding_dropout=hidden, classifier_dropout=hidden if classifier is None else classifier,
        vocab_size=_get(d, "vocab_size", "count", 30000 if albert else 50265 if family == "roberta" else 30522),
        hidden_size=_get(d, "hidden_size", "count", 4096 if albert else 768),
        num_layers=_get(d, "num_hidden_layers", "count", 12),
        num_heads=_get(d, "num_attention_heads", "count", 64 if albert else 12),
        intermediate_size=_get(d, "intermediate_size", "count", 16384 if albert else 3072),
        max_position_embeddings=_get(d, "max_position_embeddings", "count", 512), layer_norm_eps=_eps(d, 1e-12),
        gelu=_activation(d, "hidden_act", "gelu_new" if albert else "gelu"),
        type_vocab_size=_get(d, "type_vocab_size", "count", 2),
        embedding_size=_get(d, "embedding_size", "count", 128) if albert else None,
        num_hidden_groups=_get(d, "num_hidden_groups", "count", 1) if albert else 1,
        inner_group_num=_get(d, "inner_group_num", "count", 1) if albert else 1,
    )


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
