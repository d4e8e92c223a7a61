"""Every engine op as a PyTorch custom op (``torch.ops.engine.<name>``), so torch.compile traces engine code.

Eager calls never come here: each public function in ``engine.ops`` runs its cheap path (checks, then
``engine.backend``, then the Triton kernel or PyTorch). While torch.compile traces (``torch.compiler.is_compiling()``),
the public function calls the registered op instead, which the compiled graph keeps as one node:

    ops.layer_norm(...)      ->  torch.ops.engine.layer_norm      (Tensor) -> Tensor
    ops.add_layer_norm(...)  ->  torch.ops.engine.add_layer_norm  -> (Tensor, Tensor)
    ops.rms_norm / add_rms_norm                ->  same names (eps=None resolved to the dtype's epsilon first)
    ops.gelu / bias_gelu / gelu_and_mul        ->  same names
    ops.scaled_dot_product_attention         ->  same name, torch's whole signature (any rank, broadcast batch /
                             head dims, ``bool enable_gqa=False``) and the optional ``relative_position_bias`` table
    ops.varlen_attention, ops.decode_attention -> same names, with the optional ``relative_position_bias`` table
                             as a ``Tensor?`` argument (default None)
    the two dense / packed attention ops on inputs that require grad (no dropout, no relative bias) -> *_lse (out,
                             lse), differentiable through register_autograd with *_backward (dq, dk, dv): the
                             kernels' backward where they run, else PyTorch's autograd of the fallback path
    (models)                 ->  torch.ops.engine.check_range     the value checks of model inputs, at run time

At run time the registered op calls the eager function, so dispatch, kernels and error messages are the eager ones.
The norm and GELU ops carry ``register_autograd`` formulas, so torch.compile traces training too: they call two
more registered ops, ``engine::norm_backward`` and ``engine::gelu_backward`` (engine.ops.grad: the Triton backward
kernels or PyTorch's gradients, dispatched as the forward is).
At trace time the fake (meta) implementation runs the same argument checks on the fake tensors (same errors,
raised while compiling) and returns outputs with the strides the real op produces: contiguous, except attention
(B, H, N, D), which is laid out as (B, N, H, D) when the query is a transposed view of that layout (see
``attention.output_like``; SDPA calls of another rank, or broadcasting the query's batch / heads, are contiguous).
Optional ``out=`` buffers stay outside the op (the traced code copies into them).

Not registered: ``unpad_input`` (its output size is data dependent; compiled models run the padded path) and
``pad_input`` (plain PyTorch ops, traced as they are). The kernels are reached inside the ops (custom_op), not
through ``triton_op``: the compiled graph calls our launchers, which keep engine's cached dispatch and launch path.

Adding an argument to an op (as ``enable_gqa`` was added to scaled_dot_product_attention): extend its schema string
below (with a default, so older call sites stay valid), its real and fake functions, and the call in the public op.
"""
from __future__ import annotations

import math

import torch

__all__ = ["OPS"]

_LIB = "engine"


def _op(name: str, schema: str):
    """Register ``engine::name`` with ``schema``; the decorated function is the real implementation."""
    return torch.library.custom_op(f"{_LIB}::{name}", mutates_args=(), schema=schema)


# ---- norm ---------------------------------------------------------------------------------------------------
@_op("layer_norm", "(Tensor input, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> Tensor")
def _layer_norm(input, normalized_shape, weight, bias, eps):
    from engine.ops.norm import layer_norm

    return layer_norm(input, normalized_shape, weight, bias, eps).contiguous()


@_layer_norm.register_fake
def _(input, normalized_shape, weight, bias, eps):
    from engine.ops.norm import _check_norm

    _check_norm(input, normalized_shape, weight, bias, eps, None, rms=False)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_op("rms_norm", "(Tensor input, int[] normalized_shape, Tensor? weight, float eps) -> Tensor")
def _rms_norm(input, normalized_shape, weight, eps):
    from engine.ops.norm import rms_norm

    return rms_norm(input, normalized_shape, weight, eps).contiguous()


@_rms_norm.register_fake
def _(input, normalized_shape, weight, eps):
    from engine.ops.norm import _check_norm

    _check_norm(input, normalized_shape, weight, None, eps, None, rms=True)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_op("add_layer_norm", "(Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)")
def _add_layer_norm(x, residual, weight, bias, eps):
    from engine.ops.norm import add_layer_norm

    y, s = add_layer_norm(x, residual, weight, bias, eps)
    return y.contiguous(), s.contiguous()


@_add_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    from engine.ops.norm import _check_add_norm

    _check_add_norm(x, residual, weight, bias, eps, None, None, rms=False)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@_op("add_rms_norm", "(Tensor x, Tensor residual, Tensor? weight, float eps) -> (Tensor, Tensor)")
