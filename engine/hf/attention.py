"""The "engine" attention implementation for transformers' AttentionInterface, and its AttentionMaskInterface entry.

``attention_forward`` has the semantics of transformers' own "sdpa" implementation
(transformers/integrations/sdpa_attention.py) and computes with engine's ops:

* arguments: ``module`` (the calling attention layer), query (B, H, Nq, D), key / value (B, Hkv, Nk, D) with
  Hkv dividing H (grouped KV heads are expanded here: one copy of K and V, which the packed and decode paths need
  and which ops.scaled_dot_product_attention's ``enable_gqa`` would make too), ``attention_mask`` None / bool (True =
  attend) / additive float, broadcastable to (B, H, Nq, Nk), ``dropout``, ``scaling``, ``is_causal`` (None: the
  module's ``is_causal``, default True), ``position_bias`` (T5: added to the scores, folded into an additive mask
  exactly as "sdpa" does);
* causal attention applies only when there is no mask and Nq > 1 (the mask functions build the causal pattern into
  the mask whenever one is needed, e.g. with padding or a cache); a causal call with Nk > Nq (prefill into an empty
  static cache) crops the keys to the first Nq, as "sdpa" does;
* returns ``(out, None)`` with out (B, Nq, H, Dv) contiguous, transformers' layout.

Where it pays, another of engine's ops runs the same maths: packed sequences (``cu_seq_lens_q/k`` kwargs, batch of
one, no mask; what ``engine.hf.patch`` passes for padded encoder batches and what padding-free collators pass)
run ``ops.varlen_attention``, so no FLOPs go to padding; single-token decode steps against an unmasked cache run
``ops.decode_attention`` (flash-decoding) when engine's kernels run on these tensors.

What it cannot compute it hands to the calling model's own ``eager_attention_forward`` (the function transformers
itself uses for attn_implementation="eager"), with a warning that says why: attention weights requested
(``output_attentions``), or any keyword argument not listed in ``_NO_EFFECT`` (softcap, attention sinks, ...), so
nothing is silently dropped. A module without an eager function gets a NotImplementedError instead.

``attention_mask`` (the mask function) is transformers' ``sdpa_mask`` except for the plain bidirectional pattern with
padding (every BERT-family encoder): there it returns the 2-D key-padding mask as a broadcast view (B, 1, Nq, Nk)
with stride 0 over the queries, so nothing of size Nq x Nk is materialised, engine's kernel reads one row per
batch, and ``engine.hf.patch`` can recognise key padding from the strides alone.
"""
from __future__ import annotations

import sys
import warnings

import torch

from engine import backend, ops

NAME = "engine"

# Keyword arguments that reach attention functions without changing attention's result (ids, cache flags, the encoder
# states the projections already used) or whose effect the mask already holds (a sliding window: transformers'
# mask functions build it in), exactly as for "sdpa". Anything else that is not None goes to the eager fallback.
_NO_EFFECT = frozenset({
    "position_ids", "use_cache", "cache_position", "output_hidden_states", "output_router_logits",
    "num_items_in_batch", "encoder_hidden_states", "sliding_window", "seq_idx", "return_dict", "token_type_ids",
})
_VARLEN = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
PACKED_MARK = "_engine_packed"  # attribute on cu_seqlens tensors engine built itself (known good: not re-validated)


