"""Text-to-text generation for the T5 family (T5 / mT5 / UMT5 ForConditionalGeneration), with HF's semantics.

    ids = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)        # (B, 1 + new) int64
    for step in stream(model, input_ids, max_new_tokens=64, do_sample=True, seed=0):  # (B,) int64 per step
        ...

How it works:
- The encoder runs once over the (padded: left, right or anywhere) source batch (replayed as a CUDA graph for small
  CUDA batches, as ``model(...)`` does: ``model.cuda_graph``). Each decoder layer's
  cross-attention keys/values are computed from its output once and reused by every step.
- The decoder starts every row from ``decoder_start_token_id`` (the config's, else its bos_token_id, as HF) and
  feeds one token per row per step: its self-attention keys/values go into a static cache (engine/kv_cache.py's
  StaticKVCache, preallocated for the whole call) and it attends through ``ops.decode_attention`` with the
  decoder's relative position bias table (one (H, 2L - 1) table per call, L = the cache length).
- Token choice, EOS handling and keywords are generate's (engine/decoding.py: the same checks and per-step seeds;
  the same C++ sampler for sampling or a repetition penalty); rows that stopped are padded with the config's
  pad_token_id (HF's default for T5), and the call ends once every row has stopped. The result starts with the
  decoder start token, like HF's encoder-decoder generate.
Decoding state (cache, buffers) lives in the call, nothing is kept on the model, so calls on one model may run
concurrently from threads, and streams may interleave: no decode session is shared (unlike GPT-2's, which
engine.sessions lends out). The encoder's CUDA graphs serve one call at a time (engine/graphs.py).
"""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engine import sampling
from engine.decoding import decoding_options, step_seed
from engine.kv_cache import StaticKVCache
from engine.models import blocks
from engine.models.t5 import T5, Context, key_padding

__all__ = ["generate", "stream"]

CHECK_EVERY = 8  # on CUDA without streaming, "has every row stopped?" (a host sync) is asked every N steps


@dataclass
class _Call:
    """A validated generate call."""

    input_ids: torch.Tensor  # (B, N) int64 on the model's device
    attention_mask: torch.Tensor | None  # (B, N) int64, or None when there is no padding
    max_new_tokens: int
    params: dict  # sampler keywords
    host_sampling: bool  # the token choice runs in engine.sampling (else argmax on the device)
    eos: list[int]
    pad: int
    seed: int
    start: int  # decoder_start_token_id


def check_model(model: object) -> None:
    """Raise TypeError unless ``model`` is an engine T5-family model with an LM head."""
    arch = getattr(getattr(model, "config", None), "architecture", type(model).__name__)
    if not isinstance(model, T5) or model.config.head != "lm":
        raise TypeError(f"seq2seq generate needs a T5-family model with an LM head (T5ForConditionalGeneration, "
                        f"MT5ForConditionalGeneration, UMT5ForConditionalGeneration); this is {arch}")


def _start_id(cfg, decoder_start_token_id: object) -> int:
    value = decoder_start_token_id
    if value is None:  # as HF: the config's, else its BOS
        value = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.bos_token_id
    if value is None:
        raise ValueError("decoder_start_token_id is needed: the config has neither decoder_start_token_id nor "
                         "bos_token_id (T5 checkpoints use the pad id, 0); pass decoder_start_token_id=...")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < cfg.vocab_size:
        raise ValueError(f"decoder_start_token_id must be a token id in [0, {cfg.vocab_size}); got {value!r}")
    return int(value)


def _prepare(model: torch.nn.Module, input_ids: object, *, attention_mask: object, max_new_tokens: object,
             do_sample: object, temperature: object, top_k: object, top_p: object, min_p: object,
             repetition_penalty: object, eos_token_id: object, pad_token_id: object,
             decoder_start_token_id: object, seed: object) -> _Call:
    check_model(model)
    cfg = model.config
    ids, mask, _ = blocks.check_inputs(input_ids, attention_mask, None, vocab_size=cfg.vocab_size,
                                       max_len=cfg.max_seq_len, type_vocab_size=None,
                                       device=model.shared.weight.device)
    if mask is not None and not bool(mask.any(1).all()):
        raise ValueError("attention_mask has a row with no real token (all zeros): each source needs at least one")
    max_new, params, eos, pad, seed = decoding_options(
        cfg, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed)
    start = _start_id(cfg, decoder_start_token_id)
    host = do_sample or params["repetition_penalty"] != 1.0
    return _Call(ids, mask, max_new, params, host, eos, pad, seed, start)


