"""One ``ModelConfig`` for every family engine runs, and the parsing of Hugging Face ``config.json`` files.

``ModelConfig.from_hf(dict)`` reads an HF config (GPT-2, BERT, ALBERT, RoBERTa, T5 / mT5 / UMT5) and refuses, with
a clear message naming the field, anything engine cannot run exactly (BERT's relative position embeddings, decoder
BERTs, activations engine does not have, T5 stacks used alone as decoders, unknown architectures). ``to_dict`` /
``from_dict`` round-trip engine's own config.json, the one ``python -m engine convert`` writes (it carries
``"engine_format"`` so a loader can tell the two apart).
"""
from __future__ import annotations

import dataclasses
import json
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
    # Carried through `engine convert` for the CLI: class names of a classifier head, and the special ids.
    id2label: dict[str, str] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
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
        positive = ["vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "num_hidden_groups", "inner_group_num"]
        if self.family in T5_FAMILIES:
            positive += ["d_kv", "num_decoder_layers", "relative_attention_num_buckets",
                         "relative_attention_max_distance"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.family in T5_FAMILIES:
            if self.relative_attention_num_buckets < 4:  # bidirectional: 2 signs x (exact + log) buckets
                raise ValueError(f"relative_attention_num_buckets must be >= 4; got "
                                 f"{self.relative_attention_num_buckets}")
        elif self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.family == "roberta" and self.pad_token_id is None:
            raise ValueError("RoBERTa needs pad_token_id (its position ids start at pad_token_id + 1)")

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
        return cls(**{k: v for k, v in d.items() if k in fields})

    # ---- Hugging Face config.json -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ModelConfig":
        """Parse an HF config.json dict; raise ValueError for anything engine cannot run exactly."""
        model_type = d.get("model_type")
        archs = d.get("architectures") or []
        if len(archs) > 1:
            raise ValueError(f"config.json lists several architectures {archs}; engine needs exactly one")
        if archs:
            arch = archs[0]
            if arch not in ARCHITECTURES:
                raise ValueError(
                    f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
                )
            family = ARCHITECTURES[arch][0]
        elif model_type in FAMILIES:
            family, arch = model_type, _DEFAULT_ARCH[model_type]
        else:
            raise ValueError(
                f"config.json names no architecture and model_type {model_type!r} is not one of "
                f"{', '.join(FAMILIES)}"
            )
        if model_type is not None and model_type != family:
            raise ValueError(f"model_type {model_type!r} does not match architecture {arch}")
        if family in T5_FAMILIES:
            return _from_t5(d, family, arch)
        return _from_gpt2(d, arch) if family == "gpt2" else _from_bert_like(d, family, arch)


def _activation(d: dict[str, Any], key: str, default: str) -> str:
    name = d.get(key, default)
    if name not in GELU_APPROXIMATION:
        raise ValueError(
            f"{key}={name!r} is not supported; supported activations: {', '.join(GELU_APPROXIMATION)}"
        )
    return GELU_APPROXIMATION[name]


def _num_labels(d: dict[str, Any]) -> int:
    if isinstance(d.get("id2label"), dict) and d["id2label"]:
        return len(d["id2label"])
    return int(d.get("num_labels", 2))


def _id2label(d: dict[str, Any]) -> dict[str, str] | None:
    labels = d.get("id2label")
    if not isinstance(labels, dict) or not labels:
        return None
    return {str(k): str(v) for k, v in labels.items()}


def _special_ids(d: dict[str, Any]) -> dict[str, Any]:
    """bos/eos token ids as HF writes them (eos may be a list), ints only."""
    out: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id"):
        value = d.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            out[key] = list(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    return out


def _eps(d: dict[str, Any], default: float) -> float:
    for key in ("layer_norm_eps", "layer_norm_epsilon"):
        if key in d:
            return float(d[key])
    return default


def _p(d: dict[str, Any], key: str, default: float | None) -> float | None:
    """A dropout probability of the HF config (``default`` when absent or null), checked to lie in [0, 1)."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{key} must be a dropout probability in [0, 1); got {v!r}")
    return float(v)


def _from_gpt2(d: dict[str, Any], arch: str) -> ModelConfig:
    if d.get("add_cross_attention"):
        raise ValueError("GPT-2 with add_cross_attention=True is not supported (decoder-only GPT-2 is)")
    hidden = int(d.get("n_embd", 768))
    return ModelConfig(
        family="gpt2", architecture=arch, vocab_size=int(d.get("vocab_size", 50257)), hidden_size=hidden,
        num_layers=int(d.get("n_layer", 12)), num_heads=int(d.get("n_head", 12)),
        intermediate_size=int(d.get("n_inner") or 4 * hidden),
        max_position_embeddings=int(d.get("n_positions", 1024)), layer_norm_eps=_eps(d, 1e-5),
        gelu=_activation(d, "activation_function", "gelu_new"), pad_token_id=d.get("pad_token_id"),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        scale_attn_weights=bool(d.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
        hidden_dropout=_p(d, "resid_pdrop", 0.1), attention_dropout=_p(d, "attn_pdrop", 0.1),
        embedding_dropout=_p(d, "embd_pdrop", 0.1),
        id2label=_id2label(d), **_special_ids(d),
    )


def _from_bert_like(d: dict[str, Any], family: str, arch: str) -> ModelConfig:
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(
            f"position_embedding_type={pos!r} is not supported; only 'absolute' position embeddings are"
        )
    if d.get("is_decoder") or d.get("add_cross_attention"):
        raise ValueError(f"{family} as a decoder (is_decoder / add_cross_attention) is not supported")
    default_act = "gelu_new" if family == "albert" else "gelu"
    albert = family == "albert"  # ALBERT's config defaults its dropouts to 0 and names the classifier's _prob
    hidden = _p(d, "hidden_dropout_prob", 0.0 if albert else 0.1)
    classifier = _p(d, "classifier_dropout_prob" if albert else "classifier_dropout", 0.1 if albert else None)
    classifier = hidden if classifier is None else classifier
    return ModelConfig(
        family=family, architecture=arch, vocab_size=int(d.get("vocab_size", 30522)),
        hidden_size=int(d.get("hidden_size", 768)), num_layers=int(d.get("num_hidden_layers", 12)),
        num_heads=int(d.get("num_attention_heads", 12)), intermediate_size=int(d.get("intermediate_size", 3072)),
        max_position_embeddings=int(d.get("max_position_embeddings", 512)), layer_norm_eps=_eps(d, 1e-12),
        gelu=_activation(d, "hidden_act", default_act), type_vocab_size=int(d.get("type_vocab_size", 2)),
        pad_token_id=d.get("pad_token_id", 1 if family == "roberta" else 0), num_labels=_num_labels(d),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        embedding_size=int(d.get("embedding_size", 128)) if family == "albert" else None,
        num_hidden_groups=int(d.get("num_hidden_groups", 1)) if family == "albert" else 1,
        inner_group_num=int(d.get("inner_group_num", 1)) if family == "albert" else 1,
        hidden_dropout=hidden, attention_dropout=_p(d, "attention_probs_dropout_prob", 0.0 if albert else 0.1),
        embedding_dropout=hidden, classifier_dropout=classifier,
        id2label=_id2label(d), **_special_ids(d),
    )


def _t5_feed_forward(d: dict[str, Any]) -> tuple[str, str, bool]:
    """(activation, gelu approximation, gated) of a T5 config, as transformers 5.x reads it: ``feed_forward_proj``
    is "ACT" or "gated-ACT" ("gated-gelu" means the tanh GELU); saved configs may carry the parsed
    ``dense_act_fn`` / ``is_gated_act``, which take precedence."""
    proj = d.get("feed_forward_proj", "relu")
    parts = proj.split("-") if isinstance(proj, str) else []
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"feed_forward_proj={proj!r} is not valid: expected 'ACT' or 'gated-ACT' "
                         "(e.g. 'relu', 'gated-gelu')")
    act, gated = parts[-1], len(parts) == 2
    if proj == "gated-gelu":
        act = "gelu_new"
    act = d.get("dense_act_fn", act)
    gated = d.get("is_gated_act", gated)
    if not isinstance(gated, bool):
        raise ValueError(f"is_gated_act must be true or false; got {gated!r}")
    if act == "relu":
        return "relu", "none", gated
    if act in GELU_APPROXIMATION:
        return "gelu", GELU_APPROXIMATION[act], gated
    field = "dense_act_fn" if "dense_act_fn" in d else "feed_forward_proj"
    raise ValueError(f"{field}={d.get(field)!r} is not supported: the activation {act!r} is not one of relu, "
                     f"{', '.join(GELU_APPROXIMATION)} (optionally gated, e.g. 'gated-gelu')")


def _from_t5(d: dict[str, Any], family: str, arch: str) -> ModelConfig:
    if d.get("is_decoder"):
        raise ValueError(f"{family} with is_decoder=true (a T5 stack used alone as a decoder) is not supported; "
                         "the encoder-decoder and encoder-only classes are")
    activation, approx, gated = _t5_feed_forward(d)
    layers = int(d.get("num_layers", 6 if family == "t5" else 8))
    # v1.0 checkpoints rescale the decoder output before the tied LM head; transformers 5.x keeps a saved
    # scale_decoder_outputs, else derives it from tie_word_embeddings (mT5 never rescales).
    tie = d.get("tie_word_embeddings", True) is not False
    scale = False if family == "mt5" else bool(d.get("scale_decoder_outputs", tie))
    return ModelConfig(
        family=family, architecture=arch, vocab_size=int(d.get("vocab_size", 32128 if family == "t5" else 250112)),
        hidden_size=int(d.get("d_model", 512)), num_layers=layers, num_heads=int(d.get("num_heads", 8)),
        intermediate_size=int(d.get("d_ff", 2048 if family == "t5" else 1024)),
        max_position_embeddings=int(d.get("n_positions") or 512),
        layer_norm_eps=float(d.get("layer_norm_epsilon", 1e-6)),
        gelu=approx, activation=activation, gated_mlp=gated, pad_token_id=d.get("pad_token_id", 0),
        tie_word_embeddings=tie, d_kv=int(d.get("d_kv", 64)),
        num_decoder_layers=int(d.get("num_decoder_layers") or layers),
        relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
        scale_decoder_outputs=scale, decoder_start_token_id=d.get("decoder_start_token_id"),
        hidden_dropout=_p(d, "dropout_rate", 0.1), attention_dropout=_p(d, "dropout_rate", 0.1),
        embedding_dropout=_p(d, "dropout_rate", 0.1),
        **_special_ids({"eos_token_id": 1, **d}),
    )


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read ``path/config.json`` (engine's or Hugging Face's) into a ModelConfig."""
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {os.fspath(path)!r}")
    try:
        with open(file, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{file} must hold a JSON object; got {type(d).__name__}")
    return ModelConfig.from_dict(d) if "engine_format" in d else ModelConfig.from_hf(d)
