"""Next-token sampling with Hugging Face's semantics, computed by the C++ extension ``engine._sampler``.

    from engine import sampling
    p = sampling.probs(logits, temperature=0.8, top_p=0.9)          # (B, V) float32: the distribution drawn from
    ids = sampling.sample(logits, temperature=0.8, top_p=0.9, seed=0) # (B, 1) int64

Per row, in HF's order (as ``RepetitionPenaltyLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper``): the repetition penalty divides positive and multiplies negative logits of
the tokens in ``prev_tokens`` (a repeated token counts once); the temperature divides (``0`` is greedy: argmax, ties to
the lowest id); top-k keeps every logit >= the k-th largest (``0`` is off); top-p keeps the smallest set of most
likely tokens whose mass reaches ``top_p`` (always at least one; ``1`` is off); min-p keeps tokens whose probability is
>= ``min_p`` times the top one's (``0`` is off). Ties at a top-p cut, which HF leaves to an unstable sort, are broken
towards the lower id. Each option is a scalar or a tensor / sequence of B values (one per row).

Shapes: logits (B, V) -> probs (B, V), sample (B, 1); logits (V,) -> probs (V,), sample (1,). Logits may be float32,
float16 or bfloat16 and non-contiguous; they are read in place (no copy). CUDA logits are copied to the CPU first
(B * V elements over PCIe plus a device sync) and the results are copied back to the logits' device.

Determinism: with ``seed``, row b draws from a generator keyed by (seed, b) only: the same ids on every run, thread
count and platform. Without one, a seed is drawn from torch's default generator, so ``torch.manual_seed`` repeats runs.
Calls are thread-safe and release the GIL; rows of a large batch run on several threads (``num_threads`` overrides
the choice). On x86 CPUs with AVX2 the hot loops use it, and AVX-512 for the top-p pass, all bit-identical to the
SSE2 / portable loops (``ENGINE_SAMPLER_NO_AVX512=1`` stops at AVX2; ``ENGINE_SAMPLER_NO_AVX2=1`` forces the base).

Cost: no full sort of the vocabulary. Top-k pre-filters with per-block maxima and sorts only about k candidates;
top-p computes exp once per token in one pass that also sums the mass and gathers the tokens within 10 nats of the
max, then bins those on a log scale and sorts only the bin where the cut falls (the whole row only when they hold
less than top_p of the mass); softmax sums in double.
"""
from __future__ import annotations

import importlib
import itertools
import numbers
from collections.abc import Sequence
from typing import Union

import torch

__all__ = ["check_scalar", "probs", "sample", "probs_reference"]

Param = Union[float, int, torch.Tensor, Sequence[float]]
PrevTokens = Union[torch.Tensor, Sequence[Sequence[int]], Sequence[int], None]

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MAX_THREADS = 1 << 16  # num_threads beyond this (or beyond the rows) change nothing; kept inside C++'s int
_INT_CAP = 2**62  # integer options go to C++ as int64; larger top_k values mean the same as this one (keep all)
_ext = None


def _extension():
    global _ext
    if _ext is None:
        try:
            _sampler = importlib.import_module("engine._sampler")
        except ImportError as exc:
            raise ImportError(
                "engine's C++ sampler (engine._sampler) is not built. Build it from the repository root with "
                "`pip install -e .` (or `pip install --no-build-isolation -e .` when torch and pybind11 are "
                f"already installed); a C++17 compiler is needed. Original error: {exc}"
            ) from exc
        _ext = _sampler
    return _ext


# name -> (integer?, check, what is expected)
_RULES = {
    "temperature": (False, lambda v: v >= 0, "a number >= 0 (0 means greedy)"),
    "top_k": (True, lambda v: v >= 0, "an integer >= 0 (0 means off)"),
    "top_p": (False, lambda v: 0 < v <= 1, "a number in (0, 1] (1 means off)"),
    "min_p": (False, lambda v: 0 <= v <= 1, "a number in [0, 1] (0 means off)"),
    "repetition_penalty": (False, lambda v: v > 0, "a number > 0 (1 means off)"),
}


