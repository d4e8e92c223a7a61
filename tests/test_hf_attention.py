"""attn_implementation="engine": registration, the mask function, the attention function against transformers' "sdpa"
(its reference semantics) and whole models of every family against unpatched transformers (fp32 CPU, < 1e-4)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoModelForMaskedLM
from transformers import masking_utils as mu
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import engine  # noqa: F401 - registers "engine"
from engine.hf import _hook
from engine.hf.attention import NAME, PACKED_MARK, attention_forward, attention_mask, register
from hf_util import CONFIGS, KernelSpy, batch, main_output, make, max_rel_err, twin

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RTOL = 1e-4


# ---- registration ------------------------------------------------------------------------------------------------
def test_import_engine_registers_without_importing_transformers():
    # another import hook first on sys.meta_path (as pytest's, typeguard's) that finds transformers' modules itself:
    # engine's finder goes in front of it, so the modules it finds are still registered with
    code = textwrap.dedent("""
        import importlib.machinery, sys

        class Hook:
            def find_spec(self, name, path, target=None):
                if name.startswith("transformers"):
                    return importlib.machinery.PathFinder.find_spec(name, path, target)

        sys.meta_path.insert(0, Hook())
        import engine
        assert "transformers" not in sys.modules, "import engine imported transformers"
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
        from engine.hf.attention import attention_forward, attention_mask
        assert AttentionInterface._global_mapping["engine"] is attention_forward
        assert AttentionMaskInterface._global_mapping["engine"] is attention_mask
        assert not any(type(f).__name__ == "_Finder" for f in sys.meta_path), "the finder did not remove itself"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_install_registers_with_transformers_already_loaded(monkeypatch):
    monkeypatch.delitem(AttentionInterface._global_mapping, NAME)
    monkeypatch.delitem(mu.AttentionMaskInterface._global_mapping, NAME)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    _hook.install()
    assert AttentionInterface._global_mapping[NAME] is attention_forward
    assert mu.AttentionMaskInterface._global_mapping[NAME] is attention_mask
    assert not any(isinstance(f, _hook._Finder) for f in sys.meta_path)  # nothing left to wait for: no finder


def test_the_finder_hands_back_what_it_cannot_wrap(monkeypatch):
    """A module it waits for that no finder finds (a transformers without it): None, so the import fails with
    ModuleNotFoundError as it would without engine; a spec without a loader, or with a legacy loader (no
    exec_module), comes back as found, unwrapped."""
    import importlib
    import importlib.machinery

    name = "transformers.engine_test_no_such_module"
    finder = _hook._Finder({name})
    found = []

    class Stub:  # a finder after engine's that returns whatever spec the case needs
        def find_spec(self, fullname, path, target=None):
            return found[0] if found and fullname == name else None

    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path, Stub()])
    assert finder.find_spec(name, None) is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)

    class Legacy:
        def load_module(self, fullname):
            raise AssertionError("not called here")

    for loader in (None, Legacy()):
        spec = importlib.machinery.ModuleSpec(name, loader)
        found[:] = [spec]
        assert finder.find_spec(name, None) is spec and spec.loader is loader


def test_a_registration_that_fails_warns_and_never_breaks_the_import(monkeypatch):
    """A transformers whose modeling_utils lacks AttentionInterface (a renamed API): install() and the import hook's
    loader warn, naming the module and the error, and go on (the mask function still registers; the module still
    executes and the finder still lets go of it); engine.hf.register() then raises the error itself."""
    bare = types.ModuleType(_hook.MODELING)  # no AttentionInterface
    monkeypatch.setitem(sys.modules, _hook.MODELING, bare)
    monkeypatch.delitem(mu.AttentionMaskInterface._global_mapping, NAME)
    with pytest.warns(RuntimeWarning, match=r"could not register its attention with transformers\.modeling_utils "
                                            r"\(AttributeError: .*AttentionInterface.*engine\.hf\.register\(\)"):
        _hook.install()
    assert mu.AttentionMaskInterface._global_mapping[NAME] is attention_mask

    ran = []

    class Loader:
        def exec_module(self, module):
            ran.append(module)

    finder = _hook._Finder({_hook.MODELING})
    with pytest.warns(RuntimeWarning, match="could not register its attention with transformers.modeling_utils"):
        _hook._Loader(Loader(), _hook.MODELING, finder).exec_module(bare)
    assert ran == [bare] and not finder._waiting
    with pytest.raises(ImportError, match="AttentionInterface"):
        register()


