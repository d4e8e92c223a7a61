"""Checkpoint reading and convert: every bad input gives a clear error before any model is returned."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine.__main__ import main as cli
from models_util import inputs, make_hf, perturb

_SAVED: dict[str, Path] = {}


@pytest.fixture
def bert_dir(tmp_path_factory) -> Path:
    if "bert" not in _SAVED:
        d = tmp_path_factory.mktemp("bert")
        make_hf("BertForSequenceClassification").save_pretrained(d)
        _SAVED["bert"] = d
    return _SAVED["bert"]


def copy_with(src: Path, dst: Path, tensors: dict[str, torch.Tensor] | None = None,
              config: dict | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text()) if config is None else config
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(load_file(src / "model.safetensors") if tensors is None else tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_named(bert_dir, tmp_path):
    sd = load_file(bert_dir / "model.safetensors")
    del sd["bert.encoder.layer.1.attention.self.key.weight"], sd["classifier.bias"]
    msg = r"classifier\.bias \(no source tensor\); layers\.1\.attn\.qkv\.weight \(needs query, key and value"
    with pytest.raises(ValueError, match=msg):
        engine.from_pretrained(copy_with(bert_dir, tmp_path / "m", sd))


def test_extra_tensor_named(bert_dir, tmp_path):
    sd = load_file(bert_dir / "model.safetensors")
    sd["bert.encoder.layer.0.adapter.weight"] = torch.randn(3, 3)
    with pytest.raises(ValueError, match=r"unexpected tensors.*bert\.encoder\.layer\.0\.adapter\.weight"):
        engine.from_pretrained(copy_with(bert_dir, tmp_path / "m", sd))


def test_shape_mismatch_named(bert_dir, tmp_path):
    sd = load_file(bert_dir / "model.safetensors")
    sd["bert.encoder.layer.0.intermediate.dense.weight"] = torch.randn(40, 32)
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight has shape \(40, 32\), expected \(37, 32\)"):
        engine.from_pretrained(copy_with(bert_dir, tmp_path / "m", sd))


def test_unused_head_tensors_warn(bert_dir, tmp_path):
    """A classification checkpoint loaded as BertModel: the classifier is known but unused -> a warning."""
    cfg = json.loads((bert_dir / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    d = copy_with(bert_dir, tmp_path / "m", config=cfg)
    with pytest.warns(UserWarning, match="BertModel does not use.*classifier.weight"):
        model = engine.from_pretrained(d)
    x = inputs("BertModel")
    assert model(**x).shape == (3, 11, 32)


def test_unknown_architecture_and_options(bert_dir, tmp_path):
    cfg = json.loads((bert_dir / "config.json").read_text())
    for change, msg in [({"architectures": ["BertForTokenClassification"]}, "not supported; supported: GPT2Model"),
                        ({"position_embedding_type": "relative_key_query"}, "only 'absolute'"),
                        ({"hidden_act": "relu"}, "hidden_act='relu' is not supported")]:
        with pytest.raises(ValueError, match=msg):
            engine.from_pretrained(copy_with(bert_dir, tmp_path / "m", config={**cfg, **change}))


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "empty"])
def test_corrupt_safetensors(bert_dir, tmp_path, damage):
    d = copy_with(bert_dir, tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) - 1000], "garbage_header": b"\xff" * 64 + data[64:],
                   "empty": b""}[damage])
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        engine.from_pretrained(d)


def test_bin_with_pickled_code_is_refused(bert_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((bert_dir / "config.json").read_text())
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="cannot read .*pytorch_model.bin"):
        engine.from_pretrained(d)
    assert not marker.exists()
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match="cannot read"):
        engine.from_pretrained(d)


def test_missing_files(bert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        engine.from_pretrained(tmp_path / "nope")
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        engine.from_pretrained(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard-1.safetensors"):
        engine.from_pretrained(d)


def test_bad_load_arguments(bert_dir):
    with pytest.raises(ValueError, match="dtype must be"):
        engine.from_pretrained(bert_dir, dtype="int8")
    with pytest.raises(ValueError, match="dtype must be"):
        engine.from_pretrained(bert_dir, dtype=torch.int32)


def test_dtype_names_and_aliases(bert_dir):
    """Every name dtype= takes loads in that dtype, the short aliases included (fp32 is float32, not another one)."""
    for name, want in [("float32", torch.float32), ("fp32", torch.float32), ("float16", torch.float16),
                       ("fp16", torch.float16), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                       ("float64", torch.float64), (torch.bfloat16, torch.bfloat16)]:
        model = engine.from_pretrained(bert_dir, dtype=name)
        assert {p.dtype for p in model.parameters()} == {want}, name


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_default_dtype_without_a_config_dtype_is_the_weights(bert_dir, tmp_path, fmt):
    """A config.json that names no dtype (older checkpoints): the weights' own dtype, as transformers' dtype="auto",
    with the stored values unchanged."""
    import transformers as T

    cfg = {k: v for k, v in json.loads((bert_dir / "config.json").read_text()).items()
           if k not in ("dtype", "torch_dtype")}
    for stored in (torch.float32, torch.float16, torch.bfloat16):
        sd = {k: v.to(stored) for k, v in load_file(bert_dir / "model.safetensors").items()}
        d = copy_with(bert_dir, tmp_path / f"{fmt}-{stored}".replace("torch.", ""), sd, config=cfg)
        if fmt == "bin":
            (d / "model.safetensors").unlink()
            torch.save(sd, d / "pytorch_model.bin")
        ours = engine.from_pretrained(d)
        assert {p.dtype for p in ours.parameters()} == {stored}
        assert torch.equal(ours.classifier.weight, sd["classifier.weight"])
        assert T.BertForSequenceClassification.from_pretrained(d, dtype="auto").dtype == stored


def test_bad_model_inputs(bert_dir):
    model = engine.from_pretrained(bert_dir)
    ids = inputs("BertModel")["input_ids"]
    msg = r"input_ids values must lie in \[0, 103\) \(the vocabulary\); got values in \[.*, 103\]"
    with pytest.raises(ValueError, match=msg):
        model(ids.masked_fill(ids == ids[0, 0], 103))
    with pytest.raises(ValueError, match=r"input_ids values must lie in \[0, 103\)"):
        model(-ids)
    with pytest.raises(ValueError, match="sequence length 25, longer than this model's maximum 24"):
        model(torch.randint(0, 103, (1, 25)))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor; got torch.float32"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        model(ids, attention_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="attention_mask values must be 0 or 1"):
        model(ids, attention_mask=torch.full_like(ids, 2))
    with pytest.raises(ValueError, match=r"token_type_ids values must be in \[0, 2\)"):
        model(ids, token_type_ids=torch.full_like(ids, 2))
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model([[1, 2, 3]])


def test_roberta_length_limit(tmp_path):
    make_hf("RobertaModel").save_pretrained(tmp_path)
    model = engine.from_pretrained(tmp_path)  # max_position_embeddings 26, pad 1 -> 24 tokens
    assert model(torch.randint(2, 101, (1, 24))).shape == (1, 24, 32)
    with pytest.raises(ValueError, match="maximum 24"):
        model(torch.randint(2, 101, (1, 25)))


def test_convert_cli_refuses_non_empty_dir(bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli(["convert", str(bert_dir), str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert cli(["convert", str(bert_dir), str(out), "--force"]) == 2  # keep.txt is the user's: never deleted
    assert "engine did not write (keep.txt)" in capsys.readouterr().err and (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    assert cli(["convert", str(bert_dir), str(out)]) == 0
    assert cli(["convert", str(bert_dir), str(out), "--force", "--dtype", "bfloat16"]) == 0
    model = engine.from_pretrained(out)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    names = set(load_file(out / "model.safetensors"))
    assert "layers.0.attn.qkv.weight" in names and not any(n.startswith("bert.") for n in names)
    assert cli(["convert", str(bert_dir), str(bert_dir), "--force"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert cli(["convert", str(out), str(tmp_path / "again")]) == 2  # already converted
    assert "already in engine's format" in capsys.readouterr().err


def test_converted_gpt2_layout(tmp_path):
    hf = make_hf("GPT2LMHeadModel")
    hf.save_pretrained(tmp_path / "hf")
    assert cli(["convert", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    sd = load_file(tmp_path / "out" / "model.safetensors")
    w = hf.transformer.h[1].mlp.c_fc.weight  # Conv1D (in, out)
    assert torch.equal(sd["blocks.1.mlp.fc.weight"], w.t())  # Linear (out, in)
    assert "lm_head.weight" not in sd  # tied: stored once, as wte
    extra = dict(sd, **{"blocks.0.attn.extra": torch.randn(2)})
    save_file(extra, str(tmp_path / "out" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected tensors .*blocks\.0\.attn\.extra"):
        engine.from_pretrained(tmp_path / "out")


def test_gpt2_conv1d_weights_stay_views_on_the_cpu(tmp_path):
    """On the CPU a GPT-2 Conv1D weight (stored (in, out)) loads as a transposed view of the tensor read, not a second,
    contiguous copy (the module docstring's peak host memory near one copy of the weights); convert stores it
    contiguous in the Linear layout (test_converted_gpt2_layout)."""
    hf = make_hf("GPT2LMHeadModel")
    hf.save_pretrained(tmp_path)
    w = engine.from_pretrained(tmp_path).blocks[1].mlp.fc.weight
    assert torch.equal(w, hf.transformer.h[1].mlp.c_fc.weight.t())
    assert not w.is_contiguous() and w.t().is_contiguous()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_from_transformers_t5_lm_head_tied_or_its_own(tied, capsys):
    """from_transformers on a T5 LM: a head tied to the shared embedding is that embedding (v1.0, with the
    d_model**-0.5 rescale), an untied head (flan-T5 / mT5 layout) keeps its own weights; logits equal transformers'.
    By default the model is frozen, in eval mode, and loads without a progress line (as from_pretrained)."""
    import transformers as T

    from engine.checkpoint import from_transformers

    cfg = T.T5Config(vocab_size=61, d_model=24, d_kv=5, d_ff=37, num_layers=2, num_heads=3,
                     relative_attention_num_buckets=8, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                     tie_word_embeddings=tied)
    torch.manual_seed(0)
    hf = perturb(T.T5ForConditionalGeneration(cfg).eval())
    if not tied:
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(61, 24))
    assert (hf.lm_head.weight is hf.shared.weight) == tied
    capsys.readouterr()  # only what from_transformers writes is checked below
    ours = from_transformers(hf)
    assert (ours.lm_head is None) == tied
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    assert capsys.readouterr().err == ""
    g = torch.Generator().manual_seed(1)
    ids, dec = torch.randint(2, 61, (2, 9), generator=g), torch.randint(2, 61, (2, 5), generator=g)
    dec[:, 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, decoder_input_ids=dec).logits
        got = ours(ids, decoder_input_ids=dec)
    assert got.shape == ref.shape and (got.double() - ref.double()).abs().max() < 1e-4


def test_more_layers_than_config_is_an_error(bert_dir, tmp_path):
    cfg = json.loads((bert_dir / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    with pytest.raises(ValueError, match=r"no place for them.*bert\.encoder\.layer\.1\.attention\.output\.dense"):
        engine.from_pretrained(copy_with(bert_dir, tmp_path / "m", config=cfg))


def test_sharded_pytorch_bin(tmp_path):
    hf = make_hf("AlbertForSequenceClassification")
    hf.save_pretrained(tmp_path / "hf")
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    names = sorted(sd)
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, d / file)
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    x = inputs("AlbertForSequenceClassification")
    with torch.no_grad():
        ref = hf(**x).logits
    out = engine.from_pretrained(d)(**x)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_device_errors_name_the_device(bert_dir):
    if not torch.cuda.is_available():  # a healthy checkpoint is not "corrupt" because there is no GPU
        with pytest.raises(ValueError, match="device 'cuda' needs CUDA, which is not available on this machine"):
            engine.from_pretrained(bert_dir, device="cuda")
    with pytest.raises(ValueError, match="device 'cuda:99': this machine has|needs CUDA"):
        engine.from_pretrained(bert_dir, device="cuda:99")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'; got 'tpu'"):
        engine.from_pretrained(bert_dir, device="tpu")
    with pytest.raises(ValueError, match="device must be .*got 'meta'"):
        engine.from_pretrained(bert_dir, device="meta")
    with pytest.raises(TypeError, match="device must be .*got float 3.5"):
        engine.from_pretrained(bert_dir, device=3.5)


def test_path_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="path is empty"):  # not the current directory
        engine.from_pretrained("")
    with pytest.raises(ValueError, match="cannot be used as a directory: File name too long"):
        engine.from_pretrained("x" * 5000)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        engine.from_pretrained(3)
    from engine.checkpoint import from_transformers

    with pytest.raises(TypeError, match="hf_model must be a transformers model"):
        from_transformers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_integer_tensor_named(bert_dir, tmp_path, fmt):
    sd = load_file(bert_dir / "model.safetensors")
    name = "bert.encoder.layer.0.output.dense.weight"
    sd[name] = (sd[name] * 100).to(torch.int32)
    d = copy_with(bert_dir, tmp_path / "m", sd)
    if fmt == "bin":
        (d / "model.safetensors").unlink()
        torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=f"{name} has dtype int32, expected a floating-point tensor"):
        engine.from_pretrained(d)


def test_default_dtype_is_the_configs_as_in_transformers(bert_dir, tmp_path):
    import transformers as T

    cfg = json.loads((bert_dir / "config.json").read_text())
    d = copy_with(bert_dir, tmp_path / "m", config={**cfg, "dtype": "float16"})  # fp32 weights
    hf = T.BertForSequenceClassification.from_pretrained(d)
    ours = engine.from_pretrained(d)
    assert {p.dtype for p in ours.parameters()} == {hf.dtype} == {torch.float16}
    assert {p.dtype for p in engine.from_pretrained(d, dtype="float32").parameters()} == {torch.float32}
    copy_with(bert_dir, d, config={**cfg, "dtype": "int8"})
    with pytest.raises(ValueError, match="config.json names dtype 'int8'.*pass dtype="):
        engine.from_pretrained(d)
    assert engine.from_pretrained(d, dtype="bfloat16").classifier.weight.dtype == torch.bfloat16
