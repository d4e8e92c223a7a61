"""CUDA graphs: the capture helpers (shared with engine.generate) and encoder forwards replayed as graphs.

At batch 1 to 8 with short texts a GPU finishes each kernel in microseconds and the host's launches decide the
latency. ``EncoderGraphs`` records an encoder's whole forward (embeddings, every layer, the head) once per
(batch size, sequence-length bucket, which inputs are given, pooled or not) and replays it. The BERT family
(engine.models.bert.EncoderModel) graphs its whole forward; the T5 family (engine.models.t5.T5) its encoder stack,
for T5EncoderModel's forward and the encoder pass of the seq2seq classes (forward and generate).

- Lengths are padded up to a bucket (``length_bucket``: 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, then
  multiples of 256, never past the model's maximum), so a handful of graphs serve every length. Padding goes to
  the right with ``pad_token_id`` (0 when the config has none) and attention_mask 0, so real tokens keep their
  positions and never see the padding; outputs are cut back to the real length. A bucket the length fills
  exactly needs no mask (when none was given): the graph then holds exactly the eager computation.
- Inside the graph the padded batch runs the padded-mask path (packing needs host-side sizes); eager CUDA calls
  of the BERT family pack padded batches (varlen attention): the two agree to rounding at the real positions.
  T5's relative position bias depends only on the distance between two positions, which right padding keeps.
- The first two calls of a key run eagerly on a side stream (kernel compiles, autotuning, cuBLAS set-up), the
  third captures the graph and replays it; later calls replay only. Graphs of one model share one memory pool.
  Outputs are copied out of the graph's memory, so a result stays valid after the next call.
- Calls from several threads are correct: one model's graphs serve one call at a time (a lock held from filling
  the static inputs to copying the outputs out); the GPU runs the calls of one stream in order anyway.

``run(..., graph=False)`` runs the same bucketed computation eagerly on any device: that is how the CPU tests
check the padding logic gives the eager path's results.

A model opts in by providing (the two families above do):
    model.config.max_seq_len, model.config.pad_token_id (None: pad with 0), model.cuda_graph (None / True / False)
    model.graph_weight() -> a parameter whose device, dtype and storage key the graphs (rebuilt when it changes)
    model.graph_forward(input_ids, attention_mask, token_type_ids, return_pooled) -> tuple of outputs, computed
        eagerly on the padded-mask path (no host syncs: it is what the graph records)
    model.graph_outputs(return_pooled) -> one bool per output: whether it has a sequence dim to cut back
and calls ``use_graph(model, input_ids, choice)`` / ``graphs_of(model).run(...)`` from its forward.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

__all__ = ["EncoderGraphs", "GRAPH_MAX_TOKENS", "capture", "graphs_of", "length_bucket", "on_side_stream",
           "use_graph"]

LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
LONG_BUCKET_STEP = 256  # beyond the table: multiples of this
WARMUP_CALLS = 2  # eager runs of a new key before its capture
GRAPH_MAX_TOKENS = 8192  # cuda_graph=None: graphs for batches of at most this many (bucket-padded) tokens
_CAPTURE_LOCK = threading.Lock()  # one CUDA graph capture at a time in this process (encoders and generate)


def length_bucket(n: int, max_len: int) -> int:
    """The length a sequence of ``n`` tokens (1 <= n <= max_len) is padded to: the smallest LENGTH_BUCKETS entry
    >= n (multiples of 256 beyond the table), at most ``max_len``."""
    for b in LENGTH_BUCKETS:
        if b >= n:
            return min(b, max_len)
    return min(-(-n // LONG_BUCKET_STEP) * LONG_BUCKET_STEP, max_len)


def on_side_stream(fn) -> None:
    """Run ``fn`` on a side stream (CUDA graph warm-up, as PyTorch's graph docs prescribe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


def capture(fn, pool=None) -> torch.cuda.CUDAGraph:
    """Record ``fn``'s kernels into a CUDA graph (memory from ``pool``, else a private pool) without running them.
    One capture at a time in the process; thread-local capture mode leaves other threads free to allocate and
    synchronise meanwhile."""
    g = torch.cuda.CUDAGraph()
    with _CAPTURE_LOCK, torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
        fn()
    return g


@dataclass
class _Entry:
    """One key's static inputs, its graph (once captured) and the outputs the graph writes."""

    ids: torch.Tensor  # (B, Nb) int64
    mask: torch.Tensor | None  # (B, Nb) int64, or None when no position is padding
    token_types: torch.Tensor | None  # (B, Nb) int64, or None when not given
    outputs: tuple = ()
    graph: torch.cuda.CUDAGraph | None = None
    calls: int = 0
    trim: tuple = field(default_factory=tuple)


def use_graph(model: torch.nn.Module, input_ids: torch.Tensor, choice: object) -> bool:
    """Whether a forward of ``model`` on checked ``input_ids`` (B, N) replays a CUDA graph. ``choice``: the call's
    ``cuda_graph`` (None follows ``model.cuda_graph``; None there too: CUDA batches of at most GRAPH_MAX_TOKENS
    tokens after bucketing; True: any CUDA batch, an error elsewhere; False: never). Never under torch.compile, in
    training mode, or while autograd records the parameters (a graph records no autograd history)."""
    if choice is None:
        choice = model.cuda_graph
    if choice is not None and not isinstance(choice, bool):
        raise TypeError(f"cuda_graph must be a bool or None; got {type(choice).__name__}")
    if choice is False or torch.compiler.is_compiling():
        return False
    if not input_ids.is_cuda:
        if choice:
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {input_ids.device}")
        return False
    if model.training or (torch.is_grad_enabled() and model.graph_weight().requires_grad):
        return False  # a replay records no autograd history and repeats one dropout mask
    if choice is None:
        B, N = input_ids.shape
        return B * length_bucket(N, model.config.max_seq_len) <= GRAPH_MAX_TOKENS
    return True


def graphs_of(model: torch.nn.Module) -> EncoderGraphs:
    """``model``'s graphs, kept on the model; rebuilt (the old ones freed first) when ``model.graph_weight()``
    changed storage, device or dtype (``.to``, ``.half``, a reload): the graphs hold the parameters' addresses."""
    w = model.graph_weight()
    key = (w.device, w.dtype, w.data_ptr())
    g = model.__dict__.get("_engine_graphs")
    if g is None or g[0] != key:
        model.__dict__["_engine_graphs"] = None  # free the old graphs' memory first
        g = model.__dict__["_engine_graphs"] = (key, EncoderGraphs(model))
    return g[1]


class EncoderGraphs:
    """CUDA graphs of one encoder model's forward (see the module docstring for what the model provides).

    ``run(input_ids, attention_mask, token_type_ids, return_pooled=..., graph=...)`` takes checked (B, N) int64
    inputs on the model's device and returns what ``model.graph_forward`` returns, cut back to N (one tensor when
    there is one output).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.entries: dict[tuple, _Entry] = {}
        self.pool = None
        # One call at a time: a call fills its entry's static inputs, runs (or replays) and copies the outputs out,
        # and the graphs share one memory pool, so another call in between (a thread) would corrupt either.
        self.lock = threading.Lock()

    def __reduce__(self):  # deepcopy / pickle of a model: fresh, empty graphs (graphs and locks are not copied)
        return (EncoderGraphs, (self.model,))

    def _entry(self, key: tuple) -> _Entry:
        e = self.entries.get(key)
        if e is None:
            B, Nb, has_mask, has_types, pooled = key
            dev = self.model.graph_weight().device
            zeros = lambda: torch.zeros(B, Nb, dtype=torch.long, device=dev)  # noqa: E731
            e = _Entry(zeros(), zeros() if has_mask else None, zeros() if has_types else None,
                       trim=tuple(self.model.graph_outputs(pooled)))
            self.entries[key] = e
        return e

    def _forward(self, e: _Entry, pooled: bool) -> tuple:
        return tuple(self.model.graph_forward(e.ids, e.mask, e.token_types, pooled))

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            token_type_ids: torch.Tensor | None, *, return_pooled: bool = False, graph: bool = True):
        with self.lock:
            return self._run(input_ids, attention_mask, token_type_ids, return_pooled, graph)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             token_type_ids: torch.Tensor | None, return_pooled: bool, graph: bool):
        B, N = input_ids.shape
        Nb = length_bucket(N, self.model.config.max_seq_len)
        has_mask = attention_mask is not None or Nb > N
        e = self._entry((B, Nb, has_mask, token_type_ids is not None, return_pooled))
        pad = self.model.config.pad_token_id
        _fill(e.ids, input_ids, N, 0 if pad is None else pad)
        if e.mask is not None:
            _fill(e.mask, attention_mask, N, 0)
        if e.token_types is not None:
            _fill(e.token_types, token_type_ids, N, 0)
        if not graph:
            outputs = self._forward(e, return_pooled)
        else:
            if e.graph is None and e.calls < WARMUP_CALLS:
                e.calls += 1
                box = []
                on_side_stream(lambda: box.append(self._forward(e, return_pooled)))
                outputs = box[0]
            else:
                if e.graph is None:
                    if self.pool is None:
                        self.pool = torch.cuda.graph_pool_handle()
                    box = []
                    e.graph = capture(lambda: box.append(self._forward(e, return_pooled)), pool=self.pool)
                    e.outputs = box[0]
                e.graph.replay()
                outputs = e.outputs
        res = tuple(o[:, :N].clone() if t and Nb > N else o.clone() for o, t in zip(outputs, e.trim, strict=True))
        return res if len(res) > 1 else res[0]


def _fill(dst: torch.Tensor, src: torch.Tensor | None, n: int, pad: int, *, real: int = 1) -> None:
    """dst (B, Nb) <- src (B, n) (or ``real`` everywhere when src is None), then ``pad`` beyond n."""
    if src is None:
        dst[:, :n].fill_(real)
    else:
        dst[:, :n].copy_(src)
    if n < dst.shape[1]:
        dst[:, n:].fill_(pad)