def test_from_pretrained_with_attn_implementation_engine(tmp_path):
    ref = make("BertForMaskedLM")
    ref.save_pretrained(tmp_path)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path, attn_implementation=NAME).eval()
    assert model.config._attn_implementation == NAME
    x = batch("BertForMaskedLM")
    with torch.no_grad():
        assert max_rel_err(model(**x).logits, ref(**x).logits, x["attention_mask"]) < RTOL


# ---- the mask function -------------------------------------------------------------------------------------------
def test_mask_is_a_stride0_view_of_the_padding_with_sdpa_values():
    pad = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    ours = attention_mask(2, 5, 5, mask_function=mu.bidirectional_mask_function, attention_mask=pad)
    ref = mu.sdpa_mask(2, 5, 5, mask_function=mu.bidirectional_mask_function, attention_mask=pad)
    assert ours.shape == ref.shape == (2, 1, 5, 5) and ours.stride(2) == 0
    assert torch.equal(ours, ref)
    full = torch.ones(2, 5, dtype=torch.bool)
    assert attention_mask(2, 5, 5, mask_function=mu.bidirectional_mask_function, attention_mask=full,
                          allow_is_bidirectional_skip=True) is None


@pytest.mark.parametrize("q_len, kv_len, q_offset", [(5, 5, 0), (1, 6, 5), (3, 8, 5)])
def test_mask_delegates_causal_patterns_to_sdpa_mask(q_len, kv_len, q_offset):
    pad = torch.ones(2, kv_len, dtype=torch.bool)
    pad[1, :2] = False  # left padding
    kw = dict(q_offset=q_offset, mask_function=mu.causal_mask_function, attention_mask=pad)
    assert torch.equal(attention_mask(2, q_len, kv_len, **kw), mu.sdpa_mask(2, q_len, kv_len, **kw))


# ---- the attention function against transformers' sdpa ----------------------------------------------------------
class Layer(torch.nn.Module):
    """What transformers passes as ``module``: is_causal, and (for GQA) num_key_value_groups."""

    def __init__(self, is_causal: bool, groups: int = 1) -> None:
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups


def _qkv(B, H, Hkv, Nq, Nk, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, H, D, generator=g).transpose(1, 2)  # transformers' (B, H, N, D) views
    k = torch.randn(B, Nk, Hkv, D, generator=g).transpose(1, 2)
    v = torch.randn(B, Nk, Hkv, D, generator=g).transpose(1, 2)
    return q, k, v


