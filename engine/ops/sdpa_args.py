"""The arguments of ``ops.scaled_dot_product_attention``, checked as torch 2.13 checks its own SDPA's (names, types,
shapes: any rank >= 2, broadcast batch / head dims, grouped K/V heads with ``enable_gqa``, 0-d to N-d masks of bool,
float32 or the query's dtype, any real ``dropout_p`` in [0, 1] and ``scale``) plus engine's relative-position-bias
table, and brought to the (B, H, N, D) views the attention paths take. ``_check_sdpa`` is the op's full check: its
cheap path (engine/ops/attention.py) accepts only calls this function accepts unchanged, and the registered op's
fake implementation (engine/ops/library_attention.py) runs it on the trace's tensors.
"""
from __future__ import annotations

import math
import numbers

import torch

from engine.ops._checks import check_floating, check_same_device, check_same_dtype, check_tensor
from engine.ops.position_bias import check_relative_position_bias

def _real(name: str, value: object) -> float:
    """A Python / numpy real or a 0-d tensor as a float (what torch's argument parser takes for a float)."""
    if type(value) is float:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.is_complex():
            return float(value)
        raise TypeError(f"{name} must be a float (or a 0-d real tensor); got a {value.dtype} tensor of shape "
                        f"{tuple(value.shape)}")  # not its repr: one line
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float; got {type(value).__name__} {value!r}")
    return float(value)


def _broadcast(*shapes: list[int]) -> list[int] | None:
    """torch's broadcasting of shapes (right-aligned; 1 stretches), or None when they do not broadcast. (Plain
    Python: torch.broadcast_shapes costs ~100 us a call.)"""
    out = [1] * max(map(len, shapes))
    for shape in shapes:
        for i, x in enumerate(shape, len(out) - len(shape)):
            if x != 1:
                if out[i] not in (1, x):
                    return None
                out[i] = x
    return out


def _to_4d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           enable_gqa: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Any-rank q (..., Hq, Nq, D), k, v (broadcastable leading dims; GQA heads) -> (B, H, N, D) views (copies
    only for 5-D+ inputs with broadcast dims, and GQA's repeated K/V heads), and the broadcast leading shape."""
    lead_q, lead_k, lead_v = list(query.shape[:-2]), list(key.shape[:-2]), list(value.shape[:-2])
    if enable_gqa:  # torch: key/value heads (dim -3) repeat_interleave'd up to the query's
        if query.dim() < 3:
            raise ValueError(f"enable_gqa needs a heads dim (-3); query has shape {tuple(query.shape)}")
        h_q = query.shape[-3]
        for name, lead in (("key", lead_k), ("value", lead_v)):
            if not lead or lead[-1] < 1 or h_q % lead[-1]:
                raise ValueError(f"enable_gqa: the {name} heads (dim -3: {lead[-1] if lead else 'none'}) must "
                                 f"divide the query heads ({h_q})")
        lead_k, lead_v = lead_k[:-1] + [h_q], lead_v[:-1] + [h_q]  # broadcast as if they had the query's heads
    lead = _broadcast(lead_q, lead_k, lead_v)
    if lead is None:
        raise ValueError(f"query, key and value batch/head dims must broadcast (enable_gqa={enable_gqa}); got "
                         f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    lead4 = [1] * max(0, 2 - len(lead)) + lead  # >= 2 dims: (..., H)
    b, h = math.prod(lead4[:-1]), lead4[-1]
    n_q, d, n_k, dv = query.shape[-2], query.shape[-1], key.shape[-2], value.shape[-1]

    def to4(t: torch.Tensor, n: int, width: int, heads: int) -> torch.Tensor:
        t = t.expand(*lead4[:-1], heads, n, width)  # a view: broadcast dims get stride 0
        return t if len(lead4) == 2 else t.reshape(b, heads, n, width)  # (B, H, N, D); copies only for 5-D+

    q = to4(query, n_q, d, h)
    k = to4(key, n_k, d, key.shape[-3] if enable_gqa else h)
    v = to4(value, n_k, dv, value.shape[-3] if enable_gqa else h)
    if enable_gqa:
        k = k if k.shape[1] == h else k.repeat_interleave(h // k.shape[1], 1)
        v = v if v.shape[1] == h else v.repeat_interleave(h // v.shape[1], 1)
    return q, k, v, lead


def _check_sdpa(query: object, key: object, value: object, attn_mask: object, dropout_p: object, is_causal: object,
                scale: object, enable_gqa: object = False, relative_position_bias: object = None) -> tuple:
    """Every check of ``scaled_dot_product_attention``'s arguments, as torch makes them (names, types, shapes), and
    the bias table's; brings q/k/v/mask to (B, H, N, D) views (k/v carrying q's heads: GQA repeated). Returns
    (q, k, v, mask 4-D or None, dropout_p, scale, relative_position_bias, out_shape = (..., Hq, Nq, Dv))."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_floating(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., N, D), as torch requires; got shape "
                             f"{tuple(t.shape)}")
    check_same_device(query=query, key=key, value=value)
    check_same_dtype(query=query, key=key, value=value)
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {type(flag).__name__}")
    dropout_p = _real("dropout_p", dropout_p)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a probability in [0, 1]; got {dropout_p!r}")
    scale = None if scale is None else _real("scale", scale)
    n_q, d = query.shape[-2:]
    n_k, dv = key.shape[-2], value.shape[-1]
    if key.shape[-1] != d:
        raise ValueError(f"key head dim must equal query head dim {d}; got {key.shape[-1]}")
    if value.shape[-2] != n_k:  # (torch 2.13's CPU path returns garbage here instead of an error)
        raise ValueError(f"value must have as many positions as key ({n_k}); got {value.shape[-2]}")
    qs, ks, vs = query.shape, key.shape, value.shape
    if len(qs) == len(ks) == len(vs) == 4 and qs[:2] == ks[:2] == vs[:2]:  # the common case: (B, H, N, D) alike
        q, k, v, lead = query, key, value, list(qs[:2])
    else:
        q, k, v, lead = _to_4d(query, key, value, enable_gqa)
    b, h = q.shape[:2]
    mask = attn_mask
    if mask is not None:
        mask = check_tensor("attn_mask", mask)
        if mask.dtype != torch.bool and mask.dtype not in (torch.float32, query.dtype):
            raise TypeError(f"attn_mask must be bool (True = attend), float32 or the query's dtype {query.dtype} "
                            f"(added to scores), as torch requires; got {mask.dtype}")
        if mask.device != query.device:
            raise ValueError(f"attn_mask must be on the query's device {query.device}; got {mask.device}")
        full = (*lead, n_q, n_k)
        ok = mask.dim() <= len(full) and all(m in (1, s) for m, s in zip(reversed(mask.shape), reversed(full)))
        if not ok:
            raise ValueError(f"attn_mask must be broadcastable to (..., Nq, Nk) = {full}; got shape "
                             f"{tuple(mask.shape)}")
        if len(lead) > 2:
            mask = mask.expand(full).reshape(b, h, n_q, n_k)
        elif mask.dim() < 4:
            mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    # the table's H is the query's heads (dim -3; 1 for a 2-D query), shared by the batch dims
    bias = check_relative_position_bias(relative_position_bias, heads=h, min_length=max(n_q, n_k),
                                        device=query.device)
    return q, k, v, mask, dropout_p, scale, bias, (*lead, n_q, dv)
