"""engine.patch / engine.unpatch on transformers models of every family: parity with the unpatched model (fp32 CPU,
< 1e-4; and through the kernels in Triton's interpreter), generation with caches, training mode, clean unpatching."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.bert import modeling_bert

import engine
from engine.hf.attention import NAME
from engine.hf.patching import PatchReport
from hf_util import KernelSpy, batch, main_output, make, max_rel_err, twin

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RTOL = 1e-4

EXPECTED = {  # kinds of patch each family gets (attention always)
    "BertForMaskedLM": {"add_layer_norm": 4, "bias_gelu": 2, "packing": 1, "layer_norm": 2},
    "RobertaForSequenceClassification": {"add_layer_norm": 4, "bias_gelu": 2, "packing": 1, "layer_norm": 1},
    "AlbertForMaskedLM": {"add_layer_norm": 8, "bias_gelu": 4, "packing": 1, "layer_norm": 2},
    "ElectraForPreTraining": {"add_layer_norm": 4, "bias_gelu": 2, "packing": 1, "layer_norm": 1},
    "DistilBertForMaskedLM": {"add_layer_norm": 2, "bias_gelu": 2, "packing": 1, "layer_norm": 2},
    "GPT2LMHeadModel": {"bias_gelu": 2, "layer_norm": 5},
}


def _counts(report: PatchReport) -> dict[str, int]:
    return {k: len(v) for k, v in report.patched.items() if k != "attention"}


def _bound(model: torch.nn.Module) -> list[str]:
    """Names of modules with an instance-level forward (what patch adds)."""
    return [n for n, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("pack", [None, True, False])
@pytest.mark.parametrize("arch", list(EXPECTED))
def test_patched_model_matches_transformers(arch, pack):
    ref = make(arch)
    model = twin(ref)
    report = engine.patch(model, pack=pack)
    assert report.attention == NAME and model.config._attn_implementation == NAME
    assert _counts(report) == EXPECTED[arch], str(report)
    x = batch(arch)
    with torch.no_grad():
        err = max_rel_err(main_output(model(**x)), main_output(ref(**x)), x["attention_mask"])
    assert err < RTOL


def _varlen_calls(monkeypatch, record=lambda *a, **k: 1) -> list:
    """A list that gets ``record(*args, **kwargs)`` for each engine.ops.varlen_attention call (which still runs)."""
    import engine.ops as ops

    calls = []
    real = ops.varlen_attention
    monkeypatch.setattr(ops, "varlen_attention", lambda *a, **k: calls.append(record(*a, **k)) or real(*a, **k))
    return calls


def test_padded_encoder_batches_run_packed(monkeypatch):
    calls = _varlen_calls(monkeypatch, lambda *a, **k: (a[0].shape, k["validate"]))
    model = make("BertForMaskedLM")
    engine.patch(model, pack=True)
    x = batch("BertForMaskedLM")  # lengths 11, 7, 3
    with torch.no_grad():
        out = model.bert(**x).last_hidden_state
    # the 21 real tokens, once per layer; the lists unpad_input built (marked) are not validated again
    assert calls == [((21, 4, 9), False)] * 2
    assert (out[x["attention_mask"] == 0] == 0).all()  # packed output: zeros at the padding
    calls.clear()
    with torch.no_grad():
        model.bert(**x, output_hidden_states=True)  # per-layer outputs requested: the padded path runs
        model.bert(input_ids=x["input_ids"])  # no padding: nothing to pack
    model.train()
    model.bert(**x)  # training: the padded path runs
    assert calls == []


def test_a_frozen_encoder_packs_with_grad_mode_on(monkeypatch):
    """Outside no_grad, packing waits only on autograd: a model whose parameters require grad runs padded; once frozen
    (nothing for autograd to record) its padded batch runs packed, with transformers' result."""
    calls = _varlen_calls(monkeypatch)
    ref = make("BertForMaskedLM")
    model = twin(ref)
    engine.patch(model, pack=True)
    x = batch("BertForMaskedLM")
    assert torch.is_grad_enabled()
    model(**x)
    assert calls == []  # autograd records: the padded path
    model.requires_grad_(False)
    ours = model(**x).logits
    assert len(calls) == 2 and not ours.requires_grad  # one varlen call per layer
    with torch.no_grad():
        theirs = ref(**x).logits
    assert max_rel_err(ours, theirs, x["attention_mask"]) < RTOL