# ---- the attention function ----------------------------------------------------------------------------------
def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-function signature; see the module docstring. Returns ((B, Nq, H, Dv), None)."""
    unknown = sorted(k for k, v in kwargs.items()
                     if v is not None and k not in _NO_EFFECT and k not in _VARLEN and k != "output_attentions")
    if unknown or _weights_wanted(kwargs):
        why = f"keyword arguments {unknown}" if unknown else "attention weights (output_attentions)"
        return _eager(module, query, key, value, attention_mask, why=why, dropout=dropout, scaling=scaling,
                      is_causal=is_causal, position_bias=position_bias, **kwargs)

    n_q = query.shape[2]
    if (n_q == 1 and key.shape[1] != query.shape[1] and position_bias is None
            and (attention_mask is None or attention_mask.shape[1] == 1)):
        return _decode_grouped(query, key, value, attention_mask, dropout=dropout, scale=scaling), None
    key, value = _expand_kv_heads(query, key, value)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None and attention_mask is None and position_bias is None:
        out = _packed(query, key, value, cu_q, cu_k, kwargs.get("max_length_q"), kwargs.get("max_length_k"),
                      causal=causal, dropout=dropout, scale=scaling)
        return out, None

    causal = n_q > 1 and attention_mask is None and causal
    if causal and key.shape[2] > n_q:  # prefill into an empty static cache: the later keys are all in the future
        key, value = key[:, :, :n_q], value[:, :, :n_q]
        position_bias = None if position_bias is None else position_bias[..., :n_q]
    mask = attention_mask
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        mask = create_position_bias_mask(position_bias, mask, causal, query, key)
        causal = False

    if n_q == 1 and mask is None and dropout == 0.0 and _kernels_run(query, key, value):
        lens = torch.full((query.shape[0],), key.shape[2], dtype=torch.int32, device=query.device)
        out = ops.decode_attention(query, key, value, lens, scale=scaling)
    else:
        out = ops.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                               is_causal=causal, scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, Nq, H, Dv); free when the op wrote that layout


def _kernels_run(*tensors: torch.Tensor) -> bool:
    """Whether engine's kernels (not PyTorch) run on these tensors (engine.backend decides)."""
    return backend.use_triton(*tensors, op="attention")


def _weights_wanted(kwargs: dict) -> bool:
    """Whether the caller records attention weights: ``output_attentions`` passed down, or transformers' output
    collector (the hooks behind ``output_attentions=True`` / ``config.output_attentions``) is gathering them."""
    if kwargs.get("output_attentions"):
        return True
    capturing = sys.modules.get("transformers.utils.output_capturing")
    collector = getattr(capturing, "_active_collector", None)
    collected = collector.get() if collector is not None else None
    return bool(collected) and ("attentions" in collected or "cross_attentions" in collected)


