"""engine.graphs: encoder forwards padded to a length bucket (replayed as CUDA graphs on a GPU).

On the CPU the bucketed computation runs eagerly (``EncoderGraphs.run(..., graph=False)``): it must give the
eager forward's results at every real position, for every head, with and without a mask or token types, for
lengths inside a bucket and exactly on one, and across calls that reuse a bucket's buffers. A length that fills
its bucket gives the eager bits exactly; a padded one agrees to rounding (PyTorch's CPU attention sums a row
with masked keys in a different order: ~5e-7 on values of order 1). The GPU tests run the
real graphs (warm-up, capture, replay) against the eager CUDA path.
"""
from __future__ import annotations

import pytest
import torch

from engine.checkpoint import from_transformers
from engine.graphs import LENGTH_BUCKETS, EncoderGraphs, length_bucket
from models_util import assert_close_valid, inputs, make_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_length_bucket():
    assert [length_bucket(n, 512) for n in (1, 16, 17, 33, 64, 65, 129, 511, 512)] == \
        [16, 16, 32, 48, 64, 96, 192, 512, 512]
    assert length_bucket(513, 2048) == 768 and length_bucket(1025, 1100) == 1100
    assert length_bucket(20, 24) == 24  # never past the model's maximum
    for n in range(1, 700):
        b = length_bucket(n, 4096)
        assert n <= b and (b in LENGTH_BUCKETS or b % 256 == 0)


def _model(arch):
    model = from_transformers(make_hf(arch))
    model.packed = False  # the eager reference runs the same dense path the graph runs
    return model


def _cut(x, n):
    return {k: v[:, :n] for k, v in x.items()}


ARCHS = ["BertForQuestionAnswering", "BertForPreTraining", "AlbertModel", "RobertaForSequenceClassification",
         "RobertaForMaskedLM"]


@pytest.mark.parametrize("arch", ARCHS)
def test_bucketed_forward_equals_eager(arch):
    model = _model(arch)
    runner = EncoderGraphs(model)
    full = inputs(arch, B=3, N=16)  # N=16 fills its bucket; 11 and 5 are padded to it
    with torch.no_grad():
        for n in (16, 11, 5, 16):
            x = _cut(full, n)
            for drop in ((), ("attention_mask",), ("attention_mask", "token_type_ids")):
                args = {k: v for k, v in x.items() if k not in drop}
                ids, mask, types = args["input_ids"], args.get("attention_mask"), args.get("token_type_ids")
                for pooled in ((False, True) if arch == "AlbertModel" else (False,)):
                    eager = model(ids, attention_mask=mask, token_type_ids=types, return_pooled=pooled)
                    got = runner.run(ids, mask, types, return_pooled=pooled, graph=False)
                    valid = mask if mask is not None else torch.ones_like(ids)
                    assert_close_valid(got, eager, valid, rtol=1e-6)
                    if n == 16:
                        for a, b in zip(got if pooled or isinstance(got, tuple) else (got,),
                                        eager if pooled or isinstance(eager, tuple) else (eager,)):
                            assert torch.equal(a, b)
    assert {k[:2] for k in runner.entries} == {(3, 16)}


def test_outputs_are_copies():
    model = _model("BertModel")
    runner = EncoderGraphs(model)
    x = inputs("BertModel", B=2, N=9)
    with torch.no_grad():
        a = runner.run(x["input_ids"], x["attention_mask"], None, graph=False)
        keep = a.clone()
        runner.run(x["input_ids"].flip(1), x["attention_mask"], None, graph=False)
    assert torch.equal(a, keep)


def test_cuda_graph_option_is_checked():
    model = _model("BertModel")
    ids = inputs("BertModel")["input_ids"]
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        model(ids, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool or None"):
        model(ids, cuda_graph="yes")
    model.cuda_graph = False
    model(ids)  # the CPU never graphs: None and False run eagerly


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["BertForQuestionAnswering", "AlbertModel", "RobertaForSequenceClassification"])
def test_cuda_graphs_match_eager(arch, dtype):
    model = from_transformers(make_hf(arch), device="cuda", dtype=dtype)
    rtol = 5e-3 if dtype == torch.float32 else 5e-2
    full = {k: v.cuda() for k, v in inputs(arch, B=3, N=16).items()}
    kept = []
    with torch.no_grad():
        for n in (16, 11, 16, 11, 16, 11, 5):  # warm-ups, captures, replays; 5 reuses the bucket of 11 and 16
            x = _cut(full, n)
            kept.append((model(**x), model(**x, cuda_graph=False), x["attention_mask"]))
        x = _cut(full, 16)
        del x["attention_mask"]  # no mask, a full bucket: the graph holds exactly the eager computation
        for _ in range(4):
            got = model(**x)
        kept.append((got, model(**x, cuda_graph=False), torch.ones(3, 16)))
    host = lambda t: tuple(o.float().cpu() for o in t) if isinstance(t, tuple) else t.float().cpu()  # noqa: E731
    for got, ref, mask in kept:  # earlier results survive later replays
        assert_close_valid(host(got), host(ref), mask.cpu(), rtol=rtol)
    runner = model.__dict__["_engine_graphs"][1]
    assert len(runner.entries) == 2 and all(e.graph is not None for e in runner.entries.values())
