"""Packed variable-length attention (FlashAttention's varlen API) and the unpad / pad helpers that pack a padded batch.

``varlen_attention`` shares its semantics with ``scaled_dot_product_attention`` (engine/ops/attention.py: rows that
see no key are zeros, dropout in the kernel, relative position bias), except that causal is bottom-right aligned
per sequence. Sequence b owns rows cu_seqlens[b]:cu_seqlens[b+1] of the packed (total, H, D) tensors; no FLOPs
are spent on padding. The contents of cu_seqlens are checked with one host read (a sync on CUDA) unless
``validate=False``.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

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
from engine.ops.attention import (
    _MAX_GRID_Y,
    _RNG_LIMIT,
    MAX_HEAD_DIM,
    _backward_ok,
    _causal_keep,
    _sdpa_torch,
    torch_sdpa,
)
from engine.ops.attention_grad import varlen_forward
from engine.ops.position_bias import check_relative_position_bias, relative_position_bias_ok

_Tensor = torch.Tensor
_I32 = torch.int32
_INF = math.inf
_KEEP_DTYPES = frozenset((torch.bool, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8))
# Dispatch (engine.backend), cached per device kind and key = (dtype, shape class): the shape class is True when the
# kernel covers the call's sizes and options (varlen_route).
_VARLEN = backend.Route("varlen_attention", lambda key: key[1] and key[0] in KERNEL_DTYPES, differentiable=True)


def _check_qkv(layout: str, **tensors: object) -> list[torch.Tensor]:
    """q, k, v (given by their argument names): floating, ``layout``'s rank, one device, one dtype."""
    ndim = layout.count(",") + 1
    out = []
    for name, t in tensors.items():
        t = check_floating(name, t)
        if t.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}; got shape {tuple(t.shape)}")
        out.append(t)
    check_same_device(**dict(zip(tensors, out)))
    check_same_dtype(**dict(zip(tensors, out)))
    return out


def _check_scale(scale: object) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)):
        raise TypeError(f"scale must be None or a finite real number; got {scale!r}")
    return float(scale)


def _check_dropout(dropout_p: object) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1); got {dropout_p!r}")
    return float(dropout_p)



def _check_cu(name: str, cu: object, device: torch.device) -> torch.Tensor:
    cu = check_tensor(name, cu)
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be an int32 tensor of cumulative sequence lengths; got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"{name} must be 1-D of length batch + 1 >= 2; got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the query's device {device}; got {cu.device}")
    return cu


def _check_max_seqlen(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"{name} must be a non-negative int; got {value!r}")
    return int(value)


def _check_cu_stats(name: str, mname: str, first: int, end: int, dmin: int, dmax: int, total: int, mx: int) -> None:
    """The value checks of one cu_seqlens (its first and last entries, smallest and largest step)."""
    if first != 0:
        raise ValueError(f"{name} must start at 0; got {first}")
    if dmin < 0:
        raise ValueError(f"{name} must be non-decreasing (cumulative lengths); got a step of {dmin}")
    if end != total:
        raise ValueError(f"{name} must end at the packed token count {total}; got {end}")
    if dmax > mx:
        raise ValueError(f"{mname} must be >= the longest sequence ({dmax}); got {mx}")


def _validate_cu_values(cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int, max_q: int,
                        max_k: int) -> None:
    """Check cu_seqlens contents with ONE device-to-host copy (a sync on CUDA)."""
    rows = []
    for cu in (cu_q, cu_k):
        diff = cu[1:] - cu[:-1]
        rows.append(torch.stack([cu[0], cu[-1], diff.min(), diff.max()]))
    (q0, q_end, q_min, q_max), (k0, k_end, k_min, k_max) = torch.stack(rows).tolist()
    _check_cu_stats("cu_seqlens_q", "max_seqlen_q", q0, q_end, q_min, q_max, total_q, max_q)
    _check_cu_stats("cu_seqlens_k", "max_seqlen_k", k0, k_end, k_min, k_max, total_k, max_k)


def _validate_cu_lists(cq: list[int], ck: list[int], total_q: int, total_k: int, max_q: int, max_k: int) -> None:
    """The same checks on host lists (CPU tensors: no tensor ops needed)."""
    same = ck is cq and total_k == total_q and max_k == max_q  # self-attention: one check covers both
    if (len(cq) == 2 and cq[0] == 0 and cq[1] == total_q <= max_q
            and (same or len(ck) == 2 and ck[0] == 0 and ck[1] == total_k <= max_k)):
        return  # one sequence of every token (first 0, end the total, its one step within max_seqlen): valid
    for name, mname, c, total, mx in (("cu_seqlens_q", "max_seqlen_q", cq, total_q, max_q),
                                      ("cu_seqlens_k", "max_seqlen_k", ck, total_k, max_k))[:1 if same else 2]:
        steps = [b - a for a, b in zip(c, c[1:])]
        _check_cu_stats(name, mname, c[0], c[-1], min(steps), max(steps), total, mx)


