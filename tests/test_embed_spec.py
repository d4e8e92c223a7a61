"""engine/embed_spec.py: a sentence-transformers folder's module files -> EmbeddingSpec, field by field.

Tiny folders written into tmp_path (no weights, no model): the expected values are what sentence-transformers' file
format defines (modules.json: the module chain, each module's folder in "path"; the Transformer folder's
sentence_bert_config.json: max_seq_length, do_lower_case; the Pooling folder's config.json: pooling_mode (a name,
or in 6.x a list concatenated in its order) or the pooling_mode_* flags, mean on by default, modes concatenated
cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken; a Dense folder's config.json: in_features,
out_features, bias (default true), activation_function (a torch.nn class path), module_input_name /
module_output_name (6.x: the features it reads and writes); config_sentence_transformers.json: prompts,
default_prompt_name; Pooling's include_prompt).
A field read wrong here embeds every text differently without an error, so each field is checked on its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.embed_spec import (DenseSpec, EmbeddingConfigError, EmbeddingSpec, embedding_spec,
                               read_sentence_transformers)

ACT = "torch.nn.modules.activation.Tanh"
DENSE = {"in_features": 4, "out_features": 3, "bias": True, "activation_function": ACT}


def folder(root: Path, modules: list[tuple[str, str]], configs: dict[str, object] | None = None) -> Path:
    """A sentence-transformers folder: modules.json lists (kind, path); configs maps a file path relative to
    root (e.g. '1_Pooling/config.json') to its JSON content (a str is written as it is)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)]))
    for rel, obj in (configs or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return root


TP = [("Transformer", ""), ("Pooling", "1_Pooling")]


def spec(path: Path, **kw) -> EmbeddingSpec:
    return embedding_spec(path, **{"max_positions": 512, "tokenizer_max": 512, **kw})


def test_no_modules_json_gives_the_defaults(tmp_path):
    assert read_sentence_transformers(tmp_path) is None
    got = embedding_spec(tmp_path, max_positions=514, tokenizer_max=512)
    assert got == EmbeddingSpec(pooling=("mean",), dense=(), normalize=False, max_length=512, lower_case=False,
                                prompt="", model_dir=str(tmp_path), source="defaults (no modules.json)")
    # the smaller of the model's positions and the tokenizer's model_max_length; no tokenizer limit: the model's
    assert spec(tmp_path, max_positions=128, tokenizer_max=512).max_length == 128
    assert spec(tmp_path, max_positions=128, tokenizer_max=None).max_length == 128
    assert spec(tmp_path, max_positions=128).max_length == 128
    (tmp_path / "modules.json").mkdir()  # not a file: still not a sentence-transformers folder
    assert read_sentence_transformers(tmp_path) is None


def test_module_chain_and_folders(tmp_path):
    """The Transformer may live in a sub-folder (its sentence_bert_config.json is read there, not at the root);
    every Dense module is read from its own folder, in modules.json's order; Normalize only when last."""
    d = folder(tmp_path / "a", [("Transformer", "0_Transformer"), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"),
                                ("Dense", "3_Dense"), ("Normalize", "4_Normalize")], {
        "0_Transformer/sentence_bert_config.json": {"max_seq_length": 77, "do_lower_case": True},
        "sentence_bert_config.json": {"max_seq_length": 99},  # the root's is not the Transformer's
        "1_Pooling/config.json": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
        "2_Dense/config.json": DENSE,
        "3_Dense/config.json": {"in_features": 3, "out_features": 2, "bias": False,
                                "activation_function": "torch.nn.modules.linear.Identity"}})
    got = spec(d)
    assert got.model_dir == str(d / "0_Transformer")
    assert (got.max_length, got.lower_case, got.pooling, got.normalize) == (77, True, ("cls",), True)
    assert got.dense == (DenseSpec(str(d / "2_Dense"), 4, 3, True, "tanh"),
                         DenseSpec(str(d / "3_Dense"), 3, 2, False, "identity"))
    assert got.source == f"sentence-transformers ({d / 'modules.json'})"
    # the Pooling module's folder is modules.json's second entry's, whatever its name
    p = folder(tmp_path / "b", [("Transformer", ""), ("Pooling", "pool"), ("Dense", "2_Dense")],
               {"pool/config.json": {"pooling_mode": "max"}, "1_Pooling/config.json": {"pooling_mode": "cls"},
                "2_Dense/config.json": DENSE})
    got = spec(p)
    assert (got.pooling, got.normalize, got.model_dir) == (("max",), False, str(p))
    assert [x.path for x in got.dense] == [str(p / "2_Dense")]
    # no Pooling config at all: sentence-transformers' Pooling defaults (mean)
    assert spec(folder(tmp_path / "c", TP)).pooling == ("mean",)


@pytest.mark.parametrize("modules, pattern", [
    ({"type": "sentence_transformers.models.Transformer"}, "must be a list of objects"),
    (["sentence_transformers.models.Transformer"], "must be a list of objects"),
    ([{"path": ""}], "must be a list of objects"),
    ([{"type": 3}], "must be a list of objects"),
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "my_package.models.Pooling"}],
     "module 1 is my_package.models.Pooling, which engine does not implement"),
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.LayerNorm"}],
     "module 1 is sentence_transformers.models.LayerNorm"),
    ([{"type": "sentence_transformers.models.Transformer"}], "chains Transformer; engine runs"),
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Dense"},
      {"type": "sentence_transformers.models.Pooling"}], "chains Transformer -> Dense -> Pooling"),
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"},
      {"type": "sentence_transformers.models.Normalize"}, {"type": "sentence_transformers.models.Normalize"}],
     "chains Transformer -> Pooling -> Normalize -> Normalize"),
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"},
      {"type": "sentence_transformers.models.Pooling"}], "chains Transformer -> Pooling -> Pooling"),
    # a second Pooling re-pools the token embeddings (sentence-transformers overwrites the first one's vector)
    ([{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"},
      {"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Normalize"}],
     "chains Transformer -> Pooling -> Pooling -> Normalize"),
])
def test_module_chains_refused(tmp_path, modules, pattern):
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EmbeddingConfigError, match=pattern):
        read_sentence_transformers(tmp_path)