def test_a_per_query_mask_is_not_taken_for_key_padding(monkeypatch):
    """A materialised (B, 1, N, N) mask (here causal, plus key padding in row 1) has the key-padding shape but not its
    stride 0 over the queries: the encoder must not pack by its first row; the result equals transformers'."""
    calls = _varlen_calls(monkeypatch)
    ref = make("BertForMaskedLM")
    model = twin(ref)
    engine.patch(model, pack=True)
    ids = batch("BertForMaskedLM", B=2, N=6)["input_ids"]
    keep = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    keep[1, :, :, 4:] = False
    keep |= torch.eye(6, dtype=torch.bool)
    with torch.no_grad():
        ours, theirs = (m(input_ids=ids, attention_mask=keep).logits for m in (model, ref))
    assert max_rel_err(ours, theirs) < RTOL and calls == []


def test_auto_packing_follows_engines_cpu_rule(monkeypatch):
    calls = _varlen_calls(monkeypatch)
    model = make("DistilBertForMaskedLM")
    engine.patch(model)
    full = batch("DistilBertForMaskedLM", B=4, N=20)
    full["attention_mask"][:] = 1
    full["attention_mask"][0, -1] = 0  # 1/80 of the tokens are padding: below 1/16, not packed
    with torch.no_grad():
        model(**full)
        assert calls == []
        model(**batch("DistilBertForMaskedLM"))  # 12 / 33 padding: packed
    assert len(calls) == 2


def test_hidden_states_and_attentions_keep_transformers_shapes():
    ref = make("ElectraForPreTraining")
    model = twin(ref)
    engine.patch(model, pack=True)
    x = batch("ElectraForPreTraining")
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="attention weights"):
        out = model(**x, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        theirs = ref(**x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(out.hidden_states + out.attentions, theirs.hidden_states + theirs.attentions):
        assert max_rel_err(a, b, x["attention_mask"]) < RTOL


def test_unpatch_restores_transformers_exactly():
    ref = make("BertForMaskedLM", attn="eager")
    original_forward = modeling_bert.BertOutput.forward
    model = twin(ref)
    report = engine.patch(model)
    assert _bound(model) and modeling_bert.BertOutput.forward is original_forward  # classes untouched
    assert _bound(ref) == []  # another instance of the same classes is untouched
    undone = engine.unpatch(model)
    assert undone.attention == "eager" and model.config._attn_implementation == "eager"
    assert _counts(undone) == _counts(report)
    assert _bound(model) == [] and not any(k.startswith("_engine") for m in model.modules() for k in m.__dict__)
    x = batch("BertForMaskedLM")
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref(**x).logits)
    assert engine.unpatch(model).count == 0  # nothing left to undo


def test_patch_twice_and_deepcopy():
    model = make("GPT2LMHeadModel")
    first = engine.patch(model)
    second = engine.patch(model)
    assert _counts(first) == _counts(second)
    clone = copy.deepcopy(model)
    assert _bound(clone) == _bound(model)
    assert clone.transformer.h[0].mlp.forward.__self__ is clone.transformer.h[0].mlp
    assert engine.unpatch(model).attention == "sdpa"  # the implementation before the first patch


def test_activations_engine_does_not_fuse_are_left_alone():
    model = make("BertForMaskedLM", hidden_act="relu")
    report = engine.patch(model)
    assert "bias_gelu" not in report.patched
    assert report.skipped["bert.encoder.layer.0.intermediate"].startswith("activation ReLU")
    ref = make("BertForMaskedLM", hidden_act="relu")
    x = batch("BertForMaskedLM")
    with torch.no_grad():
        assert max_rel_err(model(**x).logits, ref(**x).logits, x["attention_mask"]) < RTOL


def test_report_text_lists_every_kind_and_what_was_left_alone():
    """str(PatchReport): the implementation, one line per kind (count, the first three names, '...' past three), one
    line per module left alone; the model itself is named '<model>'."""
    model = make("BertForMaskedLM", hidden_act="relu")
    report = engine.patch(model)
    assert report.patched["attention"] == ["<model>"] and report.count == 1 + 2 + 1 + 4
    lines = str(report).splitlines()
    assert lines[0] == "attn_implementation: engine"
    assert sorted(lines[1:5]) == sorted([
        "attention: 1 (<model>)",
        "layer_norm: 2 (bert.embeddings.LayerNorm, cls.predictions.transform.LayerNorm)",
        "packing: 1 (bert.encoder)",
        "add_layer_norm: 4 (bert.encoder.layer.0.attention.output, bert.encoder.layer.0.output, "
        "bert.encoder.layer.1.attention.output, ...)"])
    assert lines[5:] == [f"left alone: bert.encoder.layer.{i}.intermediate: activation ReLU is not a GELU engine fuses"
                         for i in (0, 1)]
    undone = engine.unpatch(model)
    assert str(undone).splitlines()[0] == "attn_implementation: sdpa" and "attention: 1 (<model>)" in str(undone)
    assert str(engine.unpatch(model)) == "nothing patched"


def test_linear_layers_with_hooks_keep_their_forward():
    """A hooked (or adapter-wrapped, quantised) up projection must still be called: its bias + GELU is not fused."""
    model = make("BertForMaskedLM")
    seen = []
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda *a: seen.append(1))
    report = engine.patch(model)
    assert report.patched["bias_gelu"] == ["bert.encoder.layer.1.intermediate"]
    assert "no hooks" in report.skipped["bert.encoder.layer.0.intermediate"]
    with torch.no_grad():
        model(**batch("BertForMaskedLM"))
    assert seen == [1]