CASES = {  # (H, Hkv, Nq, Nk, causal module, mask kind)
    "encoder-padding": (4, 4, 7, 7, False, "padding"),
    "decoder-prefill": (4, 4, 7, 7, True, None),
    "decoder-left-padding": (4, 4, 7, 7, True, "causal"),
    "decode-step-cache": (4, 4, 1, 9, True, None),
    "decode-step-padding": (4, 4, 1, 9, True, "causal"),
    "chunk-after-cache": (4, 4, 3, 9, True, "causal"),
    "static-cache-prefill": (4, 4, 5, 9, True, None),
    "gqa": (6, 2, 7, 7, True, None),
    "gqa-decode": (6, 2, 1, 9, True, None),
    "gqa-decode-padding": (6, 3, 1, 9, True, "causal"),
    "mqa": (4, 1, 7, 7, True, "causal"),  # one KV head for every query head (multi-query attention)
    "mqa-decode": (4, 1, 1, 9, True, None),
    "additive-float": (4, 4, 5, 8, False, "float"),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_matches_sdpa_integration(case):
    H, Hkv, Nq, Nk, causal, kind = CASES[case]
    B, D = 2, 12
    q, k, v = _qkv(B, H, Hkv, Nq, Nk, D)
    pad = torch.ones(B, Nk, dtype=torch.bool)
    pad[1, :3] = False
    mask = None
    if kind == "padding":
        mask = attention_mask(B, Nq, Nk, mask_function=mu.bidirectional_mask_function, attention_mask=pad)
    elif kind == "causal":
        mask = mu.sdpa_mask(B, Nq, Nk, q_offset=Nk - Nq, mask_function=mu.causal_mask_function, attention_mask=pad)
    elif kind == "float":
        mask = torch.randn(B, 1, Nq, Nk) - 4 * (~pad[:, None, None, :]).float()
    layer = Layer(causal, H // Hkv)
    ours, w = attention_forward(layer, q, k, v, mask, scaling=0.37)
    ref, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=0.37)
    assert w is None and ours.shape == (B, Nq, H, D) and ours.is_contiguous()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_position_bias_is_honoured_like_sdpa():
    """T5: the bias is added to the scores (folded into an additive mask), with padding and with causality."""
    q, k, v = _qkv(2, 4, 4, 6, 6, 8)
    bias = torch.randn(1, 4, 6, 6)
    pad = torch.ones(2, 6, dtype=torch.bool)
    pad[0, 4:] = False
    for causal, mask in ((False, pad[:, None, None, :].expand(2, 1, 6, 6)), (True, None)):
        layer = Layer(causal)
        ours, _ = attention_forward(layer, q, k, v, mask, scaling=1.0, position_bias=bias)
        ref, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=1.0, position_bias=bias)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        plain, _ = attention_forward(layer, q, k, v, mask, scaling=1.0)
        assert (plain - ours).abs().max() > 1e-2  # the bias really changed the result


def _segments_reference(q, k, v, cu, causal):
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=causal))
    return torch.cat(outs, dim=2).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])  # int64: lists users build with torch.tensor
@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences_attend_within_their_own_sequence(causal, dtype):
    q, k, v = _qkv(1, 4, 4, 12, 12, 8)
    cu = torch.tensor([0, 5, 6, 12], dtype=dtype)
    ref = _segments_reference(q, k, v, cu, causal)
    ours, _ = attention_forward(Layer(causal), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                max_length_q=6, max_length_k=6)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    ours, _ = attention_forward(Layer(causal), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)  # max from cu
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_packed_sequences_stay_apart_in_the_eager_fallback():
    layer = make("BertForMaskedLM").bert.encoder.layer[0].attention.self  # 4 heads of 9, not causal
    q, k, v = _qkv(1, 4, 4, 12, 12, 9)
    cu = torch.tensor([0, 5, 6, 12], dtype=torch.int32)
    with pytest.warns(RuntimeWarning, match="attention weights"):
        ours, weights = attention_forward(layer, q, k, v, None, scaling=1 / 3, output_attentions=True,
                                          cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert weights[..., :5, 5:].abs().max() == 0  # no weight across sequences
    torch.testing.assert_close(ours, _segments_reference(q, k, v, cu, False), rtol=1e-5, atol=1e-5)


def test_packed_queries_shorter_than_their_keys_are_bottom_right_causal():
    """cu_seq_lens_q != cu_seq_lens_k (each sequence's queries are its last tokens, as a chunk after its cache): the
    varlen path and the eager fallback's block mask both align causality bottom-right, per sequence (vs float64)."""
    layer = make("GPT2LMHeadModel").transformer.h[0].attn  # causal, 2 heads of 16
    q, k, v = _qkv(1, 2, 2, 5, 9, 16)
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 4, 9], dtype=torch.int32)
    outs, rows = [], []
    for sq, eq, sk, ek in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        see = torch.ones(eq - sq, ek - sk, dtype=torch.bool).tril(diagonal=(ek - sk) - (eq - sq))
        s = (q[:, :, sq:eq].double() @ k[:, :, sk:ek].double().transpose(-1, -2) * 0.25).masked_fill(~see, -torch.inf)
        outs.append(torch.softmax(s, dim=-1) @ v[:, :, sk:ek].double())
    gold = torch.cat(outs, dim=2).transpose(1, 2)
    kw = dict(scaling=0.25, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)
    ours, _ = attention_forward(layer, q, k, v, None, **kw)
    torch.testing.assert_close(ours.double(), gold, rtol=1e-5, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="attention weights"):
        eager, _ = attention_forward(layer, q, k, v, None, output_attentions=True, **kw)
    torch.testing.assert_close(eager.double(), gold, rtol=1e-5, atol=1e-5)


