"""Torch-shaped public ops. Each validates its arguments, then `engine.backend` picks Triton or PyTorch.

Every op is also registered as a PyTorch custom op, ``torch.ops.engine.<name>`` (engine/ops/library.py), which
the public function calls while torch.compile traces it; eager calls take the cheap path directly.

    ops.layer_norm, ops.add_layer_norm,
    ops.rms_norm, ops.add_rms_norm              (engine/ops/norm.py)
    ops.gelu, ops.bias_gelu, ops.gelu_and_mul   (engine/ops/activation.py)
    ops.scaled_dot_product_attention            (engine/ops/attention.py)
    ops.varlen_attention, unpad/pad helpers     (engine/ops/varlen.py)
    ops.decode_attention                        (engine/ops/decode.py)
"""
from engine.ops.activation import bias_gelu, gelu, gelu_and_mul
from engine.ops.attention import scaled_dot_product_attention
from engine.ops.decode import decode_attention
from engine.ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm
from engine.ops.varlen import pad_input, unpad_input, varlen_attention
from engine.ops import library  # noqa: E402,F401  (registers torch.ops.engine.*)

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "bias_gelu",
    "decode_attention",
    "gelu",
    "gelu_and_mul",
    "layer_norm",
    "pad_input",
    "rms_norm",
    "scaled_dot_product_attention",
    "unpad_input",
    "varlen_attention",
]