def test_unknown_families_keep_their_modules():
    model = make("T5ForConditionalGeneration")
    report = engine.patch(model)
    assert set(report.patched) == {"attention"} and _bound(model) == []  # T5LayerNorm is not nn.LayerNorm


def test_patch_rejects_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        engine.patch("bert-base-uncased")
    with pytest.raises(TypeError, match="pack"):
        engine.patch(make("BertForMaskedLM"), pack="yes")


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "GPT2LMHeadModel"])
def test_training_mode_is_respected(arch):
    """Dropout stays active, gradients flow and equal the unpatched model's (dropout off for that comparison)."""
    drop = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if arch.startswith("Bert") else \
        {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    ref = make(arch, **drop).train()
    model = twin(ref)
    engine.patch(model)
    x = batch(arch)
    labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, -100)
    for m in (model, ref):
        m(**x, labels=labels).loss.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None and max_rel_err(p.grad, q.grad) < 1e-4, name
    noisy = make(arch).train()
    engine.patch(noisy)
    with torch.no_grad():
        assert not torch.equal(noisy(**x).logits, noisy(**x).logits)  # dropout still active


def test_generate_with_a_patched_gpt2():
    ref = make("GPT2LMHeadModel")
    model = twin(ref)
    engine.patch(model)
    x = batch("GPT2LMHeadModel", N=7)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        ours, theirs = model.generate(**x, **kw), ref.generate(**x, **kw)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert max(max_rel_err(a, b) for a, b in zip(ours.scores, theirs.scores)) < RTOL