def test_packed_sequences_with_dropout_use_a_block_diagonal_mask():
    q, k, v = _qkv(1, 2, 2, 9, 9, 8)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    seg = torch.tensor([0] * 4 + [1] * 5)
    keep = (seg[:, None] == seg[None, :]) & torch.ones(9, 9, dtype=torch.bool).tril()
    torch.manual_seed(3)
    ours, _ = attention_forward(Layer(True), q, k, v, None, dropout=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    torch.manual_seed(3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=0.3).transpose(1, 2)
    torch.testing.assert_close(ours, ref)


def test_packed_sequences_need_a_batch_of_one():
    q, k, v = _qkv(2, 2, 2, 4, 4, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="batch of one"):
        attention_forward(Layer(False), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)


@pytest.mark.parametrize("h_kv, n_q", [(3, 4), (3, 1), (0, 4), (0, 1)])  # n_q 1: the grouped decode step
def test_gqa_heads_must_divide(h_kv, n_q):
    q, k, v = _qkv(1, 4, h_kv, n_q, 4, 8)
    with pytest.raises(ValueError, match="divide"):
        attention_forward(Layer(False), q, k, v, None)


def test_what_engine_cannot_compute_goes_to_the_models_eager_attention():
    """Attention weights and unknown options (here softcap) are never dropped: the model's own eager function runs."""
    model = make("BertForMaskedLM", attn=NAME)
    eager = twin(model)
    eager.set_attn_implementation("eager")
    x = batch("BertForMaskedLM")
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="attention weights"):
        out = model(**x, output_attentions=True)
    with torch.no_grad():
        ref = eager(**x, output_attentions=True)
    assert len(out.attentions) == 2
    for a, r in zip(out.attentions, ref.attentions):
        torch.testing.assert_close(a, r)
    layer = model.bert.encoder.layer[0].attention.self
    q, k, v = _qkv(1, 4, 4, 5, 5, 9)
    with pytest.warns(RuntimeWarning, match="softcap"):
        ours, w = attention_forward(layer, q, k, v, None, scaling=1 / 3, softcap=30.0)
    assert w is not None
    with pytest.raises(NotImplementedError, match="eager_attention_forward"):
        attention_forward(Layer(False), q, k, v, None, softcap=30.0)


def test_eager_fallback_of_a_decode_step_sees_the_whole_cache():
    """One new token of a causal layer against 9 cached keys, no mask, attention weights requested: the eager path
    must not spell out a causal mask for the single query (it would see key 0 alone); as sdpa, and the weights are
    the float64 softmax over every key."""
    layer = make("GPT2LMHeadModel").transformer.h[0].attn
    assert layer.is_causal
    q, k, v = _qkv(2, 2, 2, 1, 9, 16)
    with pytest.warns(RuntimeWarning, match="attention weights"):
        ours, weights = attention_forward(layer, q, k, v, None, scaling=0.25, output_attentions=True)
    ref, _ = sdpa_attention_forward(layer, q, k, v, None, scaling=0.25)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    gold = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.25, dim=-1)
    torch.testing.assert_close(weights.double(), gold, rtol=1e-5, atol=1e-6)



def test_a_module_without_is_causal_is_causal_as_in_sdpa():
    """transformers' sdpa takes a module with no is_causal attribute (and no is_causal argument) as causal; so must
    engine's path and its eager fallback (attention weights requested): the same output, no weight on a later key."""
    layer = make("GPT2LMHeadModel").transformer.h[0].attn
    del layer.is_causal  # an instance attribute; GPT2Attention has no class-level default
    assert not hasattr(layer, "is_causal")
    q, k, v = _qkv(2, 2, 2, 7, 7, 16)
    ref, _ = sdpa_attention_forward(layer, q, k, v, None, scaling=0.25)
    ours, _ = attention_forward(layer, q, k, v, None, scaling=0.25)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="attention weights"):
        eager, weights = attention_forward(layer, q, k, v, None, scaling=0.25, output_attentions=True)
    torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5)
    assert weights.triu(diagonal=1).abs().max() == 0

