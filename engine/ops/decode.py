"""ops.decode_attention: new query tokens against a preallocated KV cache (flash-decoding on CUDA).

Semantics (both backends):
    q (B, H, Tq, D), k_cache / v_cache (B, H, Tmax, D) of any strides (e.g. a (B, Tmax, H, D) buffer viewed with
    ``.transpose(1, 2)``), cache_seqlens (B,) int32 = valid cache positions per sequence, the Tq new tokens
    included (they are already written at positions cache_seqlens[b] - Tq .. cache_seqlens[b] - 1).
    Bottom-right causal: query i of sequence b sees keys j <= cache_seqlens[b] - Tq + i.
    Returns (B, H, Tq, D) in q's dtype. A query row that sees no key returns zeros.

cache_seqlens values are checked to lie in [Tq, Tmax] only where that is free of a host sync: on CPU tensors
(``validate=None``, the default), or anywhere with ``validate=True`` (which reads the values on the host, so it
cannot run inside CUDA-graph capture). Unchecked values are clamped to [0, Tmax] (the kernel can never read past
the cache) and a length below Tq leaves its first rows with no visible key: those rows are zeros.

The Triton kernel takes Tq of any size (query rows in blocks of 16; it is built for decode, Tq <= 16, and stays
correct beyond), head dims 16, 32, 64, 80, 96, 128, 256 and fp16 / bf16 / fp32 (fp32 dots in full IEEE precision,
never tf32). Other head dims or dtypes, grad-recording inputs and ENGINE_BACKEND=torch run the PyTorch path.

``relative_position_bias`` (T5's bias by distance, a (H, 2L - 1) table with L >= Tmax; see
engine.ops.position_bias) adds ``table[h, L - 1 + j - (cache_seqlens[b] - Tq + i)]`` to the score of query i and
key j; the decode kernel gathers it from the table tile by tile.
"""
from __future__ import annotations

import math
import numbers

import torch

from engine import backend
from engine.ops._checks import (
    FAST_FLOAT_DTYPES,
    KERNEL_DTYPES,
    check_floating,
    check_same_device,
    check_same_dtype,
    check_tensor,
    same_cuda_device,
)
from engine.ops._checks import compiling as _compiling  # torch.compiler.is_compiling, cheaper
from engine.ops.attention import torch_sdpa
from engine.ops.position_bias import bias_scores, check_relative_position_bias, relative_position_bias_ok

KERNEL_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
_Tensor = torch.Tensor
_INF = math.inf
_I32 = torch.int32
# Dispatch (engine.backend), cached per device kind and (dtype, head dim).
_DECODE = backend.Route("decode_attention", lambda key: key[0] in KERNEL_DTYPES and key[1] in KERNEL_HEAD_DIMS)


def _check_4d(name: str, t: torch.Tensor, layout: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D {layout}; got {t.dim()}-D with shape {tuple(t.shape)}")


def _check_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                scale: float | None) -> None:
    check_floating("q", q)
    check_floating("k_cache", k_cache)
    check_floating("v_cache", v_cache)
    check_tensor("cache_seqlens", cache_seqlens)
    _check_4d("q", q, "(B, H, Tq, D)")
    _check_4d("k_cache", k_cache, "(B, H, Tmax, D)")
    _check_4d("v_cache", v_cache, "(B, H, Tmax, D)")
    check_same_dtype(q=q, k_cache=k_cache, v_cache=v_cache)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=cache_seqlens)
    B, H, Tq, D = q.shape
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.shape[0] != B:
            raise ValueError(f"{name} batch size must match q's {B}; got {name} of shape {tuple(t.shape)}")
        if t.shape[1] != H:
            raise ValueError(f"{name} head count must match q's {H}; got {name} of shape {tuple(t.shape)}")
        if t.shape[3] != D:
            raise ValueError(f"{name} head dim must match q's {D}; got {name} of shape {tuple(t.shape)}")
    if v_cache.shape[2] != k_cache.shape[2]:
        raise ValueError(f"v_cache must have the same Tmax as k_cache ({k_cache.shape[2]}); "
                         f"got v_cache of shape {tuple(v_cache.shape)}")
    Tmax = k_cache.shape[2]
    if Tq < 1:
        raise ValueError(f"q must hold at least one new token (Tq >= 1); got q of shape {tuple(q.shape)}")
    if Tq > Tmax:
        raise ValueError(f"q has Tq={Tq} new tokens, more than the cache holds (Tmax={Tmax}); "
                         f"got q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)}")
    if cache_seqlens.dtype != torch.int32:
        raise TypeError(f"cache_seqlens must be an int32 tensor; got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens must have shape ({B},) (one length per sequence); "
                         f"got {tuple(cache_seqlens.shape)}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number or None; got {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite; got {scale}")


