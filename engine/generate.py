"""Text generation for GPT-2 LM models: static KV cache, prefill + decode loop, CUDA graphs, streaming.

    ids = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)          # (B, T + new) int64
    for step in stream(model, input_ids, max_new_tokens=64, do_sample=True, seed=0):  # (B,) int64 per step
        ...

How it works (gpt-fast style, Hugging Face ``generate`` semantics):
- Rows are left-aligned in the cache: row b's n_b real prompt tokens sit at cache positions 0..n_b-1 with
  position ids 0..n_b-1 (HF's ``cumsum(mask) - 1``), and its i-th new token goes to position n_b + i. Valid keys
  are contiguous, so ``ops.decode_attention``'s per-row lengths hide exactly the keys HF's attention_mask hides.
- Prefill: one forward over the aligned prompts (B, T) with causal flash attention (the padding now sits to the
  right of every real token, where the causal mask already hides it); each row's first new token comes from its
  last real position.
- Decode: one token per row per step: its k/v are scattered into the cache at the row's position and it attends
  through ``ops.decode_attention``. Every tensor a step touches is preallocated, so on CUDA the whole step
  (forward, greedy argmax, EOS bookkeeping, output write) is captured once in a CUDA graph and replayed.
- Sampling (``do_sample``, or greedy with a repetition penalty) runs on the host through ``engine.sampling``
  (the C++ sampler): the step's logits go to pinned memory, the sampled ids come back. Seeds: the sampler keys
  its draws by (seed, row), so step s uses a seed derived from (seed, s) (engine/decoding.py's step_seed).
- Each row stops at its own EOS and is padded with ``pad_token_id`` (default, as HF: the model's pad id, else the
  first EOS id) after it; the loop ends once every row has stopped, so the output has HF's length.

Concurrency: sessions (cache, step buffers, CUDA graphs; one per batch size and cache length) live in a per-model
``engine.sessions.SessionPool``. Each request checks one out for its whole run (``generate``: the call;
``stream``: from the first ``next()`` until the iterator ends, is closed or is dropped), so threads calling
``generate`` on one model, and interleaved streams in one thread, each decode in their own session: correct
tokens, no waiting on each other, no deadlock. Memory: one session per concurrent request. CUDA graph captures
are serialised by a lock and use thread-local capture mode, so other threads keep working during a capture.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engine import sampling
from engine.decoding import MAX_EOS_IDS, decoding_options, step_seed
from engine.graphs import capture as _capture
from engine.graphs import on_side_stream as _on_side_stream
from engine.kv_cache import StaticKVCache
from engine.models import blocks
from engine.sessions import SessionPool

__all__ = ["StaticKVCache", "generate", "stream"]

CACHE_ALIGN = 64  # cache lengths are rounded up to this, so nearby request sizes share a session and its graphs
CHECK_EVERY = 8  # on CUDA without streaming, "has every row stopped?" (a host sync) is asked every N steps


@dataclass
class _Request:
    """A validated generate call."""

    input_ids: torch.Tensor  # (B, T) int64 on the model's device
    lengths: torch.Tensor  # (B,) int64 real tokens per row
    max_new_tokens: int
    do_sample: bool
    params: dict  # sampler keywords (temperature, top_k, top_p, min_p, repetition_penalty)
    host_sampling: bool  # the token choice runs in engine.sampling (else argmax on the device)
    eos: list[int]
    pad: int
    seed: int
    cuda_graph: bool


class _Session:
    """Everything decoding needs for one (model, batch size, cache length), preallocated and reused across
    calls; CUDA graphs are captured on first use and replayed from then on."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int) -> None:
        cfg, w = model.config, model.wte.weight
        B, dev = batch_size, w.device
        self.model = model
        self.cache = StaticKVCache(num_layers=cfg.num_layers, batch_size=B, num_heads=cfg.num_heads,
                                   head_dim=cfg.head_dim, max_len=max_len, dtype=w.dtype, device=dev)
        long = dict(dtype=torch.long, device=dev)
        self.tok = torch.zeros(B, 1, **long)  # the token each row feeds next
        self.next = torch.zeros(B, **long)  # chosen ids; after _commit, the committed (EOS-padded) ids
        self.out = torch.zeros(B, max_len, **long)  # prompt + new ids, HF layout
        self.col = torch.zeros(1, **long)  # the output column the next token goes to
        self.n_new = torch.zeros((), **long)  # tokens HF would have produced so far
        self.finished = torch.zeros(B, dtype=torch.bool, device=dev)
        self.eos = torch.full((MAX_EOS_IDS,), -1, **long)
        self.pad = torch.zeros((), **long)
        self.logits = torch.zeros(B, cfg.vocab_size, dtype=w.dtype, device=dev)
        self.host_logits = (torch.empty(B, cfg.vocab_size, dtype=w.dtype, pin_memory=True) if w.is_cuda
                            else None)  # pinned: the sampler's logits come back asynchronously
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.warmups: dict[str, int] = {}

    # ---- the pieces of a step (each touches only preallocated tensors: capturable) --------------------------
    def _forward(self) -> None:
        """Feed ``tok`` at ``positions``; logits (B, V) of the next token into ``logits``; advance positions."""
        cache = self.cache
        cache.seqlens.copy_(cache.positions[:, 0] + 1)
        h = self.model.hidden_states(self.tok, position_ids=cache.positions, cache=cache)  # (B, 1, C)
        self.logits.copy_(self.model.logits(h[:, -1]))
        cache.positions += 1

    def _greedy(self) -> None:
        self.next.copy_(self.logits.argmax(-1))  # ties: the lowest id, as HF's argmax

    def _commit(self) -> None:
        """Pad stopped rows, write ``next`` to the output, update the EOS state, feed it next step."""
        nxt = torch.where(self.finished, self.pad, self.next)
        self.n_new += (~self.finished).any()
        self.out.index_copy_(1, self.col, nxt[:, None])
        self.finished |= (nxt[:, None] == self.eos).any(1)
        self.next.copy_(nxt)
        self.tok.copy_(nxt[:, None])
        self.col += 1

    def _greedy_step(self) -> None:
        self._forward()
        self._greedy()
        self._commit()

    def run(self, name: str, fn, graph: bool) -> None:
        """Run ``fn`` eagerly, or (graph=True, CUDA) through a CUDA graph captured after two warm-up runs."""
        if not graph:
            fn()
            return
        g = self.graphs.get(name)
        if g is None:
            if self.warmups.get(name, 0) < 2:  # compile kernels, set up cuBLAS, outside the capture
                _on_side_stream(fn)
                self.warmups[name] = self.warmups.get(name, 0) + 1
                return
            g = self.graphs[name] = _capture(fn)  # recorded, not run
        g.replay()


    # ---- one request -----------------------------------------------------------------------------------------
    def start(self, req: _Request) -> None:
        """Reset the state for ``req``, prefill the prompts, leave the first token's logits in ``logits``."""
        ids, lengths = req.input_ids, req.lengths
        B, T = ids.shape
        self.out[:, :T].copy_(ids)
        self.col.fill_(T)
        self.n_new.zero_()
        self.finished.zero_()
        self.eos.fill_(-1)
        if req.eos:
            self.eos[:len(req.eos)] = torch.tensor(req.eos, dtype=torch.long)
        self.pad.fill_(req.pad)
        shift = (T - lengths)[:, None]
        aligned = ids.gather(1, (torch.arange(T, device=ids.device)[None] + shift).clamp(max=T - 1))
        cache = self.cache
        cache.prefilling = True
        try:
            h = self.model.hidden_states(aligned, position_ids=torch.arange(T, device=ids.device)[None],
                                         cache=cache)  # (B, T, C)
        finally:
            cache.prefilling = False
        last = h.gather(1, (lengths - 1).view(B, 1, 1).expand(B, 1, h.shape[-1])).squeeze(1)  # (B, C)
        self.logits.copy_(self.model.logits(last))
        cache.positions.copy_(lengths[:, None])

    def host_choose(self, req: _Request, step: int, host_out: torch.Tensor, col: int) -> torch.Tensor:
        """Sample the next ids from ``logits`` with engine.sampling on the host (prev_tokens: the ``col`` ids of
        ``host_out`` so far, padding included, as HF's repetition penalty sees them). Returns them (B,) on the
        CPU and copies them into ``next``."""
        if self.host_logits is not None:
            self.host_logits.copy_(self.logits, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            logits = self.host_logits
        else:
            logits = self.logits
        params = dict(req.params)
        if params["repetition_penalty"] != 1.0:
            params["prev_tokens"] = host_out[:, :col]
        seed = step_seed(req.seed, step)
        ids = sampling.sample(logits, **params, seed=seed).view(-1).cpu()  # (B,)
        self.next.copy_(ids)
        return ids


def _session_key(model: torch.nn.Module, batch_size: int, max_len: int) -> tuple:
    w = model.wte.weight
    return batch_size, max_len, w.device, w.dtype, w.data_ptr()


def _checkout(model: torch.nn.Module, req: _Request, max_len: int) -> contextlib.AbstractContextManager[_Session]:
    """The session ``req`` owns while the ``with`` block runs (see engine/sessions.py)."""
    B = req.input_ids.shape[0]
    return SessionPool.of(model, "generate").checkout(_session_key(model, B, max_len),
                                                      lambda: _Session(model, B, max_len))


@torch.no_grad()  # a generator: grad is off while it runs, the caller's mode is kept between yields
def _steps(s: _Session, req: _Request, *, streaming: bool) -> Iterator[torch.Tensor]:
    """Run ``req`` on session ``s``. When ``streaming``, yields each step's committed ids (B,) int64 on the
    CPU (EOS-padded); otherwise yields nothing and leaves the result in ``s.out`` / ``s.n_new``. Stops after
    max_new_tokens, or once every row has emitted an EOS."""
    B, T = req.input_ids.shape
    graph = req.cuda_graph
    check_every = 1 if streaming or not graph else CHECK_EVERY
    host = req.host_sampling
    if host:  # a host mirror of the output and EOS state: prev_tokens, and stop checks without a sync
        host_out = torch.zeros(B, T + req.max_new_tokens, dtype=torch.long)
        prompt = req.input_ids.cpu()
        first = prompt.gather(1, (T - req.lengths.cpu())[:, None])  # each row's first real token
        real = torch.arange(T)[None] >= (T - req.lengths.cpu())[:, None]
        host_out[:, :T] = torch.where(real, prompt, first)  # as HF (5.x), left padding is not penalised
        host_finished = torch.zeros(B, dtype=torch.bool)
        eos = torch.tensor(req.eos or [-1], dtype=torch.long)
    s.start(req)
    for step in range(req.max_new_tokens):
        if host:
            if step > 0:
                s.run("forward", s._forward, graph)
            ids = s.host_choose(req, step, host_out, T + step)
            s.run("commit", s._commit, graph)
            nxt = torch.where(host_finished, req.pad, ids)
            host_out[:, T + step] = nxt
            host_finished |= torch.isin(nxt, eos)
            if streaming:
                yield nxt
            if bool(host_finished.all()):
                break
            continue
        if step == 0:
            s._greedy()
            s._commit()
        else:
            s.run("greedy_step", s._greedy_step, graph)
        if streaming:
            yield s.next.to("cpu", copy=True)
        if req.eos and (step + 1) % check_every == 0 and bool(s.finished.all()):
            break


# ---- validation (everything is checked before any work; the decoding keywords: engine/decoding.py) ---------
def check_model(model: object) -> None:
    """Raise TypeError unless ``model`` is an engine GPT-2 model with an LM head (GPT2LMHeadModel)."""
    from engine.models.gpt2 import GPT2

    arch = getattr(getattr(model, "config", None), "architecture", type(model).__name__)
    if not isinstance(model, GPT2) or model.config.head != "lm":
        raise TypeError(f"generate needs a GPT-2 (causal LM) model, i.e. GPT2LMHeadModel; this is {arch}")


def _request(model: torch.nn.Module, input_ids: object, *, attention_mask: object, max_new_tokens: object,
             do_sample: object, temperature: object, top_k: object, top_p: object, min_p: object,
             repetition_penalty: object, eos_token_id: object, pad_token_id: object, seed: object,
             cuda_graph: object) -> _Request:
    check_model(model)
    cfg, dev = model.config, model.wte.weight.device
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 0:
        raise ValueError(f"input_ids holds an empty prompt (shape {tuple(input_ids.shape)}); generate needs at "
                         "least one prompt token per row")
    ids, mask, _ = blocks.check_inputs(input_ids, attention_mask, None, vocab_size=cfg.vocab_size,
                                       max_len=cfg.max_position_embeddings, type_vocab_size=None, device=dev)
    B, T = ids.shape
    max_new, params, eos, pad, seed = decoding_options(
        cfg, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed)
    limit = cfg.max_position_embeddings
    if T + max_new > limit:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new} = {T + max_new} exceeds this model's "
                         f"maximum of {limit} positions (n_positions)")
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda"
    elif not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be a bool or None; got {type(cuda_graph).__name__}")
    elif cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {dev}")
    if mask is None:  # no mask, or all ones
        lengths = torch.full((B,), T, dtype=torch.long, device=dev)
    else:
        if T > 1 and not bool((mask[:, 1:] >= mask[:, :-1]).all()):
            raise ValueError("attention_mask must be left-padded (zeros, then ones, in every row): generate "
                             "continues each row after its last token, as HF's decoder-only generate expects")
        if not bool(mask[:, -1].all()):
            raise ValueError("attention_mask has a row with no real token (all zeros): each prompt needs at "
                             "least one token")
        lengths = mask.sum(1)
    host = do_sample or params["repetition_penalty"] != 1.0
    return _Request(ids, lengths, max_new, do_sample, params, host, eos, pad, seed, cuda_graph)


