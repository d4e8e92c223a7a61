"""ModelConfig: parsing HF config.json (quirks and refusals) and engine's own config round trip."""
from __future__ import annotations

import json

import pytest
import transformers as T

from engine.config import ARCHITECTURES, GELU_APPROXIMATION, ModelConfig, load_config
from models_util import hf_config

ARCHS = sorted(ARCHITECTURES)


def _as_transformers_reads(hf: T.PretrainedConfig) -> dict:
    """The ModelConfig fields as transformers' model classes read ``hf`` (a config object: its attributes, after
    transformers' own parsing and defaults). Names per family as in transformers' modeling code: GPT2MLP's inner
    width n_inner or 4 * n_embd; T5's dense_act_fn / is_gated_act (parsed from feed_forward_proj); BERT / RoBERTa's
    classifier dropout classifier_dropout else hidden_dropout_prob, ALBERT's classifier_dropout_prob."""
    t = hf.model_type
    common = dict(pad_token_id=hf.pad_token_id, tie_word_embeddings=hf.tie_word_embeddings)
    if t == "gpt2":
        return dict(common, vocab_size=hf.vocab_size, hidden_size=hf.n_embd, num_layers=hf.n_layer,
                    num_heads=hf.n_head, intermediate_size=hf.n_inner or 4 * hf.n_embd,
                    max_position_embeddings=hf.n_positions, layer_norm_eps=hf.layer_norm_epsilon,
                    gelu=GELU_APPROXIMATION[hf.activation_function], scale_attn_weights=hf.scale_attn_weights,
                    scale_attn_by_inverse_layer_idx=hf.scale_attn_by_inverse_layer_idx,
                    hidden_dropout=hf.resid_pdrop, attention_dropout=hf.attn_pdrop, embedding_dropout=hf.embd_pdrop,
                    bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id)
    if t in ("t5", "mt5", "umt5"):
        relu = hf.dense_act_fn == "relu"
        return dict(common, vocab_size=hf.vocab_size, hidden_size=hf.d_model, num_layers=hf.num_layers,
                    num_heads=hf.num_heads, intermediate_size=hf.d_ff, d_kv=hf.d_kv,
                    num_decoder_layers=hf.num_decoder_layers, layer_norm_eps=hf.layer_norm_epsilon,
                    relative_attention_num_buckets=hf.relative_attention_num_buckets,
                    relative_attention_max_distance=hf.relative_attention_max_distance,
                    activation="relu" if relu else "gelu",
                    gelu="none" if relu else GELU_APPROXIMATION[hf.dense_act_fn],
                    gated_mlp=hf.is_gated_act, eos_token_id=hf.eos_token_id,
                    decoder_start_token_id=getattr(hf, "decoder_start_token_id", None),
                    hidden_dropout=hf.dropout_rate, attention_dropout=hf.dropout_rate, embedding_dropout=hf.dropout_rate)
    albert = t == "albert"
    classifier = hf.classifier_dropout_prob if albert else hf.classifier_dropout
    return dict(common, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_layers=hf.num_hidden_layers,
                num_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
                max_position_embeddings=hf.max_position_embeddings, layer_norm_eps=hf.layer_norm_eps,
                gelu=GELU_APPROXIMATION[hf.hidden_act], type_vocab_size=hf.type_vocab_size,
                hidden_dropout=hf.hidden_dropout_prob, attention_dropout=hf.attention_probs_dropout_prob,
                embedding_dropout=hf.hidden_dropout_prob,
                classifier_dropout=hf.hidden_dropout_prob if classifier is None else classifier,
                bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
                **(dict(embedding_size=hf.embedding_size, num_hidden_groups=hf.num_hidden_groups,
                        inner_group_num=hf.inner_group_num) if albert else {}))


def _fields(cfg: ModelConfig, names) -> dict:
    return {k: getattr(cfg, k) for k in names}