def _check_seqlens(cache_seqlens: torch.Tensor, q_len: int, max_len: int) -> None:
    """Host-side range check (reads the values: a host sync on CUDA)."""
    if cache_seqlens.numel() == 0:
        return
    _check_seqlen_range(int(cache_seqlens.min()), int(cache_seqlens.max()), q_len, max_len)


def _check_seqlen_range(lo: int, hi: int, q_len: int, max_len: int) -> None:
    if lo < q_len or hi > max_len:
        raise ValueError(f"cache_seqlens values must lie in [Tq, Tmax] = [{q_len}, {max_len}]; got min {lo}, "
                         f"max {hi} (pass validate=False to clamp to [0, Tmax] and get zeros for rows that see no key)")


def _host_span(cache_seqlens: torch.Tensor) -> tuple[int, int]:
    """(min, max) of non-empty CPU lengths, read on the host (no device sync there)."""
    host = cache_seqlens.tolist()
    return (host[0], host[0]) if len(host) == 1 else (min(host), max(host))


def decode_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           cache_seqlens: torch.Tensor, scale: float | None, bias: torch.Tensor | None = None, *,
                           length_range: tuple[int, int] | None = None) -> torch.Tensor:
    """PyTorch path (same semantics as the kernel, differentiable): a boolean mask from cache_seqlens + SDPA.

    q (B, H, Tq, D); caches (B, H, Tmax, D); cache_seqlens (B,) int32, clamped to [0, Tmax]; bias: None or a
    (H, 2L - 1) relative-position table, L >= Tmax. -> (B, H, Tq, D).
    length_range: (min, max) of cache_seqlens, already read on the host (CPU callers), so it is not read again.
    """
    return _decode_torch(q, k_cache, v_cache, cache_seqlens, scale, bias, q.shape, k_cache.shape[2], not q.is_cuda,
                         length_range)


