"""torch.compile(fullgraph=True) of engine's own models: no graph break, outputs equal to eager.

Compiling is slow on a small CPU, so the models are the tiny test configs and most tests use the aot_eager backend
(dynamo + AOT autograd + the registered ops' fake implementations: everything but inductor's code generation);
one test runs inductor itself. Eager runs the same path as the compiled graph (``model.packed = False``: compiled
encoders run the padded-mask path, since the packed size depends on the mask's values). The T5 family compiles too:
RMSNorm, GeGLU and the attention ops with their relative-position-bias tables are registered ops.
"""
from __future__ import annotations

import pytest
import torch

from engine import ops
from engine.checkpoint import from_transformers
from models_util import assert_close_valid, inputs, make_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _t5_inputs(arch: str) -> dict[str, torch.Tensor]:
    """Encoder padding on the right (row 1) and the left (row 2); decoder ids for the seq2seq classes."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 61, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, :3] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    if "Encoder" not in arch:
        x["decoder_input_ids"] = torch.randint(2, 61, (3, 5), generator=g)
    return x


def _pair(arch: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    model = from_transformers(make_hf(arch), device=device, dtype=dtype)
    if hasattr(model, "packed"):
        model.packed = False
    x = _t5_inputs(arch) if "T5" in arch else inputs(arch)
    return model, {k: v.to(device) for k, v in x.items()}


def _equal(a, b, *, rtol=0.0, atol=0.0):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "AlbertModel", "RobertaForSequenceClassification",
                                  "GPT2LMHeadModel", "MT5ForConditionalGeneration", "UMT5EncoderModel"])
def test_fullgraph_equals_eager(arch):
    torch._dynamo.reset()
    model, x = _pair(arch)
    with torch.no_grad():
        eager = model(**x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(**x)
    _equal(compiled, eager)


def test_inductor_bert_and_all_ones_mask():
    """The default backend (inductor) on a tiny BERT; an all-ones mask (eager drops it, compiled keeps it: same
    values)."""
    torch._dynamo.reset()
    model, x = _pair("BertModel")
    x["attention_mask"] = torch.ones_like(x["attention_mask"])
    with torch.no_grad():
        eager = model(**x)
        compiled = torch.compile(model, fullgraph=True)(**x)
    _equal(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compiled_model_checks_input_values():
    torch._dynamo.reset()
    model, x = _pair("BertModel")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    bad = x["input_ids"].clone()
    bad[0, 1] = 103  # == vocab_size
    with torch.no_grad():
        compiled(**x)
        with pytest.raises(ValueError, match=r"input_ids values must lie in \[0, 103\) \(the vocabulary\); got "
                                             r"values in \[\d+, 103\]"):
            compiled(bad, attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"])
        mask = x["attention_mask"].clone()
        mask[0, 0] = 2
        with pytest.raises(ValueError, match="attention_mask values must be 0 or 1"):
            compiled(x["input_ids"], attention_mask=mask, token_type_ids=x["token_type_ids"])


def test_compiled_t5_checks_decoder_input_values():
    """The decoder's inputs are checked under their own names (the ``decoder_`` prefix survives compile)."""
    torch._dynamo.reset()
    model, x = _pair("T5ForConditionalGeneration")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    bad = x["decoder_input_ids"].clone()
    bad[1, 2] = 61  # == vocab_size
    with torch.no_grad():
        compiled(**x)
        with pytest.raises(ValueError, match=r"decoder_input_ids values must lie in \[0, 61\) \(the vocabulary\)"):
            compiled(x["input_ids"], x["attention_mask"], decoder_input_ids=bad)


