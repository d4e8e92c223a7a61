"""T5 / mT5 / UMT5 against transformers: tiny random models with every parameter perturbed, saved, loaded by engine.

Forward: the main output of each HF class, max abs difference < 1e-4 in fp32 on the CPU, over padded batches (encoder
padding on the left and on the right, a right-padded decoder), through safetensors, ``engine convert`` and
pytorch_model.bin. Generation: greedy decoding token-identical to transformers' generate (padded batches, EOS
stops, a repetition penalty); sampling reproducible; streaming equal to generate. Bad inputs and configs: errors
that name the field.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import engine
from engine.__main__ import main as cli
from engine.seq2seq import stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 61
# variant -> (HF class, config class, extra config)
VARIANTS = {
    "t5-v1.0": ("T5ForConditionalGeneration", T.T5Config, {}),  # ReLU, tied head with the d_model**-0.5 rescale
    "t5-v1.1": ("T5ForConditionalGeneration", T.T5Config,  # GeGLU, untied head (flan-T5's layout)
                dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "t5-model": ("T5Model", T.T5Config, dict(num_decoder_layers=3)),
    "t5-encoder": ("T5EncoderModel", T.T5Config, dict(feed_forward_proj="gated-gelu")),
    "mt5": ("MT5ForConditionalGeneration", T.MT5Config, dict(tie_word_embeddings=False)),
    "mt5-model": ("MT5Model", T.MT5Config, {}),
    "mt5-encoder": ("MT5EncoderModel", T.MT5Config, {}),
    "umt5": ("UMT5ForConditionalGeneration", T.UMT5Config, {}),  # a bias table in every layer
    "umt5-model": ("UMT5Model", T.UMT5Config, dict(feed_forward_proj="relu")),
    "umt5-encoder": ("UMT5EncoderModel", T.UMT5Config, {}),
    "t5-d16": ("T5ForConditionalGeneration", T.T5Config,  # a head dim the decode kernel is built for
               dict(feed_forward_proj="gated-gelu", d_kv=16)),
}
LM_VARIANTS = ["t5-v1.0", "t5-v1.1", "mt5", "umt5"]
_CACHE: dict[str, tuple] = {}


def make_hf(variant: str, seed: int = 0, noise: float = 0.3) -> torch.nn.Module:
    cls, cfg_cls, extra = VARIANTS[variant]
    untie = extra.get("tie_word_embeddings", True) is False  # the config says so: no d_model**-0.5 rescale
    cfg = cfg_cls(**{**dict(vocab_size=VOCAB, d_model=24, d_kv=5, d_ff=37, num_layers=2, num_heads=3,
                            relative_attention_num_buckets=8, relative_attention_max_distance=12,
                            decoder_start_token_id=0, eos_token_id=1, pad_token_id=0), **extra})
    torch.manual_seed(seed)
    model = getattr(T, cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # nothing left at its initial value: norms and bias tables included
            p.add_(torch.randn_like(p) * noise)
        if untie:  # an LM head of its own, as flan-T5 / mT5 checkpoints ship it
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 24))
    return model


def save(hf: torch.nn.Module, d: Path) -> Path:
    """save_pretrained, keeping an untied lm_head (transformers 5.x writes only the shared embedding)."""
    hf.save_pretrained(d)
    if hf.lm_head.weight is not hf.shared.weight if hasattr(hf, "lm_head") else False:
        sd = load_file(d / "model.safetensors")
        sd["lm_head.weight"] = hf.lm_head.weight.detach().clone()
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((d / "config.json").read_text())
        cfg["tie_word_embeddings"] = False
        cfg.pop("scale_decoder_outputs", None)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def inputs(B: int = 3, N: int = 11, Nd: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Encoder padding on the right (row 1) and the left (row 2); the decoder right-padded in row 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (B, N), generator=g)
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, N - 4:] = 0
    mask[2, :5] = 0
    dec = torch.randint(2, VOCAB, (B, Nd), generator=g)
    dec[:, 0] = 0  # decoder_start_token_id
    dmask = torch.ones(B, Nd, dtype=torch.long)
    dmask[0, Nd - 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dmask}


def reference(variant: str, tmp_path_factory) -> tuple[Path, torch.nn.Module, dict, torch.Tensor, torch.Tensor]:
    """(saved dir, HF model, inputs, HF main output, mask of the positions to compare), built once."""
    if variant not in _CACHE:
        hf = make_hf(variant)
        d = save(hf, tmp_path_factory.mktemp(variant))
        x = inputs()
        with torch.no_grad():
            if "encoder" in variant:
                x = {k: x[k] for k in ("input_ids", "attention_mask")}
                ref, valid = hf(**x).last_hidden_state, x["attention_mask"]
            else:
                out = hf(**x)
                ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
                valid = x["decoder_attention_mask"]
        _CACHE[variant] = (d, hf, x, ref, valid.bool())
    return _CACHE[variant]


def assert_max_abs(ours: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor, atol: float = 1e-4) -> None:
    assert ours.shape == ref.shape and torch.isfinite(ours).all()
    err = (ours.double() - ref.double())[valid].abs().max().item()
    assert err < atol, f"max abs difference {err:.3g} >= {atol}"


@pytest.mark.parametrize("route", ["safetensors", "convert"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_transformers(variant, route, tmp_path, tmp_path_factory):
    src, _, x, ref, valid = reference(variant, tmp_path_factory)
    path = src
    if route == "convert":
        assert cli(["convert", str(src), str(tmp_path / "conv")]) == 0
        path = tmp_path / "conv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = engine.from_pretrained(path)
    assert model.config.architecture == VARIANTS[variant][0]
    with torch.no_grad():
        assert_max_abs(model(**x), ref, valid)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padding-mask"])
@pytest.mark.parametrize("variant", ["t5-encoder", "umt5", "mt5-model"])
def test_forced_encoder_paths_match(variant, packed, tmp_path_factory):
    """Both encoder paths for a padded batch: packed real tokens (varlen attention, the bias by the same distances)
    and the padded batch with a key-padding mask."""
    src, _, x, ref, valid = reference(variant, tmp_path_factory)
    model = engine.from_pretrained(src)
    model.packed = packed
    with torch.no_grad():
        assert_max_abs(model(**x), ref, valid)


def test_rows_with_gaps_are_not_packed(monkeypatch, tmp_path_factory):
    """Packing would close a gap of padding inside a row and change the distances across it: such a batch runs the
    padding mask, and still matches transformers (which counts positions through the gap)."""
    from engine.models import blocks

    src, hf, _, _, _ = reference("t5-encoder", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask = _gen_inputs()
    mask[0, 3:5] = 0  # a gap inside row 0
    packs = []
    real_unpad = blocks.unpad
    monkeypatch.setattr(blocks, "unpad", lambda *a, **k: packs.append(1) or real_unpad(*a, **k))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_max_abs(model(ids, mask), ref, mask.bool())
        assert not packs
        mask[0, 3:5] = 1
        assert_max_abs(model(ids, mask), hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask.bool())
        assert packs  # without the gap the same batch packs (CPU, > 1/16 padding)


def test_bin_checkpoint_and_untied_head(tmp_path, tmp_path_factory):
    src, hf, x, ref, valid = reference("t5-v1.1", tmp_path_factory)
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    torch.save({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path / "pytorch_model.bin")
    model = engine.from_pretrained(tmp_path)
    assert model.lm_head is not None and not model.config.scale_decoder_outputs
    assert model.decoder.layers[0].mlp.wi.weight.shape == (2 * 37, 24)  # wi_0 | wi_1 stacked
    with torch.no_grad():
        assert_max_abs(model(**x), ref, valid)
    tied = engine.from_pretrained(reference("t5-v1.0", tmp_path_factory)[0])
    assert tied.lm_head is None and tied.config.scale_decoder_outputs


def test_build_model_default_head_follows_the_config(tmp_path_factory):
    """build_model(config) without with_lm_head: an LM head of its own exactly when the config unties it (flan-T5 /
    v1.1 folders, which ship lm_head.weight), else the shared embedding (v1.0): the module from_pretrained builds."""
    from engine.models import build_model

    for variant, own in (("t5-v1.0", False), ("t5-v1.1", True)):
        loaded = engine.from_pretrained(reference(variant, tmp_path_factory)[0])
        with torch.device("meta"):
            built = build_model(loaded.config)
        assert (built.lm_head is not None) is own and (loaded.lm_head is not None) is own
        assert {k: v.shape for k, v in built.state_dict().items()} == \
            {k: v.shape for k, v in loaded.state_dict().items()}


def test_encoder_class_from_a_full_checkpoint(tmp_path_factory):
    """T5EncoderModel from a T5ForConditionalGeneration folder: the decoder is dropped with a warning (transformers
    drops it silently) and the encoder output is transformers' T5EncoderModel's."""
    src, hf, x, _, _ = reference("t5-v1.0", tmp_path_factory)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["T5EncoderModel"]
    d = tmp_path_factory.mktemp("enc_from_full")
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="decoder"):
        model = engine.from_pretrained(d)
    enc = T.T5EncoderModel.from_pretrained(d).eval()
    with torch.no_grad():
        ref = enc(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        assert_max_abs(model(x["input_ids"], x["attention_mask"]), ref, x["attention_mask"].bool())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["t5-v1.1", "umt5"])
def test_half_precision(variant, dtype, device, tmp_path):
    """Engine in half precision vs the float64 result: at most 2x transformers' own error in that dtype (plus a
    small floor), the rule the kernels are held to. Milder weights than the parity models: their outputs are
    well-conditioned enough for half precision to mean something. (On CUDA: engine's RMSNorm / GeGLU kernels.)"""
    hf = make_hf(variant, seed=2, noise=0.05)
    src = save(hf, tmp_path)
    x = inputs()
    valid = x["decoder_attention_mask"].bool()
    with torch.no_grad():
        ref = engine.from_pretrained(src, dtype=torch.float64)(**x)
        out = engine.from_pretrained(src, dtype=dtype, device=device)(**{k: v.to(device) for k, v in x.items()})
        out = out.double().cpu()
        low = copy.deepcopy(hf).to(device=device, dtype=dtype)(**{k: v.to(device) for k, v in x.items()})
        low = low.logits.double().cpu()
    scale = ref[valid].abs().max()
    err, hf_err = (out - ref)[valid].abs().max() / scale, (low - ref)[valid].abs().max() / scale
    assert err <= 2 * hf_err + 1e-3, f"relative error {err:.3g}, transformers' own {hf_err:.3g}"


def test_fp16_clamps_the_residual_stream_like_transformers(tmp_path):
    """A layer whose output overflows float16: transformers clamps the stream and stays finite; so does engine,
    with the same values."""
    hf = make_hf("t5-encoder", seed=3)
    with torch.no_grad():
        hf.encoder.block[0].layer[1].DenseReluDense.wo.weight.mul_(30000.0)
    hf.save_pretrained(tmp_path)
    x = inputs()
    ids, mask = x["input_ids"], x["attention_mask"]
    model = engine.from_pretrained(tmp_path, dtype=torch.float16)
    with torch.no_grad():
        wide = model.encoder.layers[0].mlp(torch.ones(1, 24, dtype=torch.float16))
        assert not torch.isfinite(wide).all()  # the case is real: this layer overflows float16
        ref = hf.half()(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        out = model(ids, mask).float()
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    valid = mask.bool()
    err = (out - ref)[valid].abs().max() / ref[valid].abs().max()
    assert err < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["t5-v1.0", "t5-v1.1", "umt5"])
def test_cuda_fp32_matches_transformers(variant, tmp_path_factory):
    """On CUDA (engine's RMSNorm, GeGLU and flash kernels; the biased self-attention on PyTorch until the kernels
    gather the bias): fp32 logits and greedy generation against transformers on the CPU."""
    src, hf, x, ref, valid = reference(variant, tmp_path_factory)
    model = engine.from_pretrained(src, device="cuda")
    ids, mask = _gen_inputs()
    with torch.no_grad():
        assert_max_abs(model(**{k: v.cuda() for k, v in x.items()}).cpu(), ref, valid, atol=1e-3)
        ref_ids = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=[])
    out = model.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=12, eos_token_id=[])
    assert torch.equal(out.cpu(), ref_ids)
    # every row stops by step 5: on CUDA generate asks "all stopped?" every CHECK_EVERY steps, a stream every step;
    # both end where the last row stopped (a stream yields no trailing pad-only steps)
    eos_ids = sorted({int(t) for t in ref_ids[:, 5]})
    with torch.no_grad():
        ref_stop = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos_ids)
    kw = dict(attention_mask=mask.cuda(), max_new_tokens=12, eos_token_id=eos_ids)
    assert ref_stop.shape[1] <= 6 and torch.equal(model.generate(ids.cuda(), **kw).cpu(), ref_stop)
    assert torch.equal(torch.stack(list(stream(model, ids.cuda(), **kw)), 1), ref_stop[:, 1:])


