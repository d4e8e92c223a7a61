"""torch.compile(fullgraph=True) of engine's own models: no graph break, outputs equal to eager.

Compiling is slow on a small CPU, so the models are the tiny test configs and most tests use the aot_eager backend
(dynamo + AOT autograd + the registered ops' fake implementations: everything but inductor's code generation);
one test runs inductor itself. Eager runs the same path as the compiled graph (``model.packed = False``: compiled
encoders run the padded-mask path, since the packed size depends on the mask's values).
"""
from __future__ import annotations

import pytest
import torch

from engine import ops
from engine.checkpoint import from_transformers
from models_util import assert_close_valid, inputs, make_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(arch: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    model = from_transformers(make_hf(arch), device=device, dtype=dtype)
    if hasattr(model, "packed"):
        model.packed = False
    return model, {k: v.to(device) for k, v in inputs(arch).items()}


def _equal(a, b, *, rtol=0.0, atol=0.0):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "AlbertModel", "RobertaForSequenceClassification",
                                  "GPT2LMHeadModel"])
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


def test_packed_true_refuses_to_compile():
    torch._dynamo.reset()
    model, x = _pair("BertModel")
    model.packed = True
    with pytest.raises(Exception, match="model.packed = True cannot be compiled"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(**x)


def test_ops_that_need_grad_compile_to_differentiable_pytorch():
    """Inputs that require grad take the PyTorch path inside the compiled graph (the kernels have no backward)."""
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