@pytest.mark.parametrize("arch", ["BertModel", "T5EncoderModel"])
def test_packed_true_refuses_to_compile(arch):
    torch._dynamo.reset()
    model, x = _pair(arch)
    model.packed = True
    with pytest.raises(Exception, match="model.packed = True cannot be compiled"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(**x)


def test_sdpa_with_torchs_whole_signature_compiles():
    """ops.scaled_dot_product_attention as torch.compile traces it (one registered op, fullgraph): grouped K/V
    heads (enable_gqa), broadcast batch, a 3-D call with a 1-D mask and a bias table, a 5-D call; compiled equals
    eager bit for bit, and a GQA grouping torch refuses is refused while compiling with the eager message."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, n, 5, 8, generator=g) for n in (6, 2, 2))
    keep = torch.rand(5, generator=g) > 0.3
    table = torch.randn(6, 9, generator=g)

    def f(q, k, v):
        a = ops.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        b = ops.scaled_dot_product_attention(q, k[:1, :1], v[:1, :1], scale=0.3)
        c = ops.scaled_dot_product_attention(q[0], q[1], q[0], attn_mask=keep, relative_position_bias=table)
        d = ops.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True)
        return a, b, c, d

    eager = f(q, k, v)
    _equal(torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v), eager)
    seen = []

    def record(gm, example_inputs):  # the dynamo graph: each call is the registered op, with its arguments
        seen.extend(n for n in gm.graph.nodes if "engine.scaled_dot_product_attention" in str(n.target))
        return gm.forward

    torch._dynamo.reset()
    _equal(torch.compile(f, fullgraph=True, backend=record)(q, k, v), eager)
    assert [n.args[7] for n in seen] == [True, False, False, True]  # enable_gqa reaches the op as given
    torch._dynamo.reset()
    with pytest.raises(Exception, match="enable_gqa: the key heads"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(q[:, :5], k, v)


@pytest.mark.parametrize("backend_name", ["auto", "triton"])
@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "MT5ForConditionalGeneration"])
def test_training_compiles_with_the_registered_backward(monkeypatch, arch, backend_name):
    """A trainable tiny model (BERT: LayerNorm, add + LayerNorm, bias + GELU; mT5: RMSNorm, add + RMSNorm, GeGLU)
    compiled with aot_eager: the loss and every parameter's gradient equal eager's. ``triton`` (interpreter on the
    CPU): the compiled backward runs the registered engine::norm_backward / gelu_backward on the Triton kernels."""
    monkeypatch.setenv("ENGINE_BACKEND", backend_name)
    torch._dynamo.reset()
    model, x = _pair(arch)
    model.requires_grad_(True)
    w = torch.randn(model(**x).shape, generator=torch.Generator().manual_seed(0))

    def loss_fn(**kw):
        return (model(**kw) * w).sum()

    def grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn(**x)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager = grads(loss_fn)
    compiled_loss, compiled = grads(torch.compile(loss_fn, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert compiled.keys() == eager.keys() and len(eager) > 10
    for name in eager:  # relative to each tensor's largest gradient: the two backward formulas round differently
        err = float((compiled[name] - eager[name]).abs().max() / eager[name].abs().max().clamp_min(1e-6))
        assert err < 1e-4, f"{name}: relative error {err:.3g}"


def test_ops_that_need_grad_compile_to_differentiable_pytorch():
    """Inputs that require grad compile to the registered ops with their autograd formulas (PyTorch's gradients on
    the CPU)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g, requires_grad=True)
    w, b = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def f(x):
        return ops.bias_gelu(ops.layer_norm(x, (8,), w, b), b, approximate="tanh").sum()

    f(x).backward()
    expect = x.grad.clone()
    x.grad = None
    torch.compile(f, fullgraph=True, backend="aot_eager")(x).backward()
    torch.testing.assert_close(x.grad, expect)


@pytest.mark.parametrize("varlen", [False, True])
def test_attention_with_grad_compiles_to_the_backward_kernels(monkeypatch, varlen):
    """Attention inputs that require grad trace to the differentiable registered ops (*_lse, whose registered
    backward runs the Triton backward kernels: the interpreter here); grads equal eager's."""
    import engine.kernels.attention as kattn

    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    calls = []
    for name in ("attention_bwd", "varlen_bwd"):
        fn = getattr(kattn, name)
        monkeypatch.setattr(kattn, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    if varlen:
        q, k, v = (torch.randn(20, 2, 16, generator=g).requires_grad_() for _ in range(3))
        cu = torch.tensor([0, 7, 20], dtype=torch.int32)

        def f(q, k, v):
            return (ops.varlen_attention(q, k, v, cu, cu, 13, 13, causal=True) ** 2).sum()
    else:
        q, k, v = (torch.randn(1, 2, 9, 16, generator=g).requires_grad_() for _ in range(3))
        mask = torch.randn(1, 1, 9, 9, generator=g)

        def f(q, k, v):
            return (ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True) ** 2).sum()

    f(q, k, v).backward()
    expect = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    calls.clear()
    torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v).backward()
    assert calls == ["varlen_bwd" if varlen else "attention_bwd"]
    for a, e in zip((q.grad, k.grad, v.grad), expect):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["BertModel", "GPT2LMHeadModel"])
def test_cuda_inductor_equals_eager(arch):
    torch._dynamo.reset()
    model, x = _pair(arch, "cuda", torch.bfloat16)
    with torch.no_grad():
        eager = model(**x)
        compiled = torch.compile(model, fullgraph=True)(**x)
    host = lambda t: tuple(o.float().cpu() for o in t) if isinstance(t, tuple) else t.float().cpu()  # noqa: E731
    assert_close_valid(host(compiled), host(eager), x["attention_mask"].cpu(), rtol=2e-2)