@pytest.mark.parametrize("arch", ARCHS)
def test_from_hf_reads_transformers_configs(arch):
    hf = hf_config(arch)
    cfg = ModelConfig.from_hf(hf.to_dict())
    assert cfg.architecture == arch
    want = _as_transformers_reads(hf)
    assert _fields(cfg, want) == want
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("model_type", ["bert", "albert", "roberta", "gpt2", "t5", "mt5", "umt5"])
def test_absent_fields_take_transformers_class_defaults(model_type):
    """A config.json that leaves fields out (hand-written, trimmed, or from an old version) gets, field by field, the
    value transformers' config class defaults to, so engine builds the model transformers builds from that file
    (the bos / eos ids too, which engine's encoders never read: ALBERT's 2 / 3, RoBERTa's 0 / 2, BERT's none)."""
    hf = T.AutoConfig.for_model(model_type)
    cfg = ModelConfig.from_hf({"model_type": model_type})
    want = _as_transformers_reads(hf)
    assert _fields(cfg, want) == want


def test_gpt2_fields_and_defaults():
    d = T.GPT2Config(n_embd=48, n_head=6, n_layer=3, n_inner=None, layer_norm_epsilon=1e-6).to_dict()
    cfg = ModelConfig.from_hf(d)
    assert (cfg.family, cfg.architecture) == ("gpt2", "GPT2LMHeadModel")  # no architectures: the LM head
    assert cfg.intermediate_size == 4 * 48 and cfg.layer_norm_eps == 1e-6 and cfg.gelu == "tanh"
    assert cfg.head_dim == 8


def test_layer_norm_eps_spellings():
    bert = T.BertConfig(layer_norm_eps=3e-7, architectures=["BertModel"]).to_dict()
    assert ModelConfig.from_hf(bert).layer_norm_eps == 3e-7
    gpt = {"model_type": "gpt2", "layer_norm_epsilon": 2e-5}
    assert ModelConfig.from_hf(gpt).layer_norm_eps == 2e-5


@pytest.mark.parametrize("name", sorted(GELU_APPROXIMATION))
def test_gelu_variants_that_map_exactly(name):
    d = T.BertConfig(hidden_act=name, architectures=["BertModel"]).to_dict()
    assert ModelConfig.from_hf(d).gelu == GELU_APPROXIMATION[name]


@pytest.mark.parametrize("name", ["relu", "quick_gelu", "gelu_10", "silu"])
def test_other_activations_refused(name):
    d = T.BertConfig(hidden_act=name, architectures=["BertModel"]).to_dict()
    with pytest.raises(ValueError, match=rf"hidden_act='{name}' is not supported.*gelu_new"):
        ModelConfig.from_hf(d)
    d = {"model_type": "gpt2", "activation_function": name}
    with pytest.raises(ValueError, match="activation_function"):
        ModelConfig.from_hf(d)


def test_refusals_name_what_is_supported():
    with pytest.raises(ValueError, match="BertForTokenClassification.*not supported.*BertForMaskedLM"):
        ModelConfig.from_hf({"model_type": "bert", "architectures": ["BertForTokenClassification"]})
    with pytest.raises(ValueError, match="relative_key.*only 'absolute'"):
        ModelConfig.from_hf(T.BertConfig(position_embedding_type="relative_key").to_dict())
    with pytest.raises(ValueError, match="decoder"):
        ModelConfig.from_hf(T.BertConfig(is_decoder=True).to_dict())
    with pytest.raises(ValueError, match="model_type 'bart'"):
        ModelConfig.from_hf({"model_type": "bart"})
    with pytest.raises(ValueError, match="does not match"):
        ModelConfig.from_hf({"model_type": "roberta", "architectures": ["BertModel"]})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ModelConfig.from_hf(T.BertConfig(hidden_size=30, num_attention_heads=4).to_dict())


def test_albert_groups_need_not_divide_layers():
    """transformers runs layer i with group int(i / (layers / groups)) for any counts; so does engine."""
    cfg = ModelConfig.from_hf(T.AlbertConfig(num_hidden_layers=3, num_hidden_groups=2).to_dict())
    assert (cfg.num_layers, cfg.num_hidden_groups) == (3, 2)
    with pytest.raises(ValueError, match="num_hidden_groups must be a positive integer"):
        ModelConfig.from_hf(T.AlbertConfig(num_hidden_layers=3, num_hidden_groups=0).to_dict())


def test_roberta_max_len_and_labels():
    d = T.RobertaConfig(max_position_embeddings=514, pad_token_id=1, id2label={0: "a", 1: "b", 2: "c", 3: "d"},
                        architectures=["RobertaForSequenceClassification"]).to_dict()
    cfg = ModelConfig.from_hf(d)
    assert cfg.max_seq_len == 512 and cfg.num_labels == 4 and cfg.head == "seq_cls"