def _add_rms_norm(x, residual, weight, eps):
    from engine.ops.norm import add_rms_norm

    y, s = add_rms_norm(x, residual, weight, eps)
    return y.contiguous(), s.contiguous()


@_add_rms_norm.register_fake
def _(x, residual, weight, eps):
    from engine.ops.norm import _check_add_norm

    _check_add_norm(x, residual, weight, None, eps, None, None, rms=True)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


# ---- activation ---------------------------------------------------------------------------------------------
@_op("gelu", "(Tensor input, str approximate) -> Tensor")
def _gelu(input, approximate):
    from engine.ops.activation import gelu

    return gelu(input, approximate).contiguous()


@_gelu.register_fake
def _(input, approximate):
    from engine.ops.activation import APPROXIMATIONS
    from engine.ops._checks import check_choice, check_floating

    check_floating("input", input)
    check_choice("approximate", approximate, APPROXIMATIONS)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_op("bias_gelu", "(Tensor input, Tensor bias, str approximate) -> Tensor")
def _bias_gelu(input, bias, approximate):
    from engine.ops.activation import bias_gelu

    return bias_gelu(input, bias, approximate).contiguous()


@_bias_gelu.register_fake
def _(input, bias, approximate):
    from engine.ops.activation import _check_bias_gelu

    _check_bias_gelu(input, bias, approximate, None)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_op("gelu_and_mul", "(Tensor input, str approximate) -> Tensor")
def _gelu_and_mul(input, approximate):
    from engine.ops.activation import gelu_and_mul

    return gelu_and_mul(input, approximate).contiguous()


@_gelu_and_mul.register_fake
def _(input, approximate):
    from engine.ops.activation import _check_gelu_and_mul

    n, _ = _check_gelu_and_mul(input, approximate, None)
    return input.new_empty((*input.shape[:-1], n))


# ---- backward of the norms and GELUs (register_autograd formulas below call these) ---------------------------
@_op("norm_backward", "(Tensor dy, Tensor? ds, Tensor v, Tensor? weight, float eps, bool rms) -> (Tensor, Tensor, Tensor)")
def _norm_backward(dy, ds, v, weight, eps, rms):
    """Rows (M, N): (dv, dweight (N,), dbias (N,); (0,) for RMSNorm), as engine.ops.grad.norm_backward."""
    from engine.ops.grad import norm_backward

    dv, dw, db = norm_backward(dy, ds, v, weight, eps, rms=rms)
    return dv.contiguous(), dw, db if db is not None else dw.new_empty(0)


@_norm_backward.register_fake
def _(dy, ds, v, weight, eps, rms):
    n = v.shape[-1]
    return (torch.empty_like(v, memory_format=torch.contiguous_format), v.new_empty(n),
            v.new_empty(0 if rms else n))


@_op("gelu_backward", "(Tensor dy, Tensor x, Tensor? bias, str approximate, bool gated) -> Tensor")
def _gelu_backward(dy, x, bias, approximate, gated):
    """Rows: dx of x (M, N) or (M, 2N) gated, as engine.ops.grad.gelu_backward."""
    from engine.ops.grad import gelu_backward

    return gelu_backward(dy, x, bias, approximate, gated=gated).contiguous()


@_gelu_backward.register_fake
def _(dy, x, bias, approximate, gated):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _norm_grads(ctx, dy, ds):
    """The autograd formula of the four norm ops: the saved (v, weight) and the (M, N) row view."""
    v, weight = ctx.saved_tensors
    n, shape, wshape, has_bias, rms, eps = ctx.norm
    dy = dy if dy is not None else torch.zeros_like(v)
    dv, dw, db = torch.ops.engine.norm_backward(dy.reshape(-1, n), None if ds is None else ds.reshape(-1, n),
                                                v.reshape(-1, n), None if weight is None else weight.reshape(n),
                                                eps, rms)
    return (dv.view(shape), None if wshape is None else dw.view(wshape),
            db.view(wshape or (n,)) if has_bias else None)


def _setup_norm(ctx, v, weight, bias, n, eps, rms, shape):
    ctx.save_for_backward(v, weight)
    ctx.norm = (n, shape, None if weight is None else weight.shape, bias is not None, rms, eps)


def _layer_norm_setup(ctx, inputs, output):
    input, normalized_shape, weight, bias, eps = inputs
    _setup_norm(ctx, input, weight, bias, math.prod(normalized_shape), eps, False, input.shape)


def _rms_norm_setup(ctx, inputs, output):
    input, normalized_shape, weight, eps = inputs
    _setup_norm(ctx, input, weight, None, math.prod(normalized_shape), eps, True, input.shape)


