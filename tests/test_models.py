"""Every supported HF class: a tiny random transformers model, saved, loaded by engine, same main output.

Routes: save_pretrained (safetensors), through ``python -m engine convert``, pytorch_model.bin, sharded
safetensors. Reference: transformers in fp32 on CPU; relative error < 1e-4 on the real (unpadded) positions.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine.__main__ import main as cli
from engine.models import blocks
from models_util import assert_close_valid, family, hf_main, inputs, make_hf

ARCHS = [
    "GPT2LMHeadModel", "GPT2Model",
    "BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForQuestionAnswering",
    "BertForNextSentencePrediction", "BertForPreTraining",
    "AlbertModel", "AlbertForMaskedLM", "AlbertForSequenceClassification",
    "RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification",
]
_CACHE: dict[str, tuple] = {}


def reference(arch: str, tmp_path_factory) -> tuple[Path, dict, object, torch.nn.Module]:
    """(saved dir, inputs, transformers' main output, the HF model), built once per class."""
    if arch not in _CACHE:
        hf = make_hf(arch)
        d = tmp_path_factory.mktemp(arch)
        hf.save_pretrained(d)
        x = inputs(arch)
        with torch.no_grad():
            ref = hf_main(arch, hf(**x))
        _CACHE[arch] = (d, x, ref, hf)
    return _CACHE[arch]


def save_route(route: str, arch: str, src: Path, hf: torch.nn.Module, out: Path) -> Path:
    if route == "safetensors":
        return src
    if route == "convert":
        assert cli(["convert", str(src), str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["engine_format"] == 1
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((src / "config.json").read_text())
    if route == "bin":  # the full state dict, tied duplicates included, as older checkpoints ship it
        torch.save({k: v.clone() for k, v in hf.state_dict().items()}, out / "pytorch_model.bin")
    else:  # sharded
        hf.save_pretrained(out, max_shard_size="20KB")
        assert (out / "model.safetensors.index.json").is_file()
    return out


@pytest.mark.parametrize("route", ["safetensors", "convert", "bin", "sharded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_transformers(arch, route, tmp_path, tmp_path_factory):
    src, x, ref, hf = reference(arch, tmp_path_factory)
    path = save_route(route, arch, src, hf, tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unused tensors" warning for a checkpoint of the same class
        model = engine.from_pretrained(path)
    assert_close_valid(model(**x), ref, x["attention_mask"])


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padding-mask"])
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "AlbertModel", "RobertaForSequenceClassification"])
def test_forced_paths_match(arch, packed, tmp_path_factory):
    """Both encoder paths, forced on the CPU: packed real tokens (varlen) and the padded batch with a key-padding
    mask give the same real-token outputs."""
    src, x, ref, _ = reference(arch, tmp_path_factory)
    model = engine.from_pretrained(src)
    model.packed = packed
    assert_close_valid(model(**x), ref, x["attention_mask"])


def test_cpu_packs_padded_batches_by_default(monkeypatch, tmp_path_factory):
    """On the CPU a batch with enough padding runs packed unless the user chose; a full batch never packs."""
    src, x, ref, _ = reference("BertModel", tmp_path_factory)
    model = engine.from_pretrained(src)
    packs = []
    real_unpad = blocks.unpad
    monkeypatch.setattr(blocks, "unpad", lambda *a, **k: packs.append(1) or real_unpad(*a, **k))
    assert_close_valid(model(**x), ref, x["attention_mask"])
    assert packs and x["attention_mask"].eq(0).float().mean() >= 1 / 16
    packs.clear()
    model(x["input_ids"], attention_mask=torch.ones_like(x["attention_mask"]))
    assert not packs
    # The threshold: at least 1/16 of the tokens padding. 1 of 16 packs, 1 of 22 does not (the padding mask runs);
    # both still equal transformers on the real tokens.
    hf = reference("BertModel", tmp_path_factory)[3]
    for n, want in ((8, True), (11, False)):
        y = {k: v[:2, :n] for k, v in x.items()}
        y["attention_mask"] = torch.ones_like(y["input_ids"])
        y["attention_mask"][1, -1] = 0
        packs.clear()
        with torch.no_grad():
            assert_close_valid(model(**y), hf_main("BertModel", hf(**y)), y["attention_mask"])
        assert bool(packs) is want, (n, packs)


class _CudaMask(torch.Tensor):
    """A CPU tensor that reports itself as CUDA: pack_by_default's CUDA rule without a GPU."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_pack_by_default_rule_per_device():
    """CUDA masks always pack (even without padding: varlen spends nothing on it) unless cuda=False; CPU masks at
    >= 1/16 padding; other devices never."""
    full = torch.ones(2, 40, dtype=torch.long)
    light = full.clone()
    light[0, -1] = 0  # 1 of 80 padding: under the CPU threshold
    for m in (full, light):
        assert blocks.pack_by_default(m.as_subclass(_CudaMask))
        assert not blocks.pack_by_default(m.as_subclass(_CudaMask), cuda=False)
        assert not blocks.pack_by_default(m)
    for n, pads, want in ((16, 1, True), (17, 1, False), (32, 2, True), (33, 2, False)):  # the CPU edge, exactly
        m = torch.ones(1, n, dtype=torch.long)
        m[0, :pads] = 0
        assert blocks.pack_by_default(m) is want, (n, pads)
        assert not blocks.pack_by_default(m.to("meta"))


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "BertForPreTraining", "AlbertForMaskedLM"])
def test_half_precision(arch, dtype, rtol, tmp_path_factory):
    src, x, ref, _ = reference(arch, tmp_path_factory)
    model = engine.from_pretrained(src, dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    out = model(**x)
    assert_close_valid(tuple(o.float() for o in out) if isinstance(out, tuple) else out.float(), ref,
                       x["attention_mask"], rtol=rtol)


def test_albert_shared_layers_stored_once(tmp_path_factory):
    src, _, _, hf = reference("AlbertModel", tmp_path_factory)
    model = engine.from_pretrained(src)
    sched = model.schedule()
    assert len(sched) == 8  # num_hidden_layers (4) x inner_group_num (2)
    assert len({id(m) for m in sched}) == 4  # num_hidden_groups (2) x inner_group_num (2)
    assert sched[0] is sched[2] and sched[4] is sched[6]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("layers,groups,inner", [(5, 2, 1), (3, 2, 2), (7, 3, 1), (2, 3, 1)])
def test_albert_groups_not_dividing_layers(layers, groups, inner, tmp_path):
    """Any (num_hidden_layers, num_hidden_groups), as transformers takes them: layer i runs group
    int(i / (layers / groups)) (5 in 2: groups 0, 0, 0, 1, 1; 2 in 3: group 2 holds weights nothing runs)."""
    import transformers as T

    from models_util import hf_config

    cfg = hf_config("AlbertForMaskedLM")
    cfg.num_hidden_layers, cfg.num_hidden_groups, cfg.inner_group_num = layers, groups, inner
    torch.manual_seed(layers * 10 + groups)
    hf = T.AlbertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path)
    model = engine.from_pretrained(tmp_path)
    span = layers / groups
    expect = [model.groups[int(i / span)][j] for i in range(layers) for j in range(inner)]
    assert all(a is b for a, b in zip(model.schedule(), expect, strict=True))
    x = inputs("AlbertForMaskedLM")
    with torch.no_grad():
        ref = hf(**x).logits
    assert_close_valid(model(**x), ref, x["attention_mask"])


def test_module_behaviour(tmp_path_factory):
    src, x, ref, _ = reference("BertForSequenceClassification", tmp_path_factory)
    model = engine.from_pretrained(src, dtype="bfloat16")
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    model = engine.from_pretrained(src).to(torch.float64)
    out = model(**x)
    assert out.dtype == torch.float64
    assert_close_valid(out, ref, x["attention_mask"])
    names = {n for n, _ in model.named_parameters()}
    assert "layers.0.attn.qkv.weight" in names and "classifier.weight" in names


def test_hub_gpt2_layout(tmp_path, tmp_path_factory):
    """The Hub's gpt2 file: no transformer. prefix, attn.bias / masked_bias buffers, no lm_head (tied)."""
    src, x, ref, hf = reference("GPT2LMHeadModel", tmp_path_factory)
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(24, 24)).view(1, 1, 24, 24)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    assert_close_valid(engine.from_pretrained(tmp_path)(**x), ref, x["attention_mask"])


def test_old_gamma_beta_names_and_untied_decoder(tmp_path):
    """LayerNorm.gamma / .beta names, and an MLM decoder with its own weight (tie_word_embeddings=False)."""
    from models_util import hf_config
    import transformers as T

    cfg = hf_config("BertForMaskedLM")
    cfg.tie_word_embeddings = False
    torch.manual_seed(3)
    hf = T.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert hf.cls.predictions.decoder.weight.data_ptr() != hf.bert.embeddings.word_embeddings.weight.data_ptr()
    hf.save_pretrained(tmp_path / "hf")
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v.clone()
          for k, v in hf.state_dict().items()}
    out = tmp_path / "old"
    out.mkdir()
    torch.save(sd, out / "pytorch_model.bin")
    (out / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    x = inputs("BertForMaskedLM")
    with torch.no_grad():
        ref = hf(**x).logits
    assert_close_valid(engine.from_pretrained(out)(**x), ref, x["attention_mask"])


def test_bert_without_token_type_ids_and_mask(tmp_path_factory):
    src, x, _, hf = reference("BertModel", tmp_path_factory)
    ids = x["input_ids"]
    with torch.no_grad():
        ref = hf(input_ids=ids).last_hidden_state
    model = engine.from_pretrained(src)
    assert_close_valid(model(ids), ref, torch.ones_like(ids))
    hidden, pooled = model(ids, return_pooled=True)
    with torch.no_grad():
        assert_close_valid(pooled, hf(input_ids=ids).pooler_output, torch.ones(ids.shape[0], 1))


def test_bert_folder_without_token_types(tmp_path, tmp_path_factory):
    """engine's own format allows type_vocab_size 0 (GPT-2 and T5 folders write it): a BERT folder saying so has no
    token-type table, so its embeddings are word + position, as transformers' BertModel's with a zero token-type
    row 0; any token_type_ids are then out of range."""
    src, x, _, hf = reference("BertModel", tmp_path_factory)
    out = tmp_path / "conv"
    assert cli(["convert", str(src), str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "type_vocab_size": 0}))
    sd = load_file(out / "model.safetensors")
    del sd["embeddings.token_type.weight"]
    save_file(sd, out / "model.safetensors")
    model = engine.from_pretrained(out)
    assert model.embeddings.token_type is None
    plain = copy.deepcopy(hf)
    ids, mask = x["input_ids"], x["attention_mask"]
    with torch.no_grad():
        plain.embeddings.token_type_embeddings.weight.zero_()
        assert_close_valid(model(ids, mask), plain(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    with pytest.raises(ValueError, match=r"token_type_ids values must be in \[0, 0\)"):
        model(ids, token_type_ids=torch.zeros_like(ids))


def test_one_token_batches_match_transformers(tmp_path_factory):
    """Sequences of a single token are valid input (the shortest allowed), with and without a mask."""
    src, x, _, hf = reference("BertModel", tmp_path_factory)
    model = engine.from_pretrained(src)
    y = {k: v[:, :1] for k, v in x.items()}
    with torch.no_grad():
        assert_close_valid(model(**y), hf(**y).last_hidden_state, y["attention_mask"])
        assert_close_valid(model(y["input_ids"]), hf(input_ids=y["input_ids"]).last_hidden_state,
                           y["attention_mask"])


def test_one_bad_value_among_good_ones_is_named(tmp_path_factory):
    """A single out-of-range entry in a mask or in token types that are otherwise valid (their minimum in range) is
    refused, the error giving the true [min, max] of that tensor."""
    src, x, _, _ = reference("BertModel", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids, mask, types = x["input_ids"], x["attention_mask"].clone(), x["token_type_ids"].clone()
    types[1, 2] = 2
    with pytest.raises(ValueError, match=r"token_type_ids values must be in \[0, 2\); got values in \[0, 2\]"):
        model(ids, attention_mask=mask, token_type_ids=types)
    mask[0, 3] = 2
    with pytest.raises(ValueError, match=r"attention_mask values must be 0 or 1; got values in \[0, 2\]"):
        model(ids, attention_mask=mask, token_type_ids=x["token_type_ids"])


def test_roberta_positions_follow_padding(tmp_path_factory):
    """Same tokens, once right-padded with pad_token_id: real positions give the same outputs."""
    src, _, _, hf = reference("RobertaModel", tmp_path_factory)
    model = engine.from_pretrained(src)
    ids = torch.randint(2, 101, (1, 9), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([ids, torch.ones(1, 4, dtype=torch.long)], 1)
    mask = (padded != 1).long()
    a, b = model(ids), model(padded, attention_mask=mask)
    assert_close_valid(b[:, :9], a, torch.ones(1, 9))
    with torch.no_grad():
        assert_close_valid(b, hf(input_ids=padded, attention_mask=mask).last_hidden_state, mask)


def test_triton_backend_tiny(tmp_path_factory, triton_backend):
    """A tiny BERT (packed, varlen) and GPT-2 (padding mask) through the Triton kernels (interpreter on CPU)."""
    from engine import ops

    if not all(hasattr(ops, n) for n in ("layer_norm", "add_layer_norm", "bias_gelu")):
        pytest.fail("engine.ops layer_norm / add_layer_norm / bias_gelu are missing")
    for arch in ("BertForSequenceClassification", "GPT2LMHeadModel"):
        src, x, ref, _ = reference(arch, tmp_path_factory)
        model = engine.from_pretrained(src)
        if arch.startswith("Bert"):
            model.packed = True  # the varlen path, as CUDA runs it
        small = {k: v[:2, :7] if family(arch) != "gpt2" else v[:2, -7:] for k, v in x.items()}
        with torch.no_grad():
            r = hf_main(arch, reference(arch, tmp_path_factory)[3](**small))
        assert_close_valid(model(**small), r, small["attention_mask"], rtol=1e-3)


class _ListCache:
    """A minimal KV cache through GPT-2's hook: appends k/v per layer, attends with a causal offset."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def attend(self, layer_idx, q, k, v, *, scale):
        if layer_idx in self.k:
            k = torch.cat([self.k[layer_idx], k], 2)
            v = torch.cat([self.v[layer_idx], v], 2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        T, S = q.shape[2], k.shape[2]
        keep = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)  # bottom-right causal
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_token_type_ids_match_transformers(arch, tmp_path_factory):
    """GPT-2 takes token_type_ids as transformers does: embedded with the token table and added."""
    src, x, _, hf = reference(arch, tmp_path_factory)
    model = engine.from_pretrained(src)
    types = torch.randint(0, 50, x["input_ids"].shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf_main(arch, hf(**x, token_type_ids=types))
        plain = hf_main(arch, hf(**x))
    assert not torch.allclose(ref, plain)
    assert_close_valid(model(**x, token_type_ids=types), ref, x["attention_mask"])


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_cache_hook_matches_full_forward(arch, tmp_path_factory):
    """Prefill 5 tokens then decode 3 one at a time through ``cache=``: same outputs as one full pass."""
    src, x, _, _ = reference(arch, tmp_path_factory)
    model = engine.from_pretrained(src)
    ids = x["input_ids"][:2, :8]
    full = model(ids)
    cache = _ListCache()
    steps = [model(ids[:, :5], position_ids=torch.arange(5)[None], cache=cache)]
    for t in range(5, 8):
        steps.append(model(ids[:, t:t + 1], position_ids=torch.tensor([[t]]), cache=cache))
    assert_close_valid(torch.cat(steps, 1), full, torch.ones(2, 8))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, cache=_ListCache())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 5e-3), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "BertForPreTraining", "AlbertForMaskedLM",
                                  "RobertaForSequenceClassification"])
def test_cuda_kernels_match_transformers(arch, dtype, rtol, tmp_path_factory):
    """On CUDA: weights straight to the GPU (safe_open), our kernels (packed varlen for padded encoders)."""
    src, x, ref, _ = reference(arch, tmp_path_factory)
    model = engine.from_pretrained(src, device="cuda", dtype=dtype)
    assert all(p.is_cuda and p.dtype == dtype for p in model.parameters())
    out = model(**{k: v.cuda() for k, v in x.items()})
    out = tuple(o.float().cpu() for o in out) if isinstance(out, tuple) else out.float().cpu()
    assert_close_valid(out, ref, x["attention_mask"], rtol=rtol)