def test_albert_fields():
    cfg = ModelConfig.from_hf(T.AlbertConfig(embedding_size=24, num_hidden_layers=6, num_hidden_groups=3,
                                             inner_group_num=2).to_dict())
    assert (cfg.embedding_size, cfg.num_hidden_groups, cfg.inner_group_num, cfg.gelu) == (24, 3, 2, "tanh")


def test_engine_config_refuses_unknown_fields(tmp_path):
    cfg = ModelConfig.from_hf(T.BertConfig(architectures=["BertModel"]).to_dict())
    d = cfg.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_config(tmp_path) == cfg
    with pytest.raises(ValueError, match="unknown fields.*rotary"):
        ModelConfig.from_dict({**d, "rotary": True})
    with pytest.raises(ValueError, match="engine_format"):
        ModelConfig.from_dict({**d, "engine_format": 99})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_config(tmp_path / "nowhere")


# ---- T5 family --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("proj,activation,gelu,gated", [
    ("relu", "relu", "none", False), ("gated-gelu", "gelu", "tanh", True), ("gelu", "gelu", "none", False),
    ("gated-gelu_new", "gelu", "tanh", True), ("gated-relu", "relu", "none", True), ("gelu_new", "gelu", "tanh", False),
])
def test_t5_feed_forward_proj(proj, activation, gelu, gated):
    d = {"model_type": "t5", "feed_forward_proj": proj, "architectures": ["T5ForConditionalGeneration"]}
    cfg = ModelConfig.from_hf(d)
    assert (cfg.activation, cfg.gelu, cfg.gated_mlp) == (activation, gelu, gated)
    hf = T.T5Config(feed_forward_proj=proj)  # transformers' own reading agrees
    assert hf.is_gated_act == gated and hf.dense_act_fn in (("relu",) if activation == "relu" else GELU_APPROXIMATION)
    # saved configs carry the parsed fields, which win (as in transformers)
    assert ModelConfig.from_hf({**d, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": False}).gated_mlp is False


def test_t5_fields_scaling_and_defaults():
    base = {"architectures": ["T5ForConditionalGeneration"], "d_model": 40, "d_kv": 7, "num_heads": 3,
            "num_layers": 2, "num_decoder_layers": 5, "d_ff": 33, "vocab_size": 99}
    cfg = ModelConfig.from_hf({"model_type": "t5", **base})
    assert (cfg.head_dim, cfg.num_decoder_layers, cfg.intermediate_size, cfg.head) == (7, 5, 33, "lm")
    assert cfg.scale_decoder_outputs and cfg.eos_token_id == 1 and cfg.pad_token_id == 0  # v1.0: tied, rescaled
    assert cfg.max_seq_len > 100_000  # relative positions: no length limit
    assert not ModelConfig.from_hf({"model_type": "t5", **base, "tie_word_embeddings": False}).scale_decoder_outputs
    assert ModelConfig.from_hf({"model_type": "t5", **base, "tie_word_embeddings": False,
                                "scale_decoder_outputs": True}).scale_decoder_outputs  # a saved flag wins
    mt5 = {**base, "architectures": ["MT5ForConditionalGeneration"]}
    assert not ModelConfig.from_hf({"model_type": "mt5", **mt5}).scale_decoder_outputs  # mT5 never rescales
    enc = ModelConfig.from_hf({"model_type": "umt5", **base, "architectures": ["UMT5EncoderModel"],
                               "decoder_start_token_id": 0})
    assert (enc.family, enc.head, enc.decoder_start_token_id) == ("umt5", "base", 0)


@pytest.mark.parametrize("change,word", [
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj='gated-silu' is not supported"),
    ({"feed_forward_proj": "relu-gated"}, "feed_forward_proj='relu-gated' is not valid"),
    ({"feed_forward_proj": "a-b-c"}, "feed_forward_proj"),
    ({"dense_act_fn": "swish"}, "dense_act_fn='swish'"),
    ({"is_gated_act": "yes"}, "is_gated_act"),
    ({"is_decoder": True}, "is_decoder"),
    ({"relative_attention_num_buckets": 3}, "relative_attention_num_buckets"),
    ({"d_kv": 0}, "d_kv"),
    ({"model_type": "mt5"}, "does not match"),
])
def test_t5_refusals_name_the_field(change, word):
    d = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], **change}
    with pytest.raises(ValueError, match=word):
        ModelConfig.from_hf(d)