def _varlen_torch(q, k, v, cq: list[int] | None, ck: list[int] | None, causal, scale, bias=None, dropout_p=0.0):
    """Reference path: one SDPA call per sequence (bottom-right causal and bias; rows with no visible key -> 0).

    cq, ck: cu_seqlens as host lists; None for a single sequence spanning every token (cu_seqlens known to be
    [0, total]). Such a sequence needs no output buffer: SDPA runs on (1, H, N, D) views and its result is
    returned as (N, H, D), contiguous. (4-D: PyTorch's CPU SDPA takes its fused kernel only for 4-D inputs. The
    views are ``t.transpose(0, 1)[None]``: indexing with None costs ~2.5k instructions less than ``unsqueeze(0)``.)"""
    if cq is None or (len(cq) == 2 and cq[0] == ck[0] == 0 and 0 < cq[1] == q.shape[0] and 0 < ck[1] == k.shape[0]):
        if not causal and bias is None:  # every query sees every key: torch's op alone
            o = torch_sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None, dropout_p,
                           False, scale)
            return o[0].transpose(0, 1).contiguous()
        mask = _causal_keep(q.shape[0], k.shape[0], q.device, bottom_right=True) if causal else None
        o = _sdpa_torch(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask, dropout_p,
                        False, scale, bias, k.shape[0] - q.shape[0])
        return o[0].transpose(0, 1).contiguous()
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
    for (qs, qe), (ks, ke) in zip(zip(cq[:-1], cq[1:]), zip(ck[:-1], ck[1:])):
        if qe == qs or ke == ks:
            continue
        mask = _causal_keep(qe - qs, ke - ks, q.device, bottom_right=True) if causal else None
        o = _sdpa_torch(q[qs:qe].transpose(0, 1)[None], k[ks:ke].transpose(0, 1)[None],
                        v[ks:ke].transpose(0, 1)[None], mask, dropout_p, False, scale, bias, (ke - ks) - (qe - qs))
        out[qs:qe] = o[0].transpose(0, 1)
    return out