# ---- generation -----------------------------------------------------------------------------------------------
def _gen_inputs(B: int = 4, N: int = 9, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (B, N), generator=g)
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, N - 3:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_greedy_generate_matches_transformers(variant, tmp_path_factory):
    src, hf, _, _, _ = reference(variant, tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask = _gen_inputs()
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=[])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    assert out.shape == (4, 21) and torch.equal(out, ref)
    # EOS: stop on a token the rows emit mid-way; finished rows are padded with the config's pad id (0)
    eos = int(ref[0, 6])
    with torch.no_grad():
        ref_eos = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos)
    out_eos = model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(out_eos, ref_eos) and (out_eos == eos).any()
    # every row stops (EOS: a token each row emits by step 5 / 6): generate and streaming end at the step where
    # the last row stopped, as HF does (no trailing pad-only steps)
    for k in (5, 6):
        eos_ids = sorted({int(t) for t in ref[:, k]})
        with torch.no_grad():
            ref_stop = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos_ids)
        assert ref_stop.shape[1] <= k + 1
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos_ids), ref_stop)
        steps = list(stream(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos_ids))
        assert torch.equal(torch.stack(steps, 1), ref_stop[:, 1:].cpu())
    with torch.no_grad():  # the config's defaults (eos_token_id=1, pad 0, start 0)
        ref_default = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=12), ref_default)