@pytest.mark.parametrize("arch", ["T5ForConditionalGeneration", "T5EncoderModel"])
@pytest.mark.parametrize("max_distance", [7, 8, 9, 16, 17])
def test_t5_max_distance_at_most_the_exact_bucket_count(arch, max_distance):
    """relative_attention_max_distance at or below the exact-distance bucket count (32 buckets: 8 per sign for the
    encoder, 16 for the decoder) breaks T5's log buckets: transformers' compute_bias raises mid-forward (here at 40
    tokens); engine refuses the config, naming the field, for the sides the model has, and accepts the rest."""
    from transformers.models.t5.modeling_t5 import T5Attention

    sides = [False] if arch == "T5EncoderModel" else [False, True]  # is_decoder: the model's attention stacks
    hf_fails = False
    for is_decoder in sides:
        cfg = T.T5Config(d_model=8, d_kv=4, num_heads=2, relative_attention_num_buckets=32,
                         relative_attention_max_distance=max_distance, is_decoder=is_decoder)
        try:
            T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0).compute_bias(40, 40)
        except IndexError:
            hf_fails = True
    d = {"model_type": "t5", "architectures": [arch], "relative_attention_num_buckets": 32,
         "relative_attention_max_distance": max_distance}
    if hf_fails:
        with pytest.raises(ValueError, match="relative_attention_max_distance must be greater than"):
            ModelConfig.from_hf(d)
    else:
        assert ModelConfig.from_hf(d).relative_attention_max_distance == max_distance


