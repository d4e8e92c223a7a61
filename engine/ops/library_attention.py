"""The attention ops as PyTorch custom ops (``torch.ops.engine.<name>``), registered after the norms and GELUs.

``scaled_dot_product_attention`` (torch's whole signature, plus the optional ``relative_position_bias`` table),
``varlen_attention`` and ``decode_attention`` call the eager functions at run time; their fake implementations run
the eager checks and return the real op's layout (``attention.output_like`` for 4-D SDPA, else contiguous). Calls
that record grad (no dropout, no relative bias) trace to ``scaled_dot_product_attention_lse`` /
``varlen_attention_lse`` (out, lse), differentiable through ``register_autograd`` with the ``*_backward`` ops (dq,
dk, dv; engine.ops.attention_grad). Imported, and so registered, by engine.ops.library.
"""
from __future__ import annotations

import torch

from engine.ops.library_norm_gelu import _op  # (registers the norm and GELU ops first)


# ---- attention ----------------------------------------------------------------------------------------------
@_op("scaled_dot_product_attention",
     "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float dropout_p, bool is_causal, float? scale,"
     " bool enable_gqa=False, Tensor? relative_position_bias=None) -> Tensor")
def _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa=False, relative_position_bias=None):
    from engine.ops.attention import scaled_dot_product_attention

    y = scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                     relative_position_bias=relative_position_bias)
    out = _sdpa_layout(query, y.shape)
    return y if y.stride() == out.stride() else out.copy_(y)


@_sdpa.register_fake
def _(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa=False, relative_position_bias=None):
    from engine.ops.attention import _check_sdpa

    *_, out_shape = _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                relative_position_bias)
    return _sdpa_layout(query, out_shape)


def _sdpa_layout(query: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The registered SDPA's output buffer of ``shape`` (..., Hq, Nq, Dv): ``attention.output_like``'s layout when
    the call is 4-D with the query's batch and heads (the kernel's layout), else contiguous."""
    from engine.ops.attention import output_like

    if len(shape) == 4 and query.dim() == 4 and tuple(query.shape[:2]) == tuple(shape[:2]):
        return output_like(query, shape)
    return query.new_empty(shape)


@_op("varlen_attention",
     "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,"
     " bool causal, float? scale, bool validate, Tensor? relative_position_bias=None, float dropout_p=0.0) -> Tensor")
def _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate,
            relative_position_bias=None, dropout_p=0.0):
    from engine.ops.varlen import varlen_attention

    return varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                            scale=scale, validate=validate, relative_position_bias=relative_position_bias,
                            dropout_p=dropout_p).contiguous()


@_varlen.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate,
      relative_position_bias=None, dropout_p=0.0):
    from engine.ops.varlen import _check_dropout, _check_varlen

    q, *_ = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                          relative_position_bias)
    _check_dropout(dropout_p)  # as the eager op: a bad value fails when the graph is traced, not when it runs
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# Differentiable attention for torch.compile: calls that record grad (no dropout, no relative bias) trace to these
# ops; the forward also returns the log-sum-exp the backward op needs (engine.ops.attention_grad).
@_op("scaled_dot_product_attention_lse",
     "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, bool is_causal, float? scale) -> (Tensor, Tensor)")
def _sdpa_lse(query, key, value, attn_mask, is_causal, scale):
    from engine.ops.attention_grad import sdpa_lse_op

    return sdpa_lse_op(query, key, value, attn_mask, is_causal, scale)


@_sdpa_lse.register_fake
def _(query, key, value, attn_mask, is_causal, scale):
    from engine.ops.attention import _check_sdpa, output_like

    q, k, v, *_ = _check_sdpa(query, key, value, attn_mask, 0.0, is_causal, scale)
    return output_like(q, (*q.shape[:3], v.shape[3])), q.new_empty((2, *q.shape[:3]), dtype=torch.float32)


@_op("scaled_dot_product_attention_backward",
     "(Tensor grad, Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, Tensor? attn_mask, bool is_causal,"
     " float? scale) -> (Tensor, Tensor, Tensor)")
def _sdpa_bwd(grad, query, key, value, out, lse, attn_mask, is_causal, scale):
    from engine.ops.attention_grad import sdpa_backward_op

    return tuple(sdpa_backward_op(grad, query, key, value, out, lse, attn_mask, is_causal, scale))


@_sdpa_bwd.register_fake
def _(grad, query, key, value, out, lse, attn_mask, is_causal, scale):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _sdpa_lse_setup(ctx, inputs, output):
    query, key, value, attn_mask, is_causal, scale = inputs
    ctx.save_for_backward(query, key, value, output[0], output[1], attn_mask)
    ctx.args = (is_causal, scale)


def _sdpa_lse_backward(ctx, grad, grad_lse):
    query, key, value, out, lse, attn_mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.engine.scaled_dot_product_attention_backward(grad, query, key, value, out, lse, attn_mask,
                                                                         *ctx.args)
    return dq, dk, dv, None, None, None


_sdpa_lse.register_autograd(_sdpa_lse_backward, setup_context=_sdpa_lse_setup)


@_op("varlen_attention_lse",
     "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,"
     " bool causal, float? scale, bool validate) -> (Tensor, Tensor)")
def _varlen_lse(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate):
    from engine.ops.attention_grad import varlen_lse_op

    return varlen_lse_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate)


@_varlen_lse.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate):
    from engine.ops.varlen import _check_varlen

    q, *_ = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((2, q.shape[1], q.shape[0]), dtype=torch.float32))


@_op("varlen_attention_backward",
     "(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k,"
     " int max_seqlen_q, int max_seqlen_k, bool causal, float? scale) -> (Tensor, Tensor, Tensor)")
def _varlen_bwd(grad, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    from engine.ops.attention_grad import varlen_backward_op

    return tuple(t.contiguous() for t in varlen_backward_op(grad, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                                            max_seqlen_q, max_seqlen_k, causal, scale))


@_varlen_bwd.register_fake
def _(grad, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _varlen_lse_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, scale)


def _varlen_lse_backward(ctx, grad, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = torch.ops.engine.varlen_attention_backward(grad, q, k, v, out, lse, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


_varlen_lse.register_autograd(_varlen_lse_backward, setup_context=_varlen_lse_setup)


@_op("decode_attention",
     "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, float? scale, bool? validate,"
     " Tensor? relative_position_bias=None) -> Tensor")
def _decode(q, k_cache, v_cache, cache_seqlens, scale, validate, relative_position_bias=None):
    from engine.ops.decode import decode_attention

    return decode_attention(q, k_cache, v_cache, cache_seqlens, scale, validate=validate,
                            relative_position_bias=relative_position_bias).contiguous()


@_decode.register_fake
def _(q, k_cache, v_cache, cache_seqlens, scale, validate, relative_position_bias=None):
    from engine.ops.decode import _check_args
    from engine.ops.position_bias import check_relative_position_bias

    _check_args(q, k_cache, v_cache, cache_seqlens, scale)
    check_relative_position_bias(relative_position_bias, heads=q.shape[1], min_length=k_cache.shape[2],
                                 device=q.device)
    return torch.empty_like(q, memory_format=torch.contiguous_format)