def test_sentence_bert_config(tmp_path):
    def read(cfg: object, name: str) -> dict:
        return read_sentence_transformers(folder(tmp_path / name, TP, {"sentence_bert_config.json": cfg}))

    assert (read({"max_seq_length": 1}, "one")["max_length"]) == 1
    got = read({"max_seq_length": 200}, "no-case")
    assert (got["max_length"], got["lower_case"]) == (200, False)  # do_lower_case defaults to false
    assert read({"max_seq_length": 200, "do_lower_case": False}, "false")["lower_case"] is False
    got = read({"max_seq_length": None, "do_lower_case": True}, "none")
    assert "max_length" not in got and got["lower_case"] is True
    assert "max_length" not in read({}, "empty")
    # max_seq_length null: the default, the smaller of the model's and the tokenizer's limits
    assert spec(tmp_path / "none", max_positions=128, tokenizer_max=512).max_length == 128
    assert spec(tmp_path / "one", max_positions=128, tokenizer_max=512).max_length == 1
    no_file = read_sentence_transformers(folder(tmp_path / "nofile", TP))
    assert "max_length" not in no_file and "lower_case" not in no_file
    for name, cfg, pattern in [("zero", {"max_seq_length": 0}, "max_seq_length must be a positive integer; got 0"),
                               ("bool", {"max_seq_length": True}, "got True"),
                               ("float", {"max_seq_length": 128.0}, "got 128.0"),
                               ("list", [128], "must hold a JSON object")]:
        with pytest.raises(EmbeddingConfigError, match=pattern):
            read(cfg, name)


