"""Training: gradients of every parameter equal transformers' (same weights and inputs, fp32 CPU, dropout off),
for each family on a padded batch; ``model.train()`` / ``model.eval()`` switch dropout; ``trainable=True``.

Tiny random models with every parameter perturbed (models_util). The loss is a fixed random projection of the
main output over the real positions (outputs at padded positions are unspecified), so every parameter that
reaches a real position gets a gradient. Engine's fused tensors (qkv, GeGLU's [gate | up], GPT-2's transposed
Conv1D) are split back with the loader's own renaming (engine.models.hf_rename).
"""
from __future__ import annotations

import pytest
import torch
import transformers as T

from engine.checkpoint import from_transformers
from engine.models import hf_rename
from engine.models import blocks
from models_util import hf_config, hf_main, inputs, make_hf, perturb

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = ["BertForSequenceClassification", "BertForMaskedLM", "AlbertForSequenceClassification",
         "RobertaForSequenceClassification", "GPT2LMHeadModel", "t5-v1.0", "t5-v1.1"]


def _t5(variant: str) -> torch.nn.Module:
    extra = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if variant == "t5-v1.1" else {}
    cfg = T.T5Config(vocab_size=61, d_model=24, d_kv=5, d_ff=37, num_layers=2, num_heads=3,
                     relative_attention_num_buckets=8, relative_attention_max_distance=12, decoder_start_token_id=0,
                     eos_token_id=1, pad_token_id=0, architectures=["T5ForConditionalGeneration"], **extra)
    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _pair(arch: str):
    hf = _t5(arch) if arch.startswith("t5") else make_hf(arch)
    hf.eval().requires_grad_(True)
    if arch.startswith("t5"):
        g = torch.Generator().manual_seed(1)
        mask = torch.ones(3, 11, dtype=torch.long)
        mask[1, 7:] = 0
        mask[2, :5] = 0
        x = {"input_ids": torch.randint(2, 61, (3, 11), generator=g), "attention_mask": mask,
             "decoder_input_ids": torch.randint(2, 61, (3, 7), generator=g)}
    else:
        x = inputs(arch)
    return hf, from_transformers(hf, trainable=True), x


def _loss(out, mask: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """sum(out * w) over real positions (a sequence output (B, N, ...) is masked with the encoder mask)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=out.dtype)
    if out.dim() >= 2 and out.shape[:2] == mask.shape:
        w = w * mask.reshape(*mask.shape, *([1] * (out.dim() - 2)))
    return (out * w).sum()


def _grads_match(hf, ours, *, rtol: float = 2e-4) -> int:
    """Compare each HF parameter's gradient with the engine tensor (part) it loads into; returns the count."""
    cfg = ours.config
    params = dict(ours.named_parameters())
    seen, checked = set(), 0
    top = max(float(p.grad.abs().max()) for p in hf.parameters() if p.grad is not None)
    for name, p in hf.named_parameters():
        r = hf_rename(cfg, name)
        if r is None or not r.name:
            continue
        mine = params[r.name]
        seen.add(r.name)
        if p.grad is None:
            assert mine.grad is None or not mine.grad.any() or r.part >= 0, name
            continue
        g = mine.grad
        assert g is not None, f"{name} -> {r.name}: no gradient"
        if r.part >= 0:
            g = g.chunk(r.parts, 0)[r.part]
        if r.transpose:
            g = g.t()
        ref = p.grad
        if r.name.endswith("attn.qkv.bias") and r.part == 1:
            # The key bias's gradient is zero in exact arithmetic (softmax ignores a per-query shift): rounding
            # noise in both models, so both must be tiny next to the model's largest gradient.
            assert max(float(g.abs().max()), float(ref.abs().max())) < 1e-4 * top, name
            continue
        err = float((g.double() - ref.double()).abs().max()) / max(float(ref.double().abs().max()), 1e-6 * top)
        assert err < rtol, f"{name} -> {r.name}: relative error {err:.3g}"
        checked += 1
    assert seen == set(params), f"engine parameters no HF tensor maps to: {set(params) - seen}"
    return checked


# packed None: the CPU default for these batches (packed encoders); False: the padded-mask path (GPT-2 never packs).
@pytest.mark.parametrize("arch, packed", [(a, None) for a in ARCHS] + [(a, False) for a in ARCHS
                                                                     if a.startswith(("Bert", "t5"))])
def test_gradients_match_transformers(arch, packed):
    hf, ours, x = _pair(arch)
    ours.packed = packed
    mask = x["attention_mask"]
    hf_out = hf_main(arch if not arch.startswith("t5") else "T5ForConditionalGeneration", hf(**x))
    ours_out = ours(**x)
    hf_out, ours_out = (hf_out if isinstance(hf_out, tuple) else (hf_out,)), \
        (ours_out if isinstance(ours_out, tuple) else (ours_out,))
    sum(_loss(o, mask, seed=i) for i, o in enumerate(hf_out)).backward()
    sum(_loss(o, mask, seed=i) for i, o in enumerate(ours_out)).backward()
    assert _grads_match(hf, ours) > 10


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "GPT2LMHeadModel", "t5-v1.1",
                                  "RobertaForSequenceClassification"])