def check_scalar(name: str, value: object) -> float | int:
    """One scalar option (top_k, top_p, min_p, repetition_penalty, temperature) checked by the rule ``probs`` and
    ``sample`` apply; any real number (integer for top_k) is accepted. TypeError for a non-number, ValueError out of
    range. Returns it as an int (top_k) or a float. For callers that validate before doing work (generate)."""
    integer, ok, expected = _RULES[name]
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {expected}; got {type(value).__name__} {value!r}")
    if not ok(value):
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return int(value) if integer else float(value)


def _param(name: str, value: Param, B: int, keep: list) -> tuple[float | int, int]:
    """(scalar, 0) or (0, pointer to B contiguous float64 / int64 values); checks scalars here, rows in C++."""
    integer, ok, expected = _RULES[name]
    kind = type(value)
    if (kind is int or (kind is float and not integer)) and ok(value):  # the common case, kept cheap
        return min(value, _INT_CAP) if integer else value, 0  # top_k past any vocabulary means "all": cap for C++
    if isinstance(value, (list, tuple)):
        try:
            value = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"{name} given per row must be a list of numbers ({expected}); got {value!r:.80} "
                            f"({type(exc).__name__}: {exc})") from None
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.item()
        else:
            if value.dim() != 1 or value.shape[0] != B:
                raise ValueError(f"{name} given per row must have shape ({B},); got {tuple(value.shape)}")
            if value.dtype == torch.bool or (integer and value.is_floating_point()) or value.is_complex():
                raise TypeError(f"{name} must hold {expected}; got a tensor of {value.dtype}")
            t = value.detach().to("cpu", torch.int64 if integer else torch.float64).contiguous()
            keep.append(t)
            return 0, t.data_ptr()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {expected}; got {type(value).__name__} {value!r}")
    if not ok(value):
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return (min(int(value), _INT_CAP) if integer else value), 0


def _prev(prev_tokens: PrevTokens, B: int, one_dim: bool, keep: list) -> tuple[int, int, int, int, int]:
    """(pointer, offsets pointer, T, stride_b, stride_t) of prev_tokens (not None: the caller passes (0, 0, 0, 0, 0)
    for None itself) for the extension."""
    if isinstance(prev_tokens, torch.Tensor):
        t = prev_tokens
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"prev_tokens must be an int64 (or int32) tensor of token ids; got {t.dtype}")
        if t.dim() == 1 and one_dim:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[0] != B:
            want = "(T,) or (1, T)" if one_dim else f"({B}, T)"
            raise ValueError(f"prev_tokens must have shape {want} for these logits; got {tuple(prev_tokens.shape)}")
        t = t.detach().to("cpu", torch.int64)
        keep.append(t)
        return t.data_ptr(), 0, t.shape[1], t.stride(0), t.stride(1)
    if not isinstance(prev_tokens, (list, tuple)):
        raise TypeError(f"prev_tokens must be a (B, T) int64 tensor or a list of B lists of ids; "
                        f"got {type(prev_tokens).__name__}")
    rows = list(prev_tokens)
    if one_dim and all(isinstance(r, int) for r in rows):
        rows = [rows]
    if len(rows) != B:
        raise ValueError(f"prev_tokens must have one list of ids per row ({B}); got {len(rows)}")
    rows = [r.tolist() if isinstance(r, torch.Tensor) else r for r in rows]
    for r in rows:
        if not isinstance(r, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in r):
            raise TypeError(f"prev_tokens rows must be lists of int token ids; got {r!r:.60}")
    flat = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.int64)
    offsets = torch.tensor([0, *itertools.accumulate(len(r) for r in rows)], dtype=torch.int64)
    keep += [flat, offsets]
    return flat.data_ptr(), offsets.data_ptr(), 0, 0, 0


_MESSAGES = {
    "prev_tokens": "prev_tokens ids must be in [0, {V}); got {value:.0f} in row {row}",
    "nonfinite": "logits must not contain NaN or +inf; row {row} does",
    "all_neg_inf": "logits row {row} is all -inf: there is no token to sample",
    "overflow": "logits row {row} overflows float32 once repetition_penalty / temperature scale it ({value!r}); "
                "use a repetition_penalty nearer 1 or a larger temperature (temperature=0 is greedy)",
}