@pytest.mark.parametrize("cfg, want", [
    ({}, ("mean",)),
    ({"word_embedding_dimension": 8}, ("mean",)),
    ({"pooling_mode_mean_tokens": True}, ("mean",)),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ("cls",)),
    ({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}, ("max",)),
    ({"pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": False}, ("mean_sqrt_len_tokens",)),
    ({"pooling_mode_weightedmean_tokens": True, "pooling_mode_mean_tokens": False}, ("weightedmean",)),
    ({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}, ("lasttoken",)),
    # every flag on: concatenated in sentence-transformers' fixed order, whatever the file's key order
    ({"pooling_mode_lasttoken": True, "pooling_mode_weightedmean_tokens": True,
      "pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True,
      "pooling_mode_cls_token": True},
     ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")),
    # a flag that is off, known or not, changes nothing
    ({"pooling_mode_cls_token": False, "pooling_mode_some_new_mode": False}, ("mean",)),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ("cls",)),  # both readings agree
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, ("cls", "mean")),
    # pooling_mode (a string) overrides every flag; null means "use the flags"
    ({"pooling_mode": "cls", "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, ("cls",)),
    ({"pooling_mode": None, "pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}, ("max",)),
    ({"pooling_mode": "lasttoken", "include_prompt": True}, ("lasttoken",)),
    # sentence-transformers 6.x: a list of modes, concatenated in the list's order (a repeat is pooled again);
    # it overrides every flag, as a string does
    ({"pooling_mode": ["cls", "mean"]}, ("cls", "mean")),
    ({"embedding_dimension": 8, "pooling_mode": ["mean", "cls"], "include_prompt": True}, ("mean", "cls")),
    ({"pooling_mode": ["lasttoken", "weightedmean", "mean_sqrt_len_tokens", "mean", "max", "cls"]},
     ("lasttoken", "weightedmean", "mean_sqrt_len_tokens", "mean", "max", "cls")),
    ({"pooling_mode": ["max"]}, ("max",)),
    ({"pooling_mode": ["mean", "mean"]}, ("mean", "mean")),
    ({"pooling_mode": ["max", "cls"], "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
     ("max", "cls")),
])
def test_pooling_config(tmp_path, cfg, want):
    got = read_sentence_transformers(folder(tmp_path, TP, {"1_Pooling/config.json": cfg}))
    assert got["pooling"] == want
    assert "exclude_prompt" not in got


@pytest.mark.parametrize("cfg, pattern", [
    ({"pooling_mode_mean_tokens": False}, "turns every pooling mode off"),
    ({"pooling_mode_median_tokens": True}, "turns on pooling_mode_median_tokens, which engine does not implement"),
    # another flag on and the mean flag left out: cls + mean before sentence-transformers 6.0, cls alone in 6.x
    ({"pooling_mode_cls_token": True}, "turns on pooling_mode_cls_token but leaves out pooling_mode_mean_tokens"),
    ({"pooling_mode": None, "pooling_mode_max_tokens": True, "pooling_mode_lasttoken": True},
     "turns on pooling_mode_lasttoken, pooling_mode_max_tokens but leaves out pooling_mode_mean_tokens"),
    ({"pooling_mode": "median"}, "pooling_mode 'median' is not one of"),
    ({"pooling_mode": []}, r"pooling_mode is an empty list; expected one or more of cls, max"),
    ({"pooling_mode": ["cls", "median"]}, r"pooling_mode \['cls', 'median'\] holds 'median', which is not one of"),
    ({"pooling_mode": ["CLS"]}, r"holds 'CLS', which is not one of .*case"),  # 6.x compares list entries exactly
    ({"pooling_mode": ["mean", None]}, r"holds None, which is not one of"),
    ({"pooling_mode": [["mean"]]}, r"holds \['mean'\], which is not one of"),
    ({"pooling_mode": 3}, r"pooling_mode must be a mode name or a list of them; got int 3"),
    ({"pooling_mode": {"mean": True}}, r"pooling_mode must be a mode name or a list of them; got dict"),
    ([{"pooling_mode": "mean"}], "must hold a JSON object"),
    ("{", "cannot read pooling config"),
])
def test_pooling_config_refused(tmp_path, cfg, pattern):
    with pytest.raises(EmbeddingConfigError, match=pattern) as err:
        read_sentence_transformers(folder(tmp_path, TP, {"1_Pooling/config.json": cfg}))
    assert "1_Pooling/config.json" in str(err.value)


def test_pooling_config_tuple(tmp_path):
    """A tuple (a config dict built in Python rather than read from JSON) is taken as a list is."""
    from engine.embed_spec import _pooling_from_config
    assert _pooling_from_config({"pooling_mode": ("mean", "cls")}, tmp_path / "config.json") == ("mean", "cls")
    with pytest.raises(EmbeddingConfigError, match="empty list"):
        _pooling_from_config({"pooling_mode": ()}, tmp_path / "config.json")


@pytest.mark.parametrize("act, want", [
    ("torch.nn.modules.linear.Identity", "identity"), ("torch.nn.modules.activation.Tanh", "tanh"),
    ("torch.nn.modules.activation.ReLU", "relu"), ("torch.nn.modules.activation.GELU", "gelu"),
    ("torch.nn.modules.activation.Sigmoid", "sigmoid"), ("torch.nn.modules.activation.SiLU", "silu"),
    ("torch.nn.Tanh", "tanh")])
def test_dense_config(tmp_path, act, want):
    d = folder(tmp_path, [*TP, ("Dense", "2_Dense")],
               {"2_Dense/config.json": {"in_features": 1, "out_features": 7, "activation_function": act}})
    # bias left out: sentence-transformers' default, true
    assert read_sentence_transformers(d)["dense"] == (DenseSpec(str(d / "2_Dense"), 1, 7, True, want),)


@pytest.mark.parametrize("change, pattern", [
    ({"in_features": 0}, "in_features must be a positive integer; got 0"),
    ({"out_features": 0}, "out_features must be a positive integer; got 0"),
    ({"in_features": True}, "in_features must be a positive integer; got True"),
    ({"out_features": 3.0}, "out_features must be a positive integer; got 3.0"),
    ({"in_features": None}, "in_features must be a positive integer; got None"),
    ({"bias": 1}, "bias must be true or false; got 1"),
    ({"activation_function": None}, "activation_function None is not one engine implements"),
    ({"activation_function": "Tanh"}, "activation_function 'Tanh' is not one"),
    ({"activation_function": "my_package.layers.Tanh"}, "activation_function 'my_package.layers.Tanh' is not one"),
    ({"activation_function": "torch.nn.modules.activation.Softmax"}, "Softmax' is not one"),
    ({"use_residual": False}, "use_residual not understood"),
])
def test_dense_config_refused(tmp_path, change, pattern):
    cfg = {k: v for k, v in {**DENSE, **change}.items() if v is not None}  # None: the key left out
    d = folder(tmp_path, [*TP, ("Dense", "2_Dense")], {"2_Dense/config.json": cfg})
    with pytest.raises(EmbeddingConfigError, match=pattern):
        read_sentence_transformers(d)


@pytest.mark.parametrize("names", [
    {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},  # every 6.x save
    {"module_input_name": "sentence_embedding"},  # no output name: the input's
    {"module_input_name": "sentence_embedding", "module_output_name": None},  # null: the input's
    {"module_output_name": "sentence_embedding"}])  # no input name: sentence_embedding
def test_dense_feature_names_of_the_sentence_embedding(tmp_path, names):
    """sentence-transformers 6.x's Dense reads features[module_input_name] (default "sentence_embedding") and
    writes features[module_output_name] (null or left out: the input's name): on the pooled vector, as engine."""
    d = folder(tmp_path, [*TP, ("Dense", "2_Dense")], {"2_Dense/config.json": {**DENSE, **names}})
    assert read_sentence_transformers(d)["dense"] == (DenseSpec(str(d / "2_Dense"), 4, 3, True, "tanh"),)


@pytest.mark.parametrize("names, pattern", [
    ({"module_input_name": "token_embeddings"},
     "module_input_name must be 'sentence_embedding'.*; got 'token_embeddings'"),
    ({"module_input_name": "token_embeddings", "module_output_name": "sentence_embedding"},
     "module_input_name must be 'sentence_embedding'.*; got 'token_embeddings'"),
    ({"module_output_name": "dense_embedding"},
     "module_output_name must be 'sentence_embedding'.*; got 'dense_embedding'"),
    ({"module_input_name": "sentence_embedding", "module_output_name": "token_embeddings"},
     "module_output_name must be 'sentence_embedding'.*; got 'token_embeddings'"),
    ({"module_input_name": None}, "module_input_name must be 'sentence_embedding'.*; got None"),
    ({"module_input_name": ["sentence_embedding"]}, r"module_input_name must be .*; got \['sentence_embedding'\]"),
])
def test_dense_feature_names_refused(tmp_path, names, pattern):
    d = folder(tmp_path, [*TP, ("Dense", "2_Dense")], {"2_Dense/config.json": {**DENSE, **names}})
    with pytest.raises(EmbeddingConfigError, match=pattern) as err:
        read_sentence_transformers(d)
    assert "2_Dense/config.json" in str(err.value)


def test_dense_config_not_an_object(tmp_path):
    d = folder(tmp_path, [*TP, ("Dense", "2_Dense")], {"2_Dense/config.json": [DENSE]})
    with pytest.raises(EmbeddingConfigError, match="2_Dense/config.json must hold a JSON object"):
        read_sentence_transformers(d)


def test_prompts(tmp_path):
    prompts = {"query": "query: ", "doc": "passage: "}

    def make(name: str, st: object, pool: dict | None = None) -> Path:
        return folder(tmp_path / name, TP, {"config_sentence_transformers.json": st,
                                            **({"1_Pooling/config.json": pool} if pool is not None else {})})

    assert spec(make("default", {"prompts": prompts, "default_prompt_name": "doc"})).prompt == "passage: "
    assert spec(make("unnamed", {"prompts": prompts})).prompt == ""  # prompts alone choose none
    assert spec(make("null", {"prompts": prompts, "default_prompt_name": None})).prompt == ""
    # include_prompt left out is true: a prompt is pooled like the text
    assert spec(make("included", {"prompts": prompts, "default_prompt_name": "query"}, {})).prompt == "query: "
    assert spec(make("true", {"prompts": prompts, "default_prompt_name": "query"},
                     {"include_prompt": True})).prompt == "query: "
    excluded = make("excluded", {"prompts": prompts, "default_prompt_name": "query"}, {"include_prompt": False})
    with pytest.raises(EmbeddingConfigError, match="include_prompt false"):
        spec(excluded)
    assert spec(excluded, prompt="").prompt == ""
    with pytest.raises(EmbeddingConfigError, match="include_prompt false"):
        spec(make("excluded-override", {}, {"include_prompt": False}), prompt="q: ")
    assert spec(make("excluded-no-prompt", {}, {"include_prompt": False})).prompt == ""
    for name, st in [("missing", {"prompts": prompts, "default_prompt_name": "title"}),
                     ("no-prompts", {"default_prompt_name": "query"}),
                     ("list", {"prompts": ["query: "], "default_prompt_name": "query"}),
                     ("non-str", {"prompts": {"query": 3}, "default_prompt_name": "query"})]:
        with pytest.raises(EmbeddingConfigError, match="default_prompt_name .* is not among its prompts"):
            spec(make(name, st))


def test_overrides(tmp_path):
    d = folder(tmp_path / "st", [*TP, ("Normalize", "2_Normalize")], {
        "sentence_bert_config.json": {"max_seq_length": 128},
        "1_Pooling/config.json": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
        "config_sentence_transformers.json": {"prompts": {"q": "q: "}, "default_prompt_name": "q"}})
    base = spec(d)
    assert (base.pooling, base.normalize, base.max_length, base.prompt) == (("cls",), True, 128, "q: ")
    assert spec(d, normalize=False).normalize is False
    assert spec(folder(tmp_path / "plain", TP), normalize=True).normalize is True
    assert spec(d, prompt="").prompt == "" and spec(d, prompt="x: ").prompt == "x: "
    assert spec(d, pooling="max").pooling == ("max",)
    assert spec(d, pooling=["pooler", "mean", "cls"]).pooling == ("cls", "mean", "pooler")  # the fixed order
    # (unlike a pooling_mode list in the file) the override's order and repeats do not count
    assert spec(d, pooling=("mean", "cls", "mean")).pooling == ("cls", "mean")
    assert spec(d, pooling=("mean",)).pooling == ("mean",)
    # max_length: the caller's, else max_seq_length (even above the tokenizer's limit), else the smaller limit
    assert spec(d, max_length=1).max_length == 1
    assert spec(d, max_length=np.int64(64)).max_length == 64 and type(spec(d, max_length=np.int64(64)).max_length) \
        is int
    assert spec(d, tokenizer_max=100).max_length == 128
    assert spec(d, max_positions=128).max_length == 128  # exactly the model's positions
    with pytest.raises(ValueError, match="max_length 128 exceeds this model's 127 positions"):
        spec(d, max_positions=127)
    with pytest.raises(ValueError, match="max_length 513 exceeds"):
        spec(d, max_length=513)
    for bad, err, pattern in [(0, ValueError, "max_length must be a positive integer; got 0"),
                              (-3, ValueError, "got -3"),
                              (2.5, TypeError, "max_length must be a positive integer; got float 2.5"),
                              (True, TypeError, "got bool True"), ("64", TypeError, "got str '64'")]:
        with pytest.raises(err, match=pattern):
            spec(d, max_length=bad)
    for bad in ("median", [], ["mean", "median"]):
        with pytest.raises(ValueError, match="pooling must be one or more of"):
            spec(d, pooling=bad)
    with pytest.raises(TypeError, match="prompt must be a str; got bytes"):
        spec(d, prompt=b"q: ")


def test_unreadable_files_named(tmp_path):
    (tmp_path / "modules.json").write_text("[")
    with pytest.raises(EmbeddingConfigError, match="cannot read modules.json"):
        read_sentence_transformers(tmp_path)
    for rel, what in [("sentence_bert_config.json", "sentence_bert_config.json"),
                      ("config_sentence_transformers.json", "config_sentence_transformers.json")]:
        d = folder(tmp_path / what, TP, {rel: "{"})
        with pytest.raises(EmbeddingConfigError, match=f"cannot read {what}"):
            read_sentence_transformers(d)