# ---- public functions ----------------------------------------------------------------------------------------
def _prepare(model: torch.nn.Module, input_ids: object, kw: dict) -> tuple[_Request, int]:
    """(validated request, the cache length its session needs)."""
    req = _request(model, input_ids, **kw)
    B, T = req.input_ids.shape
    need = T + req.max_new_tokens
    return req, min(model.config.max_position_embeddings, -(-need // CACHE_ALIGN) * CACHE_ALIGN)


def generate(model: torch.nn.Module, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             seed: int | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Continue each prompt, like Hugging Face's ``generate``; returns (B, T + new) int64 on the model's device.

    input_ids: (B, T) prompts; attention_mask: (B, T) of 0/1, left padding only. Greedy unless ``do_sample``;
    sampling follows HF's processors (repetition penalty, then temperature, top-k, top-p, min-p; top_k=0 is off,
    unlike HF's default of 50). ``eos_token_id`` (an id or a list) stops a row, which is then padded with
    ``pad_token_id`` (default, as HF: the model's pad id, else the first EOS id); None (the default) takes the
    model config's EOS id(s), as HF does, and ``[]`` stops on nothing. ``new`` is smaller than max_new_tokens
    only when every row stopped early.
    ``seed`` makes sampling reproducible. ``cuda_graph``: replay each decode step as a CUDA graph (default: on
    for CUDA models). Safe to call from several threads on one model (each call decodes in its own session).
    """
    kw = dict(attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
              repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
              seed=seed, cuda_graph=cuda_graph)
    req, max_len = _prepare(model, input_ids, kw)
    with _checkout(model, req, max_len) as s:
        for _ in _steps(s, req, streaming=False):
            pass
        return s.out[:, :req.input_ids.shape[1] + int(s.n_new)].clone()


def _stream(model: torch.nn.Module, req: _Request, max_len: int) -> Iterator[torch.Tensor]:
    with _checkout(model, req, max_len) as s:  # held from the first next() until the stream ends or is closed
        yield from _steps(s, req, streaming=True)


def stream(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs) -> Iterator[torch.Tensor]:
    """Like :func:`generate` (same keywords), but yields each step's new ids as they are produced: (B,) int64
    on the CPU (``pad_token_id`` for rows that already stopped). Concatenated, they equal the new part of
    ``generate``'s result. Arguments are checked by this call, before any work. An open stream owns its decode
    session, so other calls (other threads, or other streams interleaved with it) run beside it unharmed; close
    it (or drop it, or run it to the end) to hand the session back for reuse.
    """
    kw = {k: p.default for k, p in inspect.signature(generate).parameters.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - set(kw))
    if unknown:
        raise TypeError(f"stream() got unexpected keyword arguments: {', '.join(unknown)}")
    kw.update(kwargs)
    req, max_len = _prepare(model, input_ids, kw)
    return _stream(model, req, max_len)