def _plain(t: Param, k: Param, p: Param, mp: Param, rp: Param) -> bool:
    """True when every option is a plain, in-range Python number (the common case; anything else takes _param)."""
    return (type(k) is int and 0 <= k <= _INT_CAP and type(t) in _NUMBER and t >= 0 and type(p) in _NUMBER and 0 < p <= 1
            and type(mp) in _NUMBER and 0 <= mp <= 1 and type(rp) in _NUMBER and rp > 0)


_NUMBER = (float, int)


def _run(logits: torch.Tensor, *, temperature: Param, top_k: Param, top_p: Param, min_p: Param,
         repetition_penalty: Param, prev_tokens: PrevTokens, want_ids: bool, seed: int | None,
         num_threads: int | None) -> torch.Tensor:
    # Kept lean: at B = 1 this wrapper costs about as much as the C++ work on a small vocabulary.
    ext = _ext if _ext is not None else _extension()
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor; got {type(logits).__name__}")
    code = _DTYPE_CODES.get(logits.dtype)
    if code is None:
        raise TypeError(f"logits must be float32, float16 or bfloat16; got {logits.dtype}")
    shape = logits.shape
    one_dim = len(shape) == 1
    if not one_dim and len(shape) != 2:
        raise ValueError(f"logits must have shape (B, V) or (V,); got {tuple(shape)}")
    if shape[-1] == 0:
        raise ValueError(f"logits must have at least one token (V > 0); got shape {tuple(shape)}")
    on_cpu = logits.is_cpu
    x = logits if on_cpu else logits.cpu()
    if one_dim:
        B, V = 1, shape[0]
        sb, sv = 0, x.stride(0)
    else:
        B, V = shape
        sb, sv = x.stride()
    keep: list = []  # per-row tensors made here stay alive until the extension returns
    if _plain(temperature, top_k, top_p, min_p, repetition_penalty):
        t, k, p, mp, rp = temperature, top_k, top_p, min_p, repetition_penalty
        t_ptr = k_ptr = p_ptr = mp_ptr = rp_ptr = 0
    else:
        t, t_ptr = _param("temperature", temperature, B, keep)
        k, k_ptr = _param("top_k", top_k, B, keep)
        p, p_ptr = _param("top_p", top_p, B, keep)
        mp, mp_ptr = _param("min_p", min_p, B, keep)
        rp, rp_ptr = _param("repetition_penalty", repetition_penalty, B, keep)
    prev = _prev(prev_tokens, B, one_dim, keep) if prev_tokens is not None else (0, 0, 0, 0, 0)
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (1,)).item()) if want_ids else 0
    elif type(seed) is not int and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; got {type(seed).__name__}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be an int >= 1 or None; got {num_threads!r}")
    if want_ids:
        out = torch.empty((1,) if one_dim else (B, 1), dtype=torch.int64)
        probs_ptr, ids_ptr = 0, out.data_ptr()
    else:
        out = torch.empty((V,) if one_dim else (B, V), dtype=torch.float32)
        probs_ptr, ids_ptr = out.data_ptr(), 0
    if B == 0:
        return out if on_cpu else out.to(logits.device)
    status, row, value = ext.run(
        x.data_ptr(), code, B, V, sb, sv, float(t), t_ptr, int(k), k_ptr, float(p), p_ptr, float(mp), mp_ptr,
        float(rp), rp_ptr, *prev, probs_ptr, ids_ptr, seed % 2**64, min(num_threads or 0, _MAX_THREADS))
    if status:
        what = ext.STATUS[status]
        if what in _RULES:
            raise ValueError(f"{what} must be {_RULES[what][2]}; got {value!r} at row {row}")
        raise ValueError(_MESSAGES[what].format(V=V, row=row, value=value))
    return out if on_cpu else out.to(logits.device)