def test_train_mode_drops_out_and_eval_mode_does_not(arch):
    hf, ours, x = _pair(arch)
    cfg = ours.config
    assert cfg.hidden_dropout == 0.1 and cfg.attention_dropout == 0.1
    ref = ours(**x)
    ref = ref[0] if isinstance(ref, tuple) else ref
    ours.train()
    torch.manual_seed(0)
    a = ours(**x)
    b = ours(**x)
    assert not torch.equal(a, b), "train mode: two passes should draw different dropout masks"
    torch.manual_seed(0)
    assert torch.equal(ours(**x), a), "same seed, same masks"
    a.float().sum().backward()  # dropout is differentiable
    assert all(p.grad is not None for n, p in ours.named_parameters() if "pooler" not in n or "Bert" in arch)
    ours.eval()
    assert torch.equal(ours(**x), ref)
    hf_eval = hf_main(arch if not arch.startswith("t5") else "T5ForConditionalGeneration", hf(**x))
    torch.testing.assert_close(ref.detach()[x["attention_mask"].bool()] if ref.dim() >= 3 and not arch.startswith("t5")
                               else ref.detach(),
                               hf_eval.detach()[x["attention_mask"].bool()] if ref.dim() >= 3
                               and not arch.startswith("t5") else hf_eval.detach(), atol=2e-4, rtol=2e-4)


def test_train_mode_packs_unless_attention_dropout(monkeypatch):
    """Only attention dropout needs the padded-mask path: in train mode a model without it still runs a padded
    batch packed (and equals transformers in train mode with every dropout 0); with it, the padding mask runs."""
    packs = []
    real_unpad = blocks.unpad
    monkeypatch.setattr(blocks, "unpad", lambda *a, **k: packs.append(1) or real_unpad(*a, **k))
    cfg = hf_config("BertForSequenceClassification")
    cfg.attention_probs_dropout_prob = cfg.hidden_dropout_prob = 0.0
    torch.manual_seed(0)
    hf = perturb(T.BertForSequenceClassification(cfg)).train()
    ours = from_transformers(hf, trainable=True).train()
    x = inputs("BertForSequenceClassification")
    torch.testing.assert_close(ours(**x), hf(**x).logits, atol=2e-4, rtol=2e-4)
    assert packs, "train mode without attention dropout: the packed path"
    _, ours, x = _pair("BertForSequenceClassification")  # attention dropout 0.1
    packs.clear()
    ours.train()(**x)
    assert not packs, "attention dropout runs on the padded-mask path"


def test_dropout_keeps_about_one_minus_p():
    """The embeddings' dropout in train mode zeroes about p of the elements and scales the rest by 1 / (1 - p)."""
    _, ours, x = _pair("BertForSequenceClassification")
    emb = ours.embeddings
    ids = torch.randint(2, 100, (8, 24), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(24).expand_as(ids)
    ref = emb(ids, pos, None)
    emb.train()
    torch.manual_seed(1)
    out = emb(ids, pos, None)
    zero = (out == 0) & (ref != 0)
    rate = zero.float().mean().item()
    assert abs(rate - 0.1) < 0.03, rate  # 6144 draws: 3 standard deviations are 0.011
    torch.testing.assert_close(out[~zero], ref[~zero] / 0.9)


def test_from_transformers_trainable_copies_and_refuses_non_bools():
    hf = make_hf("BertForSequenceClassification")
    ours = from_transformers(hf, trainable=True)
    assert all(p.requires_grad for p in ours.parameters()) and not ours.training
    with torch.no_grad():
        ours.embeddings.word.weight.add_(1.0)
    assert not torch.equal(ours.embeddings.word.weight, hf.bert.embeddings.word_embeddings.weight)
    assert not any(p.requires_grad for p in from_transformers(hf).parameters())
    with pytest.raises(TypeError, match="trainable must be True or False"):
        from_transformers(hf, trainable="yes")