def _check_varlen(q: object, k: object, v: object, cu_seqlens_q: object, cu_seqlens_k: object, max_seqlen_q: object,
                  max_seqlen_k: object, causal: object, scale: object, relative_position_bias: object = None) -> tuple:
    """Every check of ``varlen_attention``'s arguments but the values of cu_seqlens; returns
    (q, k, v, cu_q, cu_k, max_q, max_k, scale or None, relative_position_bias)."""
    q, k, v = _check_qkv("(total_tokens, H, D)", q=q, k=k, v=v)
    total_q, h, d = q.shape
    if k.shape[1] != h or v.shape[1] != h:
        raise ValueError(f"q, k and v must have the same number of heads; got {h}, {k.shape[1]}, {v.shape[1]}")
    if k.shape[2] != d or v.shape[2] != d:
        raise ValueError(f"k and v head dims must equal q's ({d}); got {k.shape[2]}, {v.shape[2]}")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"v must have as many tokens as k ({k.shape[0]}); got {v.shape[0]}")
    cu_q = _check_cu("cu_seqlens_q", cu_seqlens_q, q.device)
    cu_k = _check_cu("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1); got "
                         f"{cu_q.shape[0]} and {cu_k.shape[0]}")
    max_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool; got {type(causal).__name__}")
    scale = _check_scale(scale)
    bias = check_relative_position_bias(relative_position_bias, heads=h, min_length=max(max_q, max_k),
                                        device=q.device)
    return q, k, v, cu_q, cu_k, max_q, max_k, scale, bias


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     scale: float | None = None, validate: bool = True,
                     relative_position_bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention over packed sequences of different lengths (FlashAttention's varlen API); no FLOPs on padding.

    q: (total_q, H, D); k, v: (total_k, H, D); sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q and
    cu_seqlens_k[b]:cu_seqlens_k[b+1] of k/v. cu_seqlens_*: (B + 1,) int32, starting at 0, non-decreasing, ending
    at total_*. max_seqlen_*: ints >= the longest sequence (sizes the launch grid). causal: bottom-right aligned
    per sequence (FlashAttention >= 2.1: query i sees keys j <= i + len_k - len_q); a query that sees no key
    returns zeros. scale: default 1 / sqrt(D). relative_position_bias: None, or a (H, 2L - 1) table with
    L >= max(max_seqlen_q, max_seqlen_k), added to the score of query i and key j of a sequence at
    ``table[h, L - 1 + j - (i + len_k - len_q)]`` (the causal mask's bottom-right alignment; see
    engine.ops.position_bias). dropout_p: attention dropout probability in [0, 1) (in the kernel: see
    ``scaled_dot_product_attention``). Returns (total_q, H, D); differentiable in q, k and v (Triton backward
    kernels on the kernel path).

    validate: check the contents of cu_seqlens and max_seqlen (one device-to-host sync per call on CUDA). Pass
    False on hot paths where they are known good (e.g. straight from ``unpad_input``); the shapes, dtypes and
    devices are always checked.
    """
    # Cheap path: 3-D tensors of one float dtype and device with matching sizes, int32 1-D cu_seqlens of one
    # length on that device, int max_seqlen, bool causal, float scale (or None), a bias table that covers the
    # call (or None): attribute reads that imply every check in _check_varlen.
    compiling = _compiling()
    cu_q, cu_k, max_q, max_k, bias = cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, relative_position_bias
    if (isinstance(q, _Tensor) and isinstance(k, _Tensor) and isinstance(v, _Tensor)
            and (dtype := q.dtype) in FAST_FLOAT_DTYPES and k.dtype is dtype and v.dtype is dtype
            and len(qs := q.shape) == 3  # k as q (self-attention: one size comparison), or sizes matched; v as k
            and ((ks := k.shape) == qs or (len(ks) == 3 and ks[1] == qs[1] and ks[2] == qs[2])) and v.shape == ks
            and isinstance(cu_q, _Tensor) and cu_q.dtype is _I32 and len(cs := cu_q.shape) == 1 and cs[0] >= 2
            and (cu_k is cu_q or (isinstance(cu_k, _Tensor) and cu_k.dtype is _I32 and cu_k.shape == cs))
            and type(max_q) is int and max_q >= 0 and type(max_k) is int and max_k >= 0 and type(causal) is bool
            and (scale is None or (type(scale) is float and -_INF < scale < _INF))
            and (((cpu := q.is_cpu) and k.is_cpu and v.is_cpu and cu_q.is_cpu and (cu_k is cu_q or cu_k.is_cpu))
                 or same_cuda_device(q, k, v, cu_q, cu_k))
            and (bias is None or relative_position_bias_ok(bias, q, qs[1], max_q if max_q > max_k else max_k))
            and type(dropout_p) is float and 0.0 <= dropout_p < 1.0):
        total_q, h, d = qs
        total_k = ks[0]
        cuda = not cpu  # one device, the CPU or a CUDA device
    else:
        q, k, v, cu_q, cu_k, max_q, max_k, scale, bias = _check_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, relative_position_bias)
        dropout_p = _check_dropout(dropout_p)
        (total_q, h, d), total_k, dtype, cs = q.shape, k.shape[0], q.dtype, cu_q.shape
        cpu, cuda = q.is_cpu, q.is_cuda
    if compiling:  # the values are checked when the op runs
        if not backend.grad_recording(q, k, v, bias):
            return torch.ops.engine.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale,
                                                     bool(validate), bias, dropout_p)
        if bias is None and dropout_p == 0.0:  # the differentiable op
            return torch.ops.engine.varlen_attention_lse(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale,
                                                         bool(validate))[0]
    batch = cs[0] - 1
    one = batch == 1 and total_q > 0 and total_k > 0  # one sequence: [0, total] once validated, so not read again
    cq = ck = None  # cu_seqlens on the host, read at most once (for the checks and the PyTorch path)
    if validate:
        if cpu:  # no device sync here
            cq = cu_q.tolist()
            ck = cq if cu_k is cu_q else cu_k.tolist()
            _validate_cu_lists(cq, ck, total_q, total_k, max_q, max_k)
            if one:
                cq = ck = None  # _varlen_torch: None is [0, total] (it need not compare the lists to the shapes)
        else:
            _validate_cu_values(cu_q, cu_k, total_q, total_k, max_q, max_k)

    if _VARLEN.pytorch_only(cuda) or not varlen_route(q, k, v, cu_q, cu_k, max_q, max_k,
                                                   d ** -0.5 if scale is None else scale, bias, dropout_p):
        if cq is None and not one:  # one sequence is [0, total]: no read
            cq = cu_q.tolist()
            ck = cq if cu_k is cu_q else cu_k.tolist()
        return _varlen_torch(q, k, v, cq, ck, causal, scale, bias, dropout_p)  # scale None: torch's 1 / sqrt(D)
    scale = d ** -0.5 if scale is None else scale
    if backend.grad_recording(q, k, v):
        from engine.ops.attention_grad import FlashVarlen

        return FlashVarlen.apply(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, dropout_p)
    return varlen_forward(q, k, v, cu_q, cu_k, max_q, causal, scale, dropout_p, bias=bias)[0]


def varlen_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                 max_q: int, max_k: int, scale: float, bias: torch.Tensor | None = None,
                 dropout_p: float = 0.0, *, needs_backward: bool = False) -> bool:
    """True when ``engine.backend`` sends this (checked; scale resolved) ``varlen_attention`` call to the kernels
    (needs_backward: as ``sdpa_route``)."""
    h, d = q.shape[1], q.shape[2]
    shape_ok = (d <= MAX_HEAD_DIM and (cu_q.shape[0] - 1) * h <= _MAX_GRID_Y and scale > 0
                and (dropout_p == 0.0 or max_q * max_k < _RNG_LIMIT) and _backward_ok(q, k, v, needs_backward)
                and (bias is None or not (needs_backward or backend.grad_recording(q, k, v, bias))))
    return _VARLEN(q, (q.dtype, shape_ok), k, v, cu_q, cu_k, bias)


def unpad_input(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor, int]:
    """Pack the kept tokens of a padded batch.

    hidden: (B, N, ...); attention_mask: (B, N) bool or integer, nonzero = keep (padding may sit anywhere).
    Returns (packed (total, ...), indices (total,) int64 into the flattened (B * N) positions, cu_seqlens
    (B + 1,) int32, max_seqlen int). max_seqlen costs one device-to-host sync.
    """
    mask = attention_mask
    # Cheap path: a bool / integer (B, N) mask and (B, N, ...) hidden on one device imply every check below.
    if not (isinstance(hidden, _Tensor) and isinstance(mask, _Tensor) and mask.dtype in _KEEP_DTYPES
            and len(ms := mask.shape) == 2 and hidden.shape[:2] == ms
            and ((hidden.is_cpu and mask.is_cpu) or same_cuda_device(hidden, mask))):
        hidden = check_tensor("hidden", hidden)
        mask = check_tensor("attention_mask", attention_mask)
        if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
            raise TypeError(f"attention_mask must be bool or integer (1 = keep, 0 = padding); got {mask.dtype}")
        if mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D (B, N); got shape {tuple(mask.shape)}")
        if hidden.dim() < 2 or tuple(hidden.shape[:2]) != tuple(mask.shape):
            raise ValueError(f"hidden must be (B, N, ...) with (B, N) = attention_mask's {tuple(mask.shape)}; got "
                             f"shape {tuple(hidden.shape)}")
        check_same_device(hidden=hidden, attention_mask=mask)
    keep = mask if mask.dtype is torch.bool else mask.bool()
    seqlens = keep.sum(dim=1, dtype=_I32)
    indices = torch.nonzero(keep.flatten()).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=_I32), (1, 0))
    max_seqlen = seqlens.max().item() if mask.shape[0] else 0
    packed = hidden.flatten(0, 1).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of ``unpad_input``: packed (total, ...) -> (batch, seqlen, ...), zeros at the padding."""
    # Cheap path: int64 (total,) indices, (total, ...) packed on one device, int sizes imply every check below.
    if not (isinstance(packed, _Tensor) and isinstance(indices, _Tensor) and indices.dtype is torch.int64
            and len(ix := indices.shape) == 1 and len(ps := packed.shape) >= 1 and ps[0] == ix[0]
            and type(batch) is int and batch >= 0 and type(seqlen) is int and seqlen >= 0
            and ((packed.is_cpu and indices.is_cpu) or same_cuda_device(packed, indices))):
        packed = check_tensor("packed", packed)
        indices = check_tensor("indices", indices)
        if indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 1:
            raise TypeError(f"indices must be a 1-D int64/int32 tensor; got {indices.dtype} of shape "
                            f"{tuple(indices.shape)}")
        if packed.dim() < 1 or packed.shape[0] != indices.shape[0]:
            raise ValueError(f"packed must be (total, ...) with total = len(indices) = {indices.shape[0]}; got "
                             f"shape {tuple(packed.shape)}")
        for name, value in (("batch", batch), ("seqlen", seqlen)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise TypeError(f"{name} must be a non-negative int; got {value!r}")
        check_same_device(packed=packed, indices=indices)
        indices = indices.long()
        ps = packed.shape
    out = packed.new_zeros(batch * seqlen, *ps[1:])
    out.index_copy_(0, indices, packed)
    return out.view(batch, seqlen, *ps[1:])