@torch.no_grad()  # a generator: grad is off while it runs, the caller's mode is kept between yields
def _steps(model: T5, call: _Call, out: torch.Tensor, n_new: torch.Tensor, *,
           streaming: bool) -> Iterator[torch.Tensor]:
    """Run ``call``, writing the decoder ids into ``out`` (B, 1 + max_new) and the produced length into ``n_new``.
    When ``streaming``, yields each step's committed ids (B,) int64 on the CPU."""
    ids = call.input_ids
    B, dev = ids.shape[0], ids.device
    cfg, dec = model.config, model.decoder
    w = model.shared.weight
    check_every = 1 if streaming or not ids.is_cuda else CHECK_EVERY
    memory = model.encoder_output(ids, call.attention_mask)  # (B, N, C), once (a CUDA graph: model.cuda_graph)
    max_len = call.max_new_tokens  # the start token and every token but the last are fed back
    cache = StaticKVCache(num_layers=len(dec.layers), batch_size=B, num_heads=cfg.num_heads,
                          head_dim=cfg.head_dim, max_len=max_len, dtype=w.dtype, device=dev)
    ctx = Context(tables=dec.tables(max_len), cache=cache, cross_kv=dec.cross_kv(memory),
                  memory_mask=key_padding(call.attention_mask))
    eos = torch.tensor(call.eos or [-1], dtype=torch.long, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    out[:, 0] = call.start
    tok = out[:, :1]  # (B, 1): the token each row feeds next
    for step in range(call.max_new_tokens):
        cache.positions.fill_(step)
        cache.seqlens.fill_(step + 1)
        logits = model.logits(dec(model.shared(tok), ctx)[:, -1])  # (B, V)
        if call.host_sampling:
            params = dict(call.params)
            if params["repetition_penalty"] != 1.0:
                params["prev_tokens"] = out[:, :step + 1].cpu()
            chosen = sampling.sample(logits.cpu(), **params, seed=step_seed(call.seed, step)).view(-1).to(dev)
        else:
            chosen = logits.argmax(-1)  # ties: the lowest id, as HF's argmax
        nxt = torch.where(finished, call.pad, chosen)
        n_new += (~finished).any()
        finished |= torch.isin(nxt, eos)
        out[:, step + 1] = nxt
        tok = out[:, step + 1:step + 2]
        if streaming:
            yield nxt.cpu()
        if call.eos and (step + 1) % check_every == 0 and bool(finished.all()):
            break


def _begin(model: torch.nn.Module, input_ids: object, kw: dict) -> tuple[_Call, torch.Tensor, torch.Tensor]:
    call = _prepare(model, input_ids, **kw)
    dev = call.input_ids.device
    out = torch.zeros(call.input_ids.shape[0], 1 + call.max_new_tokens, dtype=torch.long, device=dev)
    return call, out, torch.zeros((), dtype=torch.long, device=dev)


def generate(model: torch.nn.Module, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             decoder_start_token_id: int | None = None, seed: int | None = None) -> torch.Tensor:
    """Translate / summarise / ... each source row, like Hugging Face's encoder-decoder ``generate``.

    input_ids: (B, N) source ids; attention_mask: (B, N) of 0/1, padding anywhere (each row needs a real token).
    Returns (B, 1 + new) int64 on the model's device: the decoder start token, then the generated ids. Keywords as
    engine.generate.generate (greedy unless ``do_sample``; HF's processor order; ``eos_token_id=None`` takes the
    config's EOS ids, ``[]`` stops on nothing; ``seed`` makes sampling reproducible), plus
    ``decoder_start_token_id`` (default: the config's, else its bos_token_id). Stopped rows are padded with
    ``pad_token_id`` (default: the config's). ``new`` < max_new_tokens only when every row stopped early.
    """
    kw = dict(attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
              eos_token_id=eos_token_id, pad_token_id=pad_token_id, decoder_start_token_id=decoder_start_token_id,
              seed=seed)
    call, out, n_new = _begin(model, input_ids, kw)
    for _ in _steps(model, call, out, n_new, streaming=False):
        pass
    return out[:, :1 + int(n_new)].clone()


def stream(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs) -> Iterator[torch.Tensor]:
    """Like :func:`generate` (same keywords), but yields each step's new ids as they are produced: (B,) int64 on the
    CPU (``pad_token_id`` for rows that already stopped). Arguments are checked by this call, before any work."""
    kw = {k: p.default for k, p in inspect.signature(generate).parameters.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - set(kw))
    if unknown:
        raise TypeError(f"stream() got unexpected keyword arguments: {', '.join(unknown)}")
    kw.update(kwargs)
    call, out, n_new = _begin(model, input_ids, kw)
    return _steps(model, call, out, n_new, streaming=True)