def _expand_kv_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Grouped KV heads: key/value (B, Hkv, Nk, D) -> (B, H, Nk, D), KV head j serving query heads j*r .. j*r+r-1."""
    h, h_kv = query.shape[1], key.shape[1]
    if h_kv == h:
        return key, value
    if h_kv == 0 or h % h_kv or value.shape[1] != h_kv:
        raise ValueError(f'attn_implementation="engine": key/value heads must divide the {h} query heads; got '
                         f"key {tuple(key.shape)}, value {tuple(value.shape)}")
    r = h // h_kv

    def expand(t: torch.Tensor) -> torch.Tensor:
        b, _, n, d = t.shape
        return t[:, :, None].expand(b, h_kv, r, n, d).reshape(b, h, n, d)

    return expand(key), expand(value)


def _decode_grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, *,
                    dropout: float, scale: float | None) -> torch.Tensor:
    """One new token with grouped KV heads, without copying the cache: the r query heads that share a KV head become
    r query rows of that head (as transformers' pack_gqa). query (B, H, 1, D), key / value (B, Hkv, Nk, D), mask
    None or (B, 1, 1 or Nq, Nk) -> (B, 1, H, Dv)."""
    b, h, _, d = query.shape
    h_kv = key.shape[1]
    if h_kv == 0 or h % h_kv or value.shape[1] != h_kv:
        _expand_kv_heads(query, key, value)  # raises the error
    rows = query.reshape(b, h_kv, h // h_kv, d)  # query head j * r + i -> KV head j, row i
    out = ops.scaled_dot_product_attention(rows, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.reshape(b, 1, h, value.shape[3])


def _packed(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int | torch.Tensor | None, max_k: int | torch.Tensor | None, *, causal: bool, dropout: float,
            scale: float | None) -> torch.Tensor:
    """Packed sequences: query (1, H, Tq, D), key / value (1, H, Tk, D) -> (1, Tq, H, D); causal is per sequence."""
    if query.shape[0] != 1:
        raise ValueError("cu_seq_lens_q / cu_seq_lens_k describe sequences packed into a batch of one; got a query "
                         f"of shape {tuple(query.shape)}")
    known = getattr(cu_q, PACKED_MARK, False) and cu_k is cu_q
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    if dropout > 0.0:  # varlen has no dropout: the same attention as one masked call
        keep = _block_mask(cu_q, cu_k, query.shape[2], key.shape[2], causal=causal)
        out = ops.scaled_dot_product_attention(query, key, value, attn_mask=keep, dropout_p=dropout, scale=scale)
        return out.transpose(1, 2).contiguous()
    lens = [None if m is None else int(m) for m in (max_q, max_k)]
    if lens[0] is None or lens[1] is None:
        lens = [int((cu[1:] - cu[:-1]).max()) if m is None else m for m, cu in zip(lens, (cu_q, cu_k))]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D) views
    out = ops.varlen_attention(q, k, v, cu_q, cu_k, lens[0], lens[1], causal=causal, scale=scale,
                               validate=not known)
    return out[None]


def _block_mask(cu_q: torch.Tensor, cu_k: torch.Tensor, n_q: int, n_k: int, *, causal: bool) -> torch.Tensor:
    """(Nq, Nk) bool: query i sees key j when both lie in the same packed sequence (and, causal, j <= i
    bottom-right aligned within it, as varlen attention does)."""
    seq_q = torch.searchsorted(cu_q[1:], torch.arange(n_q, dtype=cu_q.dtype, device=cu_q.device), right=True)
    seq_k = torch.searchsorted(cu_k[1:], torch.arange(n_k, dtype=cu_k.dtype, device=cu_k.device), right=True)
    keep = seq_q[:, None] == seq_k[None, :]
    if causal:  # positions within the sequence; queries shifted by len_k - len_q (bottom-right)
        shift = (cu_k[1:] - cu_k[:-1]) - (cu_q[1:] - cu_q[:-1])
        pos_q = torch.arange(n_q, device=cu_q.device) - cu_q[seq_q] + shift[seq_q]
        pos_k = torch.arange(n_k, device=cu_k.device) - cu_k[seq_k]
        keep &= pos_k[None, :] <= pos_q[:, None]
    return keep


def _eager(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, *, why: str, is_causal: bool | None,
           position_bias: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The calling model's own eager attention, given an additive mask with the causal pattern spelled out."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(
            f'attn_implementation="engine" cannot compute {why} for {type(module).__name__}, and its module has no '
            'eager_attention_forward to hand them to; load the model with attn_implementation="eager"')
    warnings.warn(f'attn_implementation="engine": {type(module).__name__} asked for {why}; running transformers\' '
                  "eager attention for this call", RuntimeWarning, stacklevel=3)
    n_q, n_k = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if mask is None and cu_q is not None and cu_k is not None:  # packed sequences: spell them out as a mask
        mask = _block_mask(cu_q.to(torch.int32), cu_k.to(torch.int32), n_q, n_k, causal=causal)[None, None]
    elif mask is None and causal and n_q > 1:
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~mask, torch.finfo(query.dtype).min)
    if position_bias is not None:
        kwargs["position_bias"] = position_bias
    return eager(module, query, key, value, mask, **kwargs)


# ---- the mask function -----------------------------------------------------------------------------------------
def attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function=None, attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                   allow_is_bidirectional_skip: bool = False, use_vmap: bool = False, **kwargs):
    """AttentionMaskInterface entry: transformers' ``sdpa_mask`` (bool (B, 1, Nq, Nk), True = attend, or None),
    except that a plain bidirectional mask with padding comes back as a stride-0 view of the (B, Nk) padding mask."""
    from transformers import masking_utils as mu

    skip = getattr(mu, "_ignore_bidirectional_mask_sdpa", None)
    if (mask_function is mu.bidirectional_mask_function and not use_vmap and local_size is None
            and attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[0] == batch_size
            and skip is not None):
        padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if allow_is_bidirectional_skip and skip(padding, kv_length, local_size):
            return None
        keep = padding[:, kv_offset:kv_offset + kv_length].to(torch.bool)  # (B, Nk)
        return keep[:, None, None, :].expand(batch_size, 1, q_length, kv_length)
    if mask_function is None:
        mask_function = mu.causal_mask_function
    return mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        local_size=local_size, allow_is_bidirectional_skip=allow_is_bidirectional_skip,
                        use_vmap=use_vmap, **kwargs)


def register() -> None:
    """Register "engine" with transformers' AttentionInterface and AttentionMaskInterface (imports transformers;
    ``import engine`` already does this lazily, when transformers loads)."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, attention_mask)
