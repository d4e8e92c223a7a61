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
The norm and GELU ops carry ``register_autograd`` formulas, so torch.compile traces training too (see
library_norm_gelu.py).
At trace time the fake (meta) implementation runs the same argument checks on the fake tensors (same errors,
raised while compiling) and returns outputs with the strides the real op produces: contiguous, except attention
(B, H, N, D), which is laid out as (B, N, H, D) when the query is a transposed view of that layout (see
``attention.output_like``; SDPA calls of another rank, or broadcasting the query's batch / heads, are contiguous).
Optional ``out=`` buffers stay outside the op (the traced code copies into them).

Not registered: ``unpad_input`` (its output size is data dependent; compiled models run the padded path) and
``pad_input`` (plain PyTorch ops, traced as they are). The kernels are reached inside the ops (custom_op), not
through ``triton_op``: the compiled graph calls our launchers, which keep engine's cached dispatch and launch path.

Importing this module registers every op, in one fixed order: engine/ops/library_norm_gelu.py (the norms, the GELUs,
their backward ops and autograd formulas; also ``_op``, the decorator every op is registered with), then
engine/ops/library_attention.py (the attention ops, their differentiable ``*_lse`` / ``*_backward`` pairs, decode;
it imports library_norm_gelu, so that order holds whichever is imported first), then ``check_range`` here. ``OPS``
maps each name to its op.

Adding an argument to an op (as ``enable_gqa`` was added to scaled_dot_product_attention): extend its schema string
in its file (with a default, so older call sites stay valid), its real and fake functions, and the call in the
public op.
"""
from __future__ import annotations

import torch

from engine.ops.library_norm_gelu import (  # registers the norm and GELU ops (first)
    _add_layer_norm, _add_rms_norm, _bias_gelu, _gelu, _gelu_and_mul, _gelu_backward, _layer_norm, _norm_backward, _op,
    _rms_norm)
from engine.ops.library_attention import (  # then the attention ops
    _decode, _sdpa, _sdpa_bwd, _sdpa_lse, _varlen, _varlen_bwd, _varlen_lse)

__all__ = ["OPS"]


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