def _add_layer_norm_setup(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    _setup_norm(ctx, output[1], weight, bias, x.shape[-1], eps, False, x.shape)


def _add_rms_norm_setup(ctx, inputs, output):
    x, residual, weight, eps = inputs
    _setup_norm(ctx, output[1], weight, None, x.shape[-1], eps, True, x.shape)


def _layer_norm_bwd(ctx, dy):
    dx, dw, db = _norm_grads(ctx, dy, None)
    return dx, None, dw, db, None


def _rms_norm_bwd(ctx, dy):
    dx, dw, _ = _norm_grads(ctx, dy, None)
    return dx, None, dw, None


def _add_layer_norm_bwd(ctx, dy, ds):
    dx, dw, db = _norm_grads(ctx, dy, ds)
    return dx, dx, dw, db, None


def _add_rms_norm_bwd(ctx, dy, ds):
    dx, dw, _ = _norm_grads(ctx, dy, ds)
    return dx, dx, dw, None


def _gelu_setup(ctx, inputs, output):  # gelu (input, approximate), gelu_and_mul (same), bias_gelu (+ bias)
    x, bias, approximate = (inputs[0], None, inputs[1]) if len(inputs) == 2 else inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _gelu_grads(ctx, dy, gated):
    x, bias = ctx.saved_tensors
    n = x.shape[-1] if x.dim() else 1
    x2 = x.reshape(-1, n)
    dx = torch.ops.engine.gelu_backward(dy.reshape(x2.shape[0], -1), x2, bias, ctx.approximate, gated)
    return dx.view(x.shape), bias


def _gelu_bwd(ctx, dy):
    return _gelu_grads(ctx, dy, False)[0], None


def _gelu_and_mul_bwd(ctx, dy):
    return _gelu_grads(ctx, dy, True)[0], None


def _bias_gelu_bwd(ctx, dy):
    from engine.ops.grad import bias_grad

    dx, bias = _gelu_grads(ctx, dy, False)
    return dx, bias_grad(dx, bias), None


for _f, _bwd, _setup in ((_layer_norm, _layer_norm_bwd, _layer_norm_setup), (_rms_norm, _rms_norm_bwd, _rms_norm_setup),
                         (_add_layer_norm, _add_layer_norm_bwd, _add_layer_norm_setup),
                         (_add_rms_norm, _add_rms_norm_bwd, _add_rms_norm_setup),
                         (_gelu, _gelu_bwd, _gelu_setup), (_bias_gelu, _bias_gelu_bwd, _gelu_setup),
                         (_gelu_and_mul, _gelu_and_mul_bwd, _gelu_setup)):
    _f.register_autograd(_bwd, setup_context=_setup)


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
    from engine.ops.attention import varlen_attention

    return varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                            scale=scale, validate=validate, relative_position_bias=relative_position_bias,
                            dropout_p=dropout_p).contiguous()


@_varlen.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, validate,
      relative_position_bias=None, dropout_p=0.0):
    from engine.ops.attention import _check_varlen

    q, *_ = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                          relative_position_bias)
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
    from engine.ops.attention import _check_varlen

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


# ---- model input values -------------------------------------------------------------------------------------
@_op("check_range", "(Tensor x, Tensor[] others, int[] bounds, str[] names, str[] requirements) -> Tensor")
def _check_range(x, others, bounds, names, requirements):
    """Raise ValueError(f"{name} values must {requirement}; got values in [lo, hi]") for the first of (x, *others)
    with a value outside [0, bound); returns a copy of x (so the compiled graph keeps the check: use the copy).
    One device-to-host copy in all, like the eager model input check."""
    from engine.models.blocks import check_value_ranges

    check_value_ranges([x, *others], bounds, names, requirements)
    return x.clone()


@_check_range.register_fake
def _(x, others, bounds, names, requirements):
    return torch.empty_like(x)


OPS = {
    "layer_norm": _layer_norm, "add_layer_norm": _add_layer_norm, "rms_norm": _rms_norm, "add_rms_norm": _add_rms_norm,
    "gelu": _gelu, "bias_gelu": _bias_gelu, "gelu_and_mul": _gelu_and_mul,
    "scaled_dot_product_attention": _sdpa, "varlen_attention": _varlen, "decode_attention": _decode,
    "scaled_dot_product_attention_lse": _sdpa_lse, "scaled_dot_product_attention_backward": _sdpa_bwd,
    "varlen_attention_lse": _varlen_lse, "varlen_attention_backward": _varlen_bwd,
    "check_range": _check_range, "norm_backward": _norm_backward, "gelu_backward": _gelu_backward,
}