# ---- whole models ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_models_with_engine_attention_match_sdpa(arch):
    ref = make(arch)
    model = twin(ref)
    model.set_attn_implementation(NAME)
    assert model.config._attn_implementation == NAME
    x = batch(arch)
    with torch.no_grad():
        err = max_rel_err(main_output(model(**x)), main_output(ref(**x)), None if arch.startswith("T5") else
                          x["attention_mask"])
    assert err < RTOL


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "MistralForCausalLM"])
def test_decoders_with_grouped_kv_heads_and_sliding_windows(name):
    """Families engine does not load itself but that use the interface: Llama (grouped KV heads) and Mistral
    (grouped KV heads and a sliding window of 4, which the mask carries). Padded batch, then generation."""
    import transformers as T

    cfg = dict(vocab_size=61, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
               num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if name.startswith("Mistral"):
        cfg["sliding_window"] = 4
    torch.manual_seed(0)
    config = getattr(T, name.replace("ForCausalLM", "Config"))(**cfg)
    config._attn_implementation = "sdpa"
    from models_util import perturb

    ref = perturb(getattr(T, name)(config)).eval()
    model = twin(ref)
    model.set_attn_implementation(NAME)
    x = batch("GPT2LMHeadModel", N=9)  # left padding
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        assert max_rel_err(model(**x).logits, ref(**x).logits, x["attention_mask"]) < RTOL
        ours, theirs = model.generate(**x, **kw), ref.generate(**x, **kw)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert max(max_rel_err(a, b) for a, b in zip(ours.scores, theirs.scores)) < RTOL


def test_gpt2_generate_with_dynamic_cache_matches_sdpa():
    ref = make("GPT2LMHeadModel")
    model = twin(ref)
    model.set_attn_implementation(NAME)
    x = batch("GPT2LMHeadModel", N=7)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = model.generate(**x, **kw, return_dict_in_generate=True, output_scores=True)
        theirs = ref.generate(**x, **kw, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.scores, theirs.scores):
        assert max_rel_err(a, b) < RTOL


def test_t5_generate_matches_sdpa():
    ref = make("T5ForConditionalGeneration")
    model = twin(ref)
    model.set_attn_implementation(NAME)
    x = batch("T5ForConditionalGeneration")
    del x["decoder_input_ids"]
    with torch.no_grad():
        assert torch.equal(model.generate(**x, max_new_tokens=5, do_sample=False),
                           ref.generate(**x, max_new_tokens=5, do_sample=False))


# ---- the kernels through the interface (Triton's interpreter on CPU) ----------------------------------------------
@pytest.mark.usefixtures("triton_backend")
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "GPT2LMHeadModel"])
def test_interface_runs_the_kernels(arch, monkeypatch):
    spy = KernelSpy(monkeypatch)
    ref = make(arch)
    model = twin(ref)
    model.set_attn_implementation(NAME)
    x = batch(arch, B=2, N=6)
    with torch.no_grad():
        err = max_rel_err(main_output(model(**x)), main_output(ref(**x)), x["attention_mask"])
    assert err < RTOL
    assert spy.calls["attention"] == 2  # one per layer


def test_packed_mark_skips_revalidation_only_for_engines_own_cu_seqlens(monkeypatch):
    calls = []
    import engine.ops.varlen as oa

    for name in ("_validate_cu_values", "_validate_cu_lists"):  # CUDA tensors / CPU tensors (read once as lists)
        real = getattr(oa, name)
        monkeypatch.setattr(oa, name, lambda *a, real=real: calls.append(1) or real(*a))
    q, k, v = _qkv(1, 2, 2, 6, 6, 8)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    attention_forward(Layer(False), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    setattr(cu, PACKED_MARK, True)
    attention_forward(Layer(False), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert len(calls) == 1