def _decode_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                  scale: float | None, bias: torch.Tensor | None, qs: torch.Size, Tmax: int, host: bool,
                  length_range: tuple[int, int] | None) -> torch.Tensor:
    """decode_attention_torch with what the caller has read already: qs = q.shape, Tmax = k_cache.shape[2],
    host = not q.is_cuda (the lengths can be read without a device sync)."""
    B, H, Tq, D = qs
    if host and B > 0:  # the lengths cost no device sync here: attend over the used part of the cache only
        if length_range is None:
            length_range = _host_span(cache_seqlens)
        lo, hi = length_range  # clamped to [0, Tmax] (not with max / min: ~1.3k instructions each)
        lo = lo if lo > 0 else 0
        hi = hi if hi < Tmax else Tmax
        if Tq == 1 and hi > 0 and lo == hi:  # one new token, equal lengths: every key visible
            add = None
            if bias is not None:  # the query sits at hi - 1: distances -(hi - 1)..0 are one slice of the table,
                # table[:, L - hi:L] viewed as (1, H, 1, hi) (as_strided: ~10k instructions less than the indexing)
                (heads, width), (s_h, s_d) = bias.shape, bias.stride()
                add = bias.as_strided((1, heads, 1, hi), (0, s_h, 0, s_d),
                                      bias.storage_offset() + ((width + 1) // 2 - hi) * s_d)
                if add.dtype is not q.dtype:
                    add = add.to(q.dtype)
            return torch_sdpa(q, k_cache.narrow(2, 0, hi), v_cache.narrow(2, 0, hi), add, 0.0, False, scale)
        Tmax = max(hi, 1)
        k_cache, v_cache = k_cache.narrow(2, 0, Tmax), v_cache.narrow(2, 0, Tmax)
    lens = cache_seqlens.to(torch.long).clamp(0, Tmax)
    rows = torch.arange(Tq, device=q.device)
    cols = torch.arange(Tmax, device=q.device)
    q_pos = lens[:, None] - Tq + rows[None, :]  # (B, Tq) each query's position in its row
    visible = cols[None, None, :] <= q_pos[..., None]  # (B, Tq, Tmax)
    has_key = visible.any(-1)  # (B, Tq)
    # A fully masked row would make SDPA return NaN (and NaN gradients): let it see everything, then zero it.
    mask = (visible | ~has_key[..., None])[:, None]  # (B, 1, Tq, Tmax)
    if bias is not None:  # one additive mask: the (B, H, Tq, Tmax) bias block, -inf where hidden
        add = bias_scores(bias, q_pos, Tmax, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
        if torch.finfo(q.dtype).max < torch.finfo(add.dtype).max:  # narrowing: keep finite biases finite
            add.clamp_(-torch.finfo(q.dtype).max, torch.finfo(q.dtype).max)
        mask = add.masked_fill_(~mask, float("-inf")).to(q.dtype)
    out = torch_sdpa(q, k_cache, v_cache, mask, scale=scale)
    return torch.where(has_key[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     scale: float | None = None, *, validate: bool | None = None,
                     relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of Tq new tokens over a KV cache with per-sequence valid lengths (bottom-right causal).

    q: (B, H, Tq, D); k_cache, v_cache: (B, H, Tmax, D), any strides; cache_seqlens: (B,) int32, the Tq new tokens
    included. scale: softmax scale (default 1/sqrt(D)). validate: check cache_seqlens lies in [Tq, Tmax]
    (None: only for CPU tensors, where it costs no device sync; True: always; False: never, values are clamped
    to [0, Tmax] and rows that see no key return zeros). relative_position_bias: None, or a (H, 2L - 1) table with
    L >= Tmax whose entry L - 1 + j - pos is added to the score of key j for the query at position pos =
    cache_seqlens[b] - Tq + i (T5's self-attention bias; see engine.ops.position_bias).
    Returns (B, H, Tq, D) in q's dtype.
    """
    # Cheap path: 4-D tensors of one float dtype and device with matching sizes, 1 <= Tq <= Tmax, int32 (B,)
    # lengths on that device, float scale (or None): attribute reads that imply every check in _check_args.
    kc, vc, sl = k_cache, v_cache, cache_seqlens
    if (isinstance(q, _Tensor) and isinstance(kc, _Tensor) and isinstance(vc, _Tensor) and isinstance(sl, _Tensor)
            and (dtype := q.dtype) in FAST_FLOAT_DTYPES and kc.dtype is dtype and vc.dtype is dtype
            and len(qs := q.shape) == 4 and len(ks := kc.shape) == 4 and vc.shape == ks
            and ks[0] == qs[0] and ks[1] == qs[1] and ks[3] == qs[3] and 1 <= qs[2] <= ks[2]
            and sl.dtype is _I32 and len(ss := sl.shape) == 1 and ss[0] == qs[0]
            and (scale is None or (type(scale) is float and -_INF < scale < _INF))
            and (((cpu := q.is_cpu) and kc.is_cpu and vc.is_cpu and sl.is_cpu) or same_cuda_device(q, kc, vc, sl))):
        cuda = not cpu  # one device, the CPU or a CUDA device
    else:
        _check_args(q, k_cache, v_cache, cache_seqlens, scale)
        dtype, qs, ks, cpu, cuda = q.dtype, q.shape, k_cache.shape, q.is_cpu, q.is_cuda
    B, H, Tq, D = qs
    Tmax = ks[2]
    bias = relative_position_bias
    if bias is not None and not relative_position_bias_ok(bias, q, H, Tmax):
        bias = check_relative_position_bias(bias, heads=H, min_length=Tmax, device=q.device)
    if _compiling() and not backend.grad_recording(q, k_cache, v_cache, bias):  # values are checked when it runs
        return torch.ops.engine.decode_attention(q, k_cache, v_cache, cache_seqlens, scale,
                                                 None if validate is None else bool(validate), bias)
    span = None  # (min, max) of cache_seqlens read on the host: once, for the check and the PyTorch path
    if validate is None:
        validate = not cuda
    if validate:
        if cpu and B > 0:  # no device sync on the CPU
            span = lo, hi = _host_span(cache_seqlens)
            if lo < Tq or hi > Tmax:
                _check_seqlen_range(lo, hi, Tq, Tmax)
        else:
            _check_seqlens(cache_seqlens, Tq, Tmax)
    if not _DECODE.pytorch_only(cuda) and _DECODE(q, (dtype, D), k_cache, v_cache, cache_seqlens, bias):
        from engine.kernels.attention.decode import decode_attention_fwd

        return decode_attention_fwd(q, k_cache, v_cache, cache_seqlens,
                                    scale=float(scale) if scale is not None else 1.0 / math.sqrt(D),
                                    relative_position_bias=bias)
    if scale is not None and type(scale) is not float:
        scale = float(scale)  # a checked real (int, numpy scalar)
    # scale None: torch's default, 1 / sqrt(D)
    return _decode_torch(q, k_cache, v_cache, cache_seqlens, scale, bias, qs, Tmax, not cuda, span)
