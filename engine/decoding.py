"""The decoding keywords of generate and stream, checked and resolved once for both generators (GPT-2's
engine/generate.py, T5's engine/seq2seq.py): max_new_tokens, do_sample and the sampler's parameters, EOS and pad ids
(HF's defaults from the model config), the seed, and each decode step's sampler seed."""
from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence

import torch

from engine import sampling

MAX_EOS_IDS = 8  # EOS ids live in a fixed-size device tensor (generate's static shapes for the CUDA graph)


def _number(name: str, value: object, ok, expected: str, *, integer: bool = False) -> float | int:
    kinds = (numbers.Integral,) if integer else (numbers.Real,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {expected}; got {type(value).__name__} {value!r}")
    if not ok(value):
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return int(value) if integer else float(value)


def _token_ids(name: str, value: object, vocab: int, *, allow_empty: bool = False) -> list[int]:
    vals = [value] if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if isinstance(vals, torch.Tensor):
        vals = vals.flatten().tolist()
    if not isinstance(vals, Sequence) or isinstance(vals, str) or not (vals or allow_empty) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals):
        what = "a list" if allow_empty else "a non-empty list"
        raise TypeError(f"{name} must be None, a token id or {what} of token ids; got {value!r}")
    bad = [int(v) for v in vals if not 0 <= int(v) < vocab]
    if bad:
        raise ValueError(f"{name} must lie in [0, {vocab}) (the vocabulary); got {bad[0]}")
    return [int(v) for v in vals]


def config_eos_ids(cfg) -> list[int]:
    """The config's EOS id(s) that lie in the vocabulary: HF's default stop tokens (tiny test models carry
    GPT-2's 50256 with a small vocabulary; such ids are dropped)."""
    value = cfg.eos_token_id
    ids = [] if value is None else [value] if isinstance(value, int) else list(value)
    return [i for i in ids if 0 <= i < cfg.vocab_size]


def decoding_options(cfg, *, max_new_tokens: object, do_sample: object, temperature: object, top_k: object,
                     top_p: object, min_p: object, repetition_penalty: object, eos_token_id: object,
                     pad_token_id: object, seed: object) -> tuple[int, dict, list[int], int, int]:
    """Check generate's decoding keywords for a model config (also used by engine.seq2seq).

    Returns (max_new_tokens, sampler params, EOS ids, pad id, seed). eos_token_id None: the config's EOS ids;
    pad_token_id None: the config's pad id (as HF, whose generation config carries it), else the first EOS id (HF's
    fallback), else 0."""
    max_new = _number("max_new_tokens", max_new_tokens, lambda v: v >= 1, "an integer >= 1", integer=True)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool; got {type(do_sample).__name__} {do_sample!r}")
    params = {
        "temperature": _number("temperature", temperature, lambda v: v > 0 or (v == 0 and not do_sample),
                               "a number > 0 when sampling (do_sample=False is greedy)"),
        "top_k": sampling.check_scalar("top_k", top_k),
        "top_p": sampling.check_scalar("top_p", top_p),
        "min_p": sampling.check_scalar("min_p", min_p),
        "repetition_penalty": sampling.check_scalar("repetition_penalty", repetition_penalty),
    }
    if not do_sample:  # as HF: greedy ignores the warpers, keeps the repetition penalty
        params.update(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    if eos_token_id is None:  # as HF: the model's own EOS id(s)
        eos = config_eos_ids(cfg)
    else:
        eos = _token_ids("eos_token_id", eos_token_id, cfg.vocab_size, allow_empty=True)
    if len(eos) > MAX_EOS_IDS:
        raise ValueError(f"eos_token_id holds {len(eos)} ids; at most {MAX_EOS_IDS} are supported")
    if pad_token_id is None:  # as HF: the model's pad id (generation_config.json / config.json), else EOS
        pad = cfg.pad_token_id if cfg.pad_token_id is not None and cfg.pad_token_id < cfg.vocab_size else \
            eos[0] if eos else 0
    else:
        pad = _token_ids("pad_token_id", pad_token_id, cfg.vocab_size)
        if len(pad) != 1:
            raise ValueError(f"pad_token_id must be a single token id; got {pad_token_id!r}")
        pad = pad[0]
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None; got {type(seed).__name__} {seed!r}")
    return max_new, params, eos, pad, int(seed)


def step_seed(seed: int, step: int) -> int:
    """The sampler seed of decode step ``step`` of a call seeded with ``seed``: the seed itself at step 0 (a
    one-token call draws as ``sampling.sample(seed=seed)``), later a 64-bit hash of (seed mod 2**64, step). A hash,
    not ``seed + step * C``: with any such shift a call seeded with another call's step-s seed would replay that
    call's later steps."""
    seed %= 2**64
    if step == 0:
        return seed
    key = seed.to_bytes(8, "little") + step.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
