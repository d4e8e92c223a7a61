"""engine.graphs: encoder forwards padded to a length bucket (replayed as CUDA graphs on a GPU).

On the CPU the bucketed computation runs eagerly (``EncoderGraphs.run(..., graph=False)``): it must give the
eager forward's results at every real position, for every head, with and without a mask or token types, for
lengths inside a bucket and exactly on one, and across calls that reuse a bucket's buffers. A length that fills
its bucket gives the eager bits exactly; a padded one agrees to rounding (PyTorch's CPU attention sums a row
with masked keys in a different order: ~5e-7 on values of order 1). The T5 family graphs its encoder pass the same
way (padding on either side in the inputs; the bucket's padding goes right, keeping every distance, so the relative
position bias). The GPU tests run the real graphs (warm-up, capture, replay) against the eager CUDA path.
"""
from __future__ import annotations

import pytest
import torch

from engine.checkpoint import from_transformers
from engine import graphs
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


def _documented_bucket(n: int, max_len: int) -> int:
    """engine/graphs.py's documented buckets, written out independently of LENGTH_BUCKETS: the smallest of 16, 32,
    48, 64, 96, 128, 192, 256, 384, 512 that holds n, past 512 the next multiple of 256, never past max_len."""
    table = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return min(next((b for b in table if b >= n), -(-n // 256) * 256), max_len)


@pytest.mark.parametrize("max_len", [24, 384, 385, 512, 513, 1100, 2048])
def test_length_bucket_boundaries(max_len):
    """Every length from 1 to max_len against the documented table: a length on a bucket stays there and one past
    it (384 vs 385, 512 vs 513, ...) moves to the next, capped by the model's maximum."""
    got = [length_bucket(n, max_len) for n in range(1, max_len + 1)]
    want = [_documented_bucket(n, max_len) for n in range(1, max_len + 1)]
    assert got == want, next((n + 1, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w)


def _model(arch):
    model = from_transformers(make_hf(arch))
    model.packed = False  # the eager reference runs the same dense path the graph runs
    return model


def _cut(x, n):
    return {k: v[:, :n] for k, v in x.items()}


# fp32, bucket-padded (masked) against the eager shapes: the same math in other blockings, so rounding differs with
# the CPU's vector width (AVX-512 VMs show 1e-6 relative to the largest output, 3e-5 on one element near zero); a
# padding leak is ~1e-1
RTOL = 1e-5
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
                    assert_close_valid(got, eager, valid, rtol=RTOL)
                    if n == 16:
                        for a, b in zip(got if pooled or isinstance(got, tuple) else (got,),
                                        eager if pooled or isinstance(eager, tuple) else (eager,)):
                            assert torch.equal(a, b)
    assert {k[:2] for k in runner.entries} == {(3, 16)}


def test_bucket_padding_the_model_receives(monkeypatch):
    """What graph_forward gets for a padded call: the ids with pad_token_id beyond the real length, a mask of ones
    then zeros (built here), token types padded with 0, the one type every model has (RoBERTa's
    type_vocab_size is 1: any other index is out of range); a length that fills its bucket without a mask gets no
    mask, so the graph holds exactly the eager computation. Results vs the eager forward."""
    arch = "RobertaForSequenceClassification"
    model = _model(arch)
    pad = model.config.pad_token_id
    assert model.embeddings.token_type.num_embeddings == 1 and pad not in (None, 0)
    seen = []
    real = model.graph_forward
    monkeypatch.setattr(model, "graph_forward", lambda ids, mask, types, pooled: seen.append(
        (ids.clone(), mask if mask is None else mask.clone(), types.clone())) or real(ids, mask, types, pooled))
    runner = EncoderGraphs(model)
    ids = inputs(arch, B=2, N=16)["input_ids"]
    with torch.no_grad():
        for n in (16, 11):
            x, types = ids[:, :n], torch.zeros(2, n, dtype=torch.long)
            got = runner.run(x, None, types, graph=False)
            torch.testing.assert_close(got, model(x, token_type_ids=types), rtol=RTOL, atol=RTOL)
            got_ids, mask, got_types = seen[-1]
            assert torch.equal(got_ids[:, :n], x) and (got_ids[:, n:] == pad).all() and got_ids.shape == (2, 16)
            assert torch.equal(got_types, torch.zeros(2, 16, dtype=torch.long))
            if n == 16:
                assert mask is None
            else:
                assert torch.equal(mask, (torch.arange(16) < n).long().expand(2, 16))


@pytest.mark.parametrize("arch", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification",
                                  "BertForQuestionAnswering", "BertForNextSentencePrediction", "BertForPreTraining"])
def test_every_head_cuts_only_its_sequence_outputs(arch):
    """One real token in a bucket of 16: each output with a sequence dimension is cut back to 1, the others
    (pooler, classifier and NSP logits) are whole, with return_pooled either way (heads other than the base model's
    ignore it)."""
    model = _model(arch)
    runner = EncoderGraphs(model)
    x = _cut(inputs(arch, B=2, N=5), 1)
    with torch.no_grad():
        for pooled in (False, True):
            eager = model(**x, return_pooled=pooled)
            got = runner.run(x["input_ids"], x["attention_mask"], x["token_type_ids"], return_pooled=pooled,
                             graph=False)
            eager, got = (t if isinstance(t, tuple) else (t,) for t in (eager, got))
            assert len(got) == len(eager)
            for a, b in zip(got, eager):
                assert a.shape == b.shape, (pooled, a.shape, b.shape)
                torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL)


T5_ARCHS = ["T5EncoderModel", "UMT5EncoderModel", "MT5ForConditionalGeneration"]


def _t5_inputs(B: int = 3, N: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and a mask with right padding in row 1 and left padding in row 2 (T5 takes padding anywhere)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 61, (B, N), generator=g)
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, N - 4:] = 0
    mask[2, :3] = 0
    return ids, mask


@pytest.mark.parametrize("arch", T5_ARCHS)
def test_t5_bucketed_encoder_equals_eager(arch):
    """The encoder pass through the bucketed runner against the model's own eager encoder (padded-mask path)."""
    model = _model(arch)
    runner = EncoderGraphs(model)
    full_ids, full_mask = _t5_inputs()
    with torch.no_grad():
        for n in (16, 11, 5, 16):
            ids, mask = full_ids[:, :n], full_mask[:, :n]
            for m in (mask, None):
                eager = model.encode(ids, m)
                got = runner.run(ids, m, None, graph=False)
                valid = m if m is not None else torch.ones_like(ids)
                assert got.shape == eager.shape
                assert_close_valid(got, eager, valid, rtol=RTOL)
                if n == 16:
                    assert torch.equal(got, eager)
    assert {k[:2] for k in runner.entries} == {(3, 16)}


def test_t5_cuda_graph_option_is_checked():
    model = _model("MT5ForConditionalGeneration")
    ids, mask = _t5_inputs(N=7)
    dec = ids[:, :4]
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        model(ids, mask, dec, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool or None"):
        model(ids, mask, dec, cuda_graph=1)
    model.cuda_graph = True
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
    model.cuda_graph = None
    assert model.generate(ids, attention_mask=mask, max_new_tokens=2).shape == (3, 3)  # the CPU never graphs


def test_outputs_are_copies():
    model = _model("BertModel")
    runner = EncoderGraphs(model)
    x = inputs("BertModel", B=2, N=9)
    with torch.no_grad():
        a = runner.run(x["input_ids"], x["attention_mask"], None, graph=False)
        keep = a.clone()
        runner.run(x["input_ids"].flip(1), x["attention_mask"], None, graph=False)
    assert torch.equal(a, keep)


def test_threads_sharing_one_models_graphs_get_their_own_outputs():
    """Calls from several threads with one key (so one entry's static inputs) and with other keys (the graphs share
    a memory pool): each gets the output of its own inputs (EncoderGraphs serves one call at a time)."""
    import copy
    import threading

    model = _model("BertModel")
    runner = EncoderGraphs(model)
    g = torch.Generator().manual_seed(7)
    calls = [(torch.randint(0, 50, (2, n), generator=g), torch.ones(2, n, dtype=torch.long)) for n in (9, 13, 11, 16)]
    calls += [(torch.randint(0, 50, (3, 12), generator=g), None)]  # another batch size: another entry
    with torch.no_grad():
        want = [runner.run(ids, mask, None, graph=False) for ids, mask in calls]
    got, barrier = {}, threading.Barrier(len(calls))

    def work(i: int) -> None:
        barrier.wait()
        with torch.no_grad():
            got[i] = [runner.run(*calls[i], None, graph=False) for _ in range(6)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, w in enumerate(want):
        for out in got[i]:
            assert torch.equal(out, w), f"call {i}: another thread's inputs"
    clone = copy.deepcopy(runner)  # a copy (of a model that holds its graphs) starts empty
    assert clone.entries == {} and clone.lock is not runner.lock


def test_cuda_graph_option_is_checked():
    model = _model("BertModel")
    ids = inputs("BertModel")["input_ids"]
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        model(ids, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph must be a bool or None"):
        model(ids, cuda_graph="yes")
    model.cuda_graph = False
    model(ids)  # the CPU never graphs: None and False run eagerly


class _CudaIds:
    """What use_graph reads of a checked CUDA batch (is_cuda, shape, device): its rules for CUDA inputs run here
    without a GPU."""

    is_cuda = True
    device = torch.device("cuda", 0)

    def __init__(self, B: int, N: int) -> None:
        self.shape = (B, N)


def test_use_graph_rules_for_cuda_batches():
    """use_graph's documented rules on CUDA inputs: None (call and model) graphs batches of at most GRAPH_MAX_TOKENS
    bucket-padded tokens, True any batch, False none; the call's choice wins over the model's; never in training
    mode or while autograd records the parameters."""
    model = _model("BertModel").eval()  # max_seq_len 24: 9 and 16 tokens are padded to the bucket of 16
    model.graph_weight().requires_grad_(True)
    most = graphs.GRAPH_MAX_TOKENS // 16
    with torch.no_grad():
        assert graphs.use_graph(model, _CudaIds(most, 9), None) is True
        assert graphs.use_graph(model, _CudaIds(most + 1, 9), None) is False
        assert graphs.use_graph(model, _CudaIds(most + 1, 9), True) is True
        assert graphs.use_graph(model, _CudaIds(1, 9), False) is False
        model.cuda_graph = False
        assert graphs.use_graph(model, _CudaIds(1, 9), None) is False
        assert graphs.use_graph(model, _CudaIds(most + 1, 9), True) is True
        model.cuda_graph = True
        assert graphs.use_graph(model, _CudaIds(most + 1, 16), None) is True
        assert graphs.use_graph(model, _CudaIds(1, 9), False) is False
        model.train()
        assert graphs.use_graph(model, _CudaIds(1, 9), True) is False
        model.eval()
    assert graphs.use_graph(model, _CudaIds(1, 9), True) is False  # grad enabled, the weights require it
    model.graph_weight().requires_grad_(False)
    assert graphs.use_graph(model, _CudaIds(1, 9), True) is True
    with pytest.raises(TypeError, match="cuda_graph must be a bool or None"):
        graphs.use_graph(model, _CudaIds(1, 9), 1)


def test_graphs_of_keeps_one_runner_per_weights():
    """graphs_of: one EncoderGraphs per model, kept across calls; a new one once the weights change dtype (their
    storage with it), the old one (which holds their addresses) dropped."""
    model = _model("BertModel")
    g = graphs.graphs_of(model)
    assert isinstance(g, EncoderGraphs) and g.model is model and graphs.graphs_of(model) is g
    model.double()
    g2 = graphs.graphs_of(model)
    assert isinstance(g2, EncoderGraphs) and g2 is not g and graphs.graphs_of(model) is g2


def test_graph_lifecycle_with_stand_ins_for_cuda(monkeypatch):
    """run()'s graph path (the default) with CPU stand-ins for the CUDA calls: per key, the first WARMUP_CALLS calls
    run on the side stream, the next captures (into the model's one memory pool) and replays, later ones replay
    only; a stand-in replay recomputes the captured outputs in place from the static inputs, as a CUDA graph does.
    Every call gets the eager forward's result for its own inputs."""
    model = _model("BertForQuestionAnswering")
    runner = EncoderGraphs(model)
    made, events, pool = [], [], object()
    real_forward = model.graph_forward
    monkeypatch.setattr(model, "graph_forward", lambda *a: made.append(tuple(real_forward(*a))) or made[-1])

    class Graph:
        def __init__(self, fn):
            self.fn = fn
            fn()
            self.static = made[-1]  # the outputs a capture allocates; replays write into them

        def replay(self):
            events.append("replay")
            self.fn()
            for s, o in zip(self.static, made[-1], strict=True):
                s.copy_(o)

    def capture(fn, pool=None):
        events.append(("capture", pool))
        return Graph(fn)

    monkeypatch.setattr(graphs, "on_side_stream", lambda fn: events.append("side") or fn())
    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: events.append("pool") or pool)
    x = inputs("BertForQuestionAnswering", B=3, N=16)
    with torch.no_grad():
        for call in range(5):
            n = (11, 9, 13, 11, 5)[call]  # one key: batch 3, bucket 16, a mask
            ids, mask, types = (x[k][:, :n].roll(call, dims=1) for k in ("input_ids", "attention_mask",
                                                                            "token_type_ids"))
            got = runner.run(ids, mask, types)
            want = model(ids, mask, types, cuda_graph=False)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL)
        assert events == ["side"] * graphs.WARMUP_CALLS + ["pool", ("capture", pool), "replay"] + \
            ["replay"] * (4 - graphs.WARMUP_CALLS)
        events.clear()
        for _ in range(graphs.WARMUP_CALLS + 1):  # another key: its own warm-ups and capture, the same pool
            runner.run(x["input_ids"][:2], x["attention_mask"][:2], x["token_type_ids"][:2])
        assert events == ["side"] * graphs.WARMUP_CALLS + [("capture", pool), "replay"]


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["T5EncoderModel", "MT5ForConditionalGeneration"])
def test_t5_cuda_graphs_match_eager(arch, dtype):
    """T5's encoder pass replayed as a graph (T5EncoderModel's forward; the seq2seq forward and greedy generate)
    against the same calls with cuda_graph=False."""
    model = from_transformers(make_hf(arch), device="cuda", dtype=dtype)
    rtol = 5e-3 if dtype == torch.float32 else 5e-2
    full_ids, full_mask = (t.cuda() for t in _t5_inputs())
    dec = full_ids[:, :5]
    kept = []
    with torch.no_grad():
        for n in (16, 11, 16, 11, 16, 11, 5):  # warm-ups, captures, replays; 5 reuses the bucket of 11 and 16
            ids, mask = full_ids[:, :n], full_mask[:, :n]
            args = (ids, mask) if "Encoder" in arch else (ids, mask, dec)
            kept.append((model(*args), model(*args, cuda_graph=False), mask if "Encoder" in arch else None))
    host = lambda t: t.float().cpu()  # noqa: E731
    for got, ref, mask in kept:  # earlier results survive later replays
        valid = mask if mask is not None else torch.ones(got.shape[:2])
        assert_close_valid(host(got), host(ref), valid.cpu(), rtol=rtol)
    runner = model.__dict__["_engine_graphs"][1]
    assert len(runner.entries) == 1 and all(e.graph is not None for e in runner.entries.values())
    if "Encoder" not in arch:  # generate's encoder pass replays the same graph
        runs = []
        real_run = runner.run
        runner.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)
        ids, mask = full_ids[:, :11], full_mask[:, :11]
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[])
        assert runs == [1] and out.shape == (3, 5) and len(runner.entries) == 1
        with torch.no_grad():
            assert_close_valid(host(model.encoder_output(ids, mask)), host(model.encode(ids, mask)), mask.cpu(),
                               rtol=rtol)