def probs(logits: torch.Tensor, *, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
          min_p: Param = 0.0, repetition_penalty: Param = 1.0, prev_tokens: PrevTokens = None,
          num_threads: int | None = None) -> torch.Tensor:
    """The float32 distribution that :func:`sample` draws from.

    logits: (B, V) or (V,) float32/float16/bfloat16. prev_tokens: (B, T) int64 ids, or B lists of ids (for
    repetition_penalty). Options: scalars or B per-row values. num_threads: rows in parallel (default: by size).
    Returns (B, V) float32 (or (V,) for 1-D logits), zero outside the kept tokens, rows summing to 1;
    with temperature 0 a one-hot row at the argmax.
    """
    return _run(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, prev_tokens=prev_tokens, want_ids=False, seed=None,
                num_threads=num_threads)


def sample(logits: torch.Tensor, *, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
           min_p: Param = 0.0, repetition_penalty: Param = 1.0, prev_tokens: PrevTokens = None,
           seed: int | None = None, num_threads: int | None = None) -> torch.Tensor:
    """Draw one token id per row from :func:`probs`' distribution (temperature 0: greedy, ties to the lowest id).

    logits: (B, V) or (V,). Returns (B, 1) int64 (or (1,) for 1-D logits) on the logits' device.
    seed: any int; the same seed gives the same ids everywhere. None draws one from torch's default generator.
    """
    return _run(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, prev_tokens=prev_tokens, want_ids=True, seed=seed,
                num_threads=num_threads)


def _rows(value: Param, B: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype).detach().cpu().expand(B).clone()


def probs_reference(logits: torch.Tensor, *, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
                    min_p: Param = 0.0, repetition_penalty: Param = 1.0,
                    prev_tokens: PrevTokens = None) -> torch.Tensor:
    """Pure-PyTorch, sort-based twin of :func:`probs` (for tests and benchmarks; no argument checks).

    Logit transforms run in float32 as HF's processors do; softmax, cumulative sums and cuts in float64.
    logits: (B, V) or (V,); returns float32 of the same shape on the logits' device.
    """
    one_dim = logits.dim() == 1
    x = (logits.unsqueeze(0) if one_dim else logits).detach().float().cpu().clone()
    B, V = x.shape
    pen = _rows(repetition_penalty, B, torch.float64).float()[:, None]
    if prev_tokens is not None:
        if isinstance(prev_tokens, torch.Tensor):
            rows = prev_tokens.reshape(B, -1).cpu().tolist()
        else:
            rows = [prev_tokens] if one_dim and all(isinstance(i, int) for i in prev_tokens) else prev_tokens
        mask = torch.zeros(B, V, dtype=torch.bool)
        for b, r in enumerate(rows):
            mask[b, torch.as_tensor(list(r), dtype=torch.int64)] = True
        x = torch.where(mask, torch.where(x < 0, x * pen, x / pen), x)
    temp = _rows(temperature, B, torch.float64)
    greedy = temp == 0
    onehot = torch.zeros(B, V, dtype=torch.float64).scatter(1, torch.argmax(x, dim=-1)[:, None], 1.0)
    x = x / torch.where(greedy, 1.0, temp).float()[:, None]
    neg = torch.tensor(-float("inf"))
    k = _rows(top_k, B, torch.int64)
    values, order = torch.sort(x, dim=-1, descending=True, stable=True)  # ties: lower id first
    use_k = (k > 0) & (k < V)
    kth = values.gather(1, (k.clamp(1, V) - 1)[:, None])
    x = torch.where(use_k[:, None] & (x < kth), neg, x)
    p_top = _rows(top_p, B, torch.float64)
    values = torch.where(use_k[:, None] & (values < kth), neg, values)
    sorted_p = torch.softmax(values.double(), dim=-1)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly before each token in (desc, id asc) order
    drop_sorted = (before >= p_top[:, None]) & (p_top < 1)[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    x = x.masked_fill(drop, neg)
    mp = _rows(min_p, B, torch.float64)
    p = torch.softmax(x.double(), dim=-1)
    x = x.masked_fill((p < mp[:, None] * p.amax(dim=-1, keepdim=True)) & (mp > 0)[:, None], neg)
    out = torch.softmax(x.double(), dim=-1)
    out = torch.where(greedy[:, None], onehot, out).float()
    out = out.view(V) if one_dim else out
    return out.to(logits.device)