def test_triton_kernels_gather_the_bias_and_match_transformers(monkeypatch, tmp_path_factory):
    """ENGINE_BACKEND=triton (the interpreter on the CPU): the encoder packed (the varlen kernel) and padded (the dense
    kernel under the key-padding mask), the decoder's causal forward (dense) and greedy generation (the decode
    kernel) all take the bias into the kernels, and match transformers."""
    pytest.importorskip("triton")
    import engine.kernels.attention as attn_k
    import engine.kernels.attention.decode as dec_k

    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    calls = []
    for mod, name in ((attn_k, "attention_fwd"), (attn_k, "varlen_fwd"), (dec_k, "decode_attention_fwd")):
        def spy(*a, _real=getattr(mod, name), _name=name, **k):
            if k.get("relative_position_bias") is not None:
                calls.append(_name)
            return _real(*a, **k)
        monkeypatch.setattr(mod, name, spy)
    src, hf, x, ref, valid = reference("t5-d16", tmp_path_factory)
    model = engine.from_pretrained(src)
    for packed in (True, False):
        model.packed = packed
        with torch.no_grad():
            assert_max_abs(model(**x), ref, valid)
    assert {"varlen_fwd", "attention_fwd"} <= set(calls), calls
    ids, mask = _gen_inputs(B=3)
    with torch.no_grad():
        ref_ids = hf.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=[])
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[]), ref_ids)
    assert "decode_attention_fwd" in calls