# ---- every field is what it claims; what engine cannot honour is refused, naming the field ------------------
BAD_FIELDS = [
    ("BertModel", {"num_hidden_layers": 2.5}, "num_hidden_layers must be a positive integer; got 2.5"),
    ("BertModel", {"num_hidden_layers": "12"}, "num_hidden_layers must be a positive integer; got '12'"),
    ("BertModel", {"num_hidden_layers": True}, "num_hidden_layers must be a positive integer; got True"),
    ("BertModel", {"hidden_size": -768}, "hidden_size must be a positive integer; got -768"),
    ("BertModel", {"intermediate_size": None}, "intermediate_size must be a positive integer; got None"),
    ("BertModel", {"type_vocab_size": 0}, "type_vocab_size must be a positive integer; got 0"),
    ("BertModel", {"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a finite number > 0; got '1e-12'"),
    ("BertModel", {"layer_norm_eps": 0}, "layer_norm_eps must be a finite number > 0; got 0"),
    ("BertModel", {"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false; got 'false'"),
    ("BertModel", {"pad_token_id": -1}, r"pad_token_id must be a token id \(an integer >= 0\) or null; got -1"),
    ("BertModel", {"hidden_act": 3}, "hidden_act must be a string; got 3"),
    ("BertModel", {"is_decoder": "no"}, "is_decoder must be true or false"),
    ("BertForSequenceClassification", {"id2label": {"0": "a", "2": "b"}}, "id2label must be an object mapping"),
    ("BertForSequenceClassification", {"id2label": None, "num_labels": 0}, "num_labels must be a positive integer"),
    ("BertForSequenceClassification", {"problem_type": "multilabel"}, "problem_type must be one of regression"),
    ("BertForSequenceClassification", {"id2label": {"0": "only"}, "problem_type": "single_label_classification"},
     "single_label_classification' needs num_labels > 1"),
    ("BertModel", {"pruned_heads": {"0": [1]}}, "pruned_heads is not supported"),
    ("BertModel", {"per_layer_config": {"0": {"hidden_act": "relu"}}}, "per_layer_config is not supported"),
    ("RobertaModel", {"pad_token_id": None}, "RoBERTa needs pad_token_id"),
    ("RobertaModel", {"max_position_embeddings": 2, "pad_token_id": 1}, "leaves no position"),
    ("AlbertModel", {"embedding_size": 16.0}, "embedding_size must be a positive integer; got 16.0"),
    ("AlbertModel", {"inner_group_num": -1}, "inner_group_num must be a positive integer; got -1"),
    ("GPT2LMHeadModel", {"n_layer": 1.0}, "n_layer must be a positive integer; got 1.0"),
    ("GPT2LMHeadModel", {"n_inner": 0}, "n_inner must be a positive integer or null; got 0"),
    ("GPT2LMHeadModel", {"scale_attn_weights": 1}, "scale_attn_weights must be true or false; got 1"),
    ("GPT2LMHeadModel", {"eos_token_id": "x"}, "eos_token_id must be a token id, a list of token ids, or null"),
    ("GPT2LMHeadModel", {"eos_token_id": [1, -2]}, "eos_token_id must be a token id, a list of token ids"),
    ("GPT2LMHeadModel", {"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a finite number"),
    ("GPT2LMHeadModel", {"add_cross_attention": True}, "add_cross_attention=true is not supported"),
    ("GPT2LMHeadModel", {"architectures": "GPT2LMHeadModel"}, "architectures must be a list of class names"),
    # the T5 family's own fields, held to the same rules
    ("T5ForConditionalGeneration", {"d_model": 24.0}, "d_model must be a positive integer; got 24.0"),
    ("T5ForConditionalGeneration", {"d_kv": "5"}, "d_kv must be a positive integer; got '5'"),
    ("T5ForConditionalGeneration", {"d_ff": None}, "d_ff must be a positive integer; got None"),
    ("T5ForConditionalGeneration", {"num_heads": True}, "num_heads must be a positive integer; got True"),
    ("T5ForConditionalGeneration", {"num_layers": 2.5}, "num_layers must be a positive integer; got 2.5"),
    ("T5ForConditionalGeneration", {"num_decoder_layers": 0}, "num_decoder_layers must be a positive integer or null"),
    ("MT5ForConditionalGeneration", {"relative_attention_num_buckets": "32"},
     "relative_attention_num_buckets must be a positive integer; got '32'"),
    ("UMT5EncoderModel", {"relative_attention_max_distance": -128},
     "relative_attention_max_distance must be a positive integer; got -128"),
    ("T5EncoderModel", {"layer_norm_epsilon": "1e-6"}, "layer_norm_epsilon must be a finite number > 0"),
    ("T5ForConditionalGeneration", {"n_positions": 1.5}, "n_positions must be a positive integer or null"),
    ("T5ForConditionalGeneration", {"vocab_size": 0}, "vocab_size must be a positive integer; got 0"),
    ("T5ForConditionalGeneration", {"feed_forward_proj": 3}, "feed_forward_proj=3 is not valid"),
    ("T5ForConditionalGeneration", {"dense_act_fn": ["relu"]}, r"dense_act_fn must be a string; got \['relu'\]"),
    ("T5ForConditionalGeneration", {"is_gated_act": 0}, "is_gated_act must be true or false; got 0"),
    ("T5ForConditionalGeneration", {"tie_word_embeddings": "true"}, "tie_word_embeddings must be true or false"),
    ("T5ForConditionalGeneration", {"scale_decoder_outputs": 1}, "scale_decoder_outputs must be true or false"),
    ("T5ForConditionalGeneration", {"decoder_start_token_id": -1}, "decoder_start_token_id must be a token id"),
    ("T5ForConditionalGeneration", {"eos_token_id": 1.0}, "eos_token_id must be a token id, a list of token ids"),
    ("T5ForConditionalGeneration", {"pad_token_id": "0"}, "pad_token_id must be a token id"),
    ("T5ForConditionalGeneration", {"is_decoder": "no"}, "is_decoder must be true or false"),
    ("T5ForConditionalGeneration", {"problem_type": "x"}, "problem_type must be one of"),
]


@pytest.mark.parametrize("arch,change,msg", BAD_FIELDS, ids=[f"{a}-{next(iter(c))}" for a, c, _ in BAD_FIELDS])
def test_config_values_that_are_not_what_they_claim(tmp_path, arch, change, msg):
    d = {**hf_config(arch).to_dict(), **change}
    with pytest.raises(ValueError, match=msg):
        ModelConfig.from_hf(d)
    (tmp_path / "config.json").write_text(json.dumps(d, allow_nan=True))
    with pytest.raises(ValueError, match=f"config.json: .*{msg}") as info:  # through the loader: names the file
        load_config(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field,value", [("num_layers", 2.5), ("vocab_size", "97"), ("tie_word_embeddings", 1),
                                         ("layer_norm_eps", -1.0), ("eos_token_id", [0.5]), ("problem_type", "x")])
def test_engine_config_fields_are_checked_too(field, value):
    d = ModelConfig.from_hf(hf_config("GPT2LMHeadModel").to_dict()).to_dict()
    with pytest.raises(ValueError, match=f"{field} must be"):
        ModelConfig.from_dict({**d, field: value})
    del d["vocab_size"]
    with pytest.raises(ValueError, match="missing fields: vocab_size"):
        ModelConfig.from_dict(d)


def test_fields_that_change_the_meaning_of_outputs_are_carried():
    d = hf_config("BertForSequenceClassification").to_dict()
    for problem, labels, how in [("multi_label_classification", 3, "sigmoid"), ("regression", 1, "none"),
                                 (None, 1, "sigmoid"), (None, 3, "softmax"), ("single_label_classification", 3,
                                                                              "softmax")]:
        cfg = ModelConfig.from_hf({**d, "problem_type": problem, "id2label": {str(i): f"L{i}" for i in range(labels)}})
        assert (cfg.problem_type, cfg.num_labels, cfg.score_function) == (problem, labels, how)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # through engine's config.json
    cfg = ModelConfig.from_hf({**d, "torch_dtype": "bfloat16"})
    assert cfg.dtype == "bfloat16"
    assert ModelConfig.from_hf({**d, "dtype": "float16", "torch_dtype": "bfloat16"}).dtype == "float16"
    gpt = ModelConfig.from_hf({"model_type": "gpt2"})  # GPT2Config's own defaults, as transformers reads them
    assert (gpt.eos_token_id, gpt.bos_token_id, gpt.pad_token_id) == (50256, 50256, None)


@pytest.mark.parametrize("field,value", [("d_kv", 2.5), ("d_kv", None), ("num_decoder_layers", None),
                                         ("relative_attention_num_buckets", "8"), ("gated_mlp", 1),
                                         ("activation", 3), ("decoder_start_token_id", -1), ("scale_decoder_outputs", 0)])
def test_engine_config_fields_of_t5_are_checked_too(field, value):
    """engine's own config.json of a T5 model (what convert writes): every T5 field checked as from_hf checks it."""
    d = ModelConfig.from_hf(hf_config("T5ForConditionalGeneration").to_dict()).to_dict()
    assert ModelConfig.from_dict(d).to_dict() == d
    with pytest.raises(ValueError, match=f"{field} must be"):
        ModelConfig.from_dict({**d, field: value})


def test_generation_config_supplies_t5_eos_pad_and_start(tmp_path):
    """As transformers' generate: generation_config.json's EOS, pad and decoder start ids win over config.json's."""
    d = hf_config("T5ForConditionalGeneration").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**d, "decoder_start_token_id": 0}))
    cfg = load_config(tmp_path)
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.decoder_start_token_id) == (1, 0, 0)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7], "pad_token_id": 3,
                                                                  "decoder_start_token_id": 3}))
    cfg = load_config(tmp_path)
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.decoder_start_token_id) == ([1, 7], 3, 3)
    (tmp_path / "generation_config.json").write_text(json.dumps({"decoder_start_token_id": 2.0}))
    with pytest.raises(ValueError, match="generation_config.json: decoder_start_token_id must be a token id"):
        load_config(tmp_path)
    enc = {**hf_config("T5EncoderModel").to_dict(), "decoder_start_token_id": 0}  # a non-generating class too
    (tmp_path / "config.json").write_text(json.dumps(enc))
    with pytest.raises(ValueError, match="generation_config.json: decoder_start_token_id"):
        load_config(tmp_path)


def test_generation_config_supplies_gpt2_eos_and_pad(tmp_path):
    d = hf_config("GPT2LMHeadModel").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**d, "eos_token_id": 3, "pad_token_id": None}))
    assert (load_config(tmp_path).eos_token_id, load_config(tmp_path).pad_token_id) == (3, None)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6], "pad_token_id": 7}))
    assert (load_config(tmp_path).eos_token_id, load_config(tmp_path).pad_token_id) == ([5, 6], 7)
    (tmp_path / "generation_config.json").write_text(json.dumps({"pad_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json: pad_token_id must be a token id"):
        load_config(tmp_path)
