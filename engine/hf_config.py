"""The parsing of Hugging Face ``config.json`` files into ``ModelConfig`` (``ModelConfig.from_hf`` calls ``from_hf``).

Reads an HF config (GPT-2, BERT, ALBERT, RoBERTa, T5 / mT5 / UMT5) with transformers' class defaults and refuses,
with a clear message naming the field, anything engine cannot run exactly (BERT's relative position embeddings,
decoder BERTs, activations engine does not have, T5 stacks used alone as decoders, unknown architectures) and every
value that is not what it claims (checked with engine.config's typed-field checks: never silently int()-ed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import ARCHITECTURES, FAMILIES, GELU_APPROXIMATION, T5_FAMILIES, _DEFAULT_ARCH, _check, _valid

if TYPE_CHECKING:
    from engine.config import ModelConfig


def from_hf(cls: type[ModelConfig], d: dict[str, Any]) -> ModelConfig:
    """``cls`` (ModelConfig) from an HF config.json dict; raise ValueError for anything engine cannot run exactly."""
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


def _get(d: dict[str, Any], key: str, kind: str, default: Any) -> Any:
    """``d[key]`` checked against ``kind``; a missing key gives ``default`` (transformers' class default)."""
    return _check(key, d[key], kind) if key in d else default


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


# bos / eos ids where config.json leaves them out: the defaults of transformers' config class of each family (BERT's:
# none). Only GPT-2 / T5 generation reads eos; the others are carried for parity (engine's encoders read neither).
_BOS_DEFAULTS = {"gpt2": 50256, "albert": 2, "roberta": 0}
_EOS_DEFAULTS = {"gpt2": 50256, "albert": 3, "roberta": 2, **{f: 1 for f in T5_FAMILIES}}


def _common(d: dict[str, Any], family: str) -> dict[str, Any]:
    """Fields every family reads the same way: labels and how scores are made, special ids, dtype."""
    labels = _check("id2label", d.get("id2label") or None, "labels")  # {} means none, as before
    num_labels = len(labels) if labels else _get(d, "num_labels", "count", 2)  # as transformers: id2label wins
    bos = d.get("bos_token_id", _BOS_DEFAULTS.get(family))
    dtype = d["dtype"] if d.get("dtype") is not None else d.get("torch_dtype")
    return dict(
        id2label=None if labels is None else {str(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))},
        num_labels=num_labels, problem_type=_get(d, "problem_type", "problem", None),
        bos_token_id=bos if _valid(bos, "token") else None,  # unused by engine: carried when well-formed
        eos_token_id=_get(d, "eos_token_id", "tokens", _EOS_DEFAULTS.get(family)),
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

