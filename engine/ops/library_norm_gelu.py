"""The norm and GELU ops as PyTorch custom ops (``torch.ops.engine.<name>``), with their autograd formulas.

``layer_norm``, ``add_layer_norm``, ``rms_norm``, ``add_rms_norm``, ``gelu``, ``bias_gelu`` and ``gelu_and_mul`` call
the eager functions at run time; their fake implementations run the eager argument checks on the fake tensors and
return contiguous outputs. Each carries a ``register_autograd`` formula, so torch.compile traces training too: the
formulas call two more registered ops, ``engine::norm_backward`` and ``engine::gelu_backward`` (engine.ops.grad: the
Triton backward kernels or PyTorch's gradients, dispatched as the forward is). ``_op`` registers every engine op
(library_attention.py and library.py use it too). Imported, and so registered, by engine.ops.library (first).
"""
from __future__ import annotations

import math

import torch

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