def test_greedy_with_repetition_penalty_matches_transformers(tmp_path_factory):
    src, hf, _, _, _ = reference("t5-v1.1", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask = _gen_inputs(seed=7)
    # a penalty above and below 1; a start token other than 0 (the start token counts as seen, as in HF)
    for penalty, start in ((1.7, 0), (0.6, 5), (2.0, 5)):
        kw = dict(attention_mask=mask, max_new_tokens=15, repetition_penalty=penalty, eos_token_id=[],
                  decoder_start_token_id=start)
        with torch.no_grad():
            ref = hf.generate(ids, do_sample=False, **kw)
        out = model.generate(ids, **kw)
        assert torch.equal(out, ref), (penalty, start)


def test_sampling_stream_and_start_token(tmp_path_factory):
    src, _, _, _, _ = reference("umt5", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask = _gen_inputs()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, top_p=0.9, temperature=0.8, seed=11,
              eos_token_id=[])
    a, b = model.generate(ids, **kw), model.generate(ids, **kw)
    assert torch.equal(a, b) and a.shape == (4, 11) and (a[:, 0] == 0).all()
    assert not torch.equal(a, model.generate(ids, **{**kw, "seed": 12}))
    steps = list(stream(model, ids, **kw))
    assert len(steps) == 10 and torch.equal(torch.stack(steps, 1), a[:, 1:].cpu())
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(torch.stack(list(stream(model, ids, attention_mask=mask, max_new_tokens=10,
                                               eos_token_id=[])), 1), greedy[:, 1:])
    started = model.generate(ids, attention_mask=mask, max_new_tokens=3, decoder_start_token_id=5)
    assert (started[:, 0] == 5).all()
    assert model.generate(ids[:1], eos_token_id=[]).shape == (1, 33)  # max_new_tokens defaults to 32


# ---- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(tmp_path_factory):
    src, _, x, _, _ = reference("t5-v1.0", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask = x["input_ids"], x["attention_mask"]
    cases = [
        (lambda: model(ids, mask), ValueError, "decoder_input_ids must be given"),
        (lambda: model(ids, mask, decoder_input_ids=x["decoder_input_ids"][:2]), ValueError, "batch size"),
        (lambda: model(ids, decoder_input_ids=x["decoder_input_ids"] + VOCAB), ValueError, "decoder_input_ids values"),
        (lambda: model(ids, decoder_input_ids=x["decoder_input_ids"].float()), TypeError, "decoder_input_ids"),
        (lambda: model(ids, decoder_input_ids=x["decoder_input_ids"], decoder_attention_mask=mask), ValueError,
         "decoder_attention_mask"),
        (lambda: model(ids[:, :0], decoder_input_ids=x["decoder_input_ids"]), ValueError, "input_ids"),
        (lambda: model.generate(ids, attention_mask=torch.zeros_like(mask)), ValueError, "no real token"),
        (lambda: model.generate(ids, max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda: model.generate(ids, top_p=2.0), ValueError, "top_p"),
        (lambda: model.generate(ids, decoder_start_token_id=VOCAB), ValueError, "decoder_start_token_id"),
        (lambda: list(stream(model, ids, cuda_graph=True)), TypeError, "cuda_graph"),
    ]
    for call, exc, word in cases:
        with pytest.raises(exc, match=word):
            call()
    enc = engine.from_pretrained(reference("t5-encoder", tmp_path_factory)[0])
    with pytest.raises(ValueError, match="encoder only"):
        enc(ids, decoder_input_ids=x["decoder_input_ids"])
    with pytest.raises(TypeError, match="T5ForConditionalGeneration"):
        enc.generate(ids)


def test_missing_tensors_and_bad_configs_are_named(tmp_path, tmp_path_factory):
    src, _, _, _, _ = reference("umt5", tmp_path_factory)
    sd = load_file(src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())

    def folder(name, tensors, config):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config))
        return d

    for missing, engine_name in [("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                                  "encoder.layers.1.attn.rel_bias.weight"),
                                 ("decoder.block.0.layer.1.EncDecAttention.v.weight", "decoder.layers.0.cross.kv"),
                                 ("decoder.final_layer_norm.weight", "decoder.ln_f.weight")]:
        d = folder(missing.replace(".", "_"), {k: v for k, v in sd.items() if k != missing}, cfg)
        with pytest.raises(ValueError, match=engine_name.replace(".", r"\.")):
            engine.from_pretrained(d)
    for field, value, word in [("feed_forward_proj", "gated-silu", "feed_forward_proj"),
                               ("feed_forward_proj", "gelu-gated", "feed_forward_proj"),
                               ("is_decoder", True, "is_decoder"),
                               ("relative_attention_num_buckets", 2, "relative_attention_num_buckets")]:
        bad = {k: v for k, v in cfg.items() if k not in ("dense_act_fn", "is_gated_act")}
        bad[field] = value
        d = folder(f"{field}_{value}", sd, bad)
        with pytest.raises(ValueError, match=word):
            engine.from_pretrained(d)