def test_bert_as_a_decoder_generates_with_a_cache():
    """BertLMHeadModel (is_decoder): causal attention with a DynamicCache through the patch; its encoder is not
    packed (decoder config)."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=61, hidden_size=32, num_attention_heads=4, intermediate_size=37, num_hidden_layers=2,
                       max_position_embeddings=32, is_decoder=True, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    from models_util import perturb

    ref = perturb(T.BertLMHeadModel(cfg)).eval()
    model = twin(ref)
    report = engine.patch(model)
    assert "packing" not in report.patched and "encoder-only" in report.skipped["bert.encoder"]
    x = batch("GPT2LMHeadModel", N=7)  # left padding
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        ours, theirs = model.generate(**x, **kw), ref.generate(**x, **kw)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert max(max_rel_err(a, b) for a, b in zip(ours.scores, theirs.scores)) < RTOL


# ---- the kernels through the patch (Triton's interpreter on CPU) ---------------------------------------------
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.parametrize("arch, overrides, launches", [
    # per layer: varlen attention, 2 add+LN, 1 bias+GELU; plus the embeddings' and the MLM head's LayerNorm
    ("BertForMaskedLM", {}, {"varlen": 2, "layer_norm": 2 * 2 + 2, "gelu": 2}),
    # 3 layer calls over 2 groups of one shared layer (group of layer i: int(i / 1.5) = 0, 0, 1)
    ("AlbertForMaskedLM", {"num_hidden_layers": 3, "inner_group_num": 1},
     {"varlen": 3, "layer_norm": 3 * 2 + 2, "gelu": 3}),
    ("DistilBertForMaskedLM", {}, {"varlen": 2, "layer_norm": 2 * 2 + 2, "gelu": 2}),
    # left-padded: the padded-mask kernel; ln_1 and ln_2 per layer, ln_f
    ("GPT2LMHeadModel", {}, {"attention": 2, "layer_norm": 2 * 2 + 1, "gelu": 2}),
])
def test_patched_models_run_the_kernels(arch, overrides, launches, monkeypatch):
    spy = KernelSpy(monkeypatch)
    ref = make(arch, **overrides)
    model = twin(ref)
    engine.patch(model, pack=True)
    x = batch(arch, B=2, N=6)
    with torch.no_grad():
        err = max_rel_err(main_output(model(**x)), main_output(ref(**x)), x["attention_mask"])
    assert err < RTOL
    assert {k: v for k, v in spy.calls.items() if v} == launches


@pytest.mark.usefixtures("triton_backend")
def test_patched_gpt2_generates_through_the_kernels(monkeypatch):
    spy = KernelSpy(monkeypatch)
    ref = make("GPT2LMHeadModel")
    model = twin(ref)
    engine.patch(model)
    x = {"input_ids": batch("GPT2LMHeadModel", B=1, N=4)["input_ids"]}
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(**x, **kw), ref.generate(**x, **kw))
    # prefill: the attention kernel; then 2 decode steps x 2 layers: flash-decoding; bias+GELU in all 3 passes
    assert spy.calls["attention"] == 2 and spy.calls["decode"] == 4 and spy.calls["gelu"] == 6


# ---- CUDA: the compiled kernels through the patch --------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "AlbertForMaskedLM", "DistilBertForMaskedLM"])
def test_patched_encoders_on_cuda_bf16(arch, monkeypatch):
    """bf16 on the GPU: packed varlen attention and the fused kernels run; the error against transformers in fp32
    stays within twice transformers' own bf16 error (and a small floor)."""
    spy = KernelSpy(monkeypatch)
    ref = make(arch, hidden_size=64, num_attention_heads=4) if arch != "DistilBertForMaskedLM" else \
        make(arch, dim=64, n_heads=4)
    x = {k: v.cuda() for k, v in batch(arch, B=4, N=37).items()}
    with torch.no_grad():
        gold = ref.cuda()(**x).logits.float()
        theirs = twin(ref).to(torch.bfloat16)(**x).logits.float()
        model = twin(ref).to(torch.bfloat16)
        engine.patch(model)
        ours = model(**x).logits.float()
    keep = x["attention_mask"]
    assert max_rel_err(ours, gold, keep) <= max(2 * max_rel_err(theirs, gold, keep), 2e-2)
    assert spy.calls["varlen"] > 0 and spy.calls["layer_norm"] > 0 and spy.calls["gelu"] > 0


@pytest.mark.gpu
def test_patched_gpt2_generates_on_cuda(monkeypatch):
    spy = KernelSpy(monkeypatch)
    ref = make("GPT2LMHeadModel").cuda()
    model = twin(ref)
    engine.patch(model)
    x = {k: v.cuda() for k, v in batch("GPT2LMHeadModel", N=7).items()}
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        ours, theirs = model.generate(**x, **kw), ref.generate(**x, **kw)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert max(max_rel_err(a, b) for a, b in zip(ours.scores, theirs.scores)) < 1e-3
    assert spy.calls["attention"] > 0 and spy.calls["gelu"] > 0
