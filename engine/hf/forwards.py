"""The forwards ``engine.hf.patch`` binds to transformers modules: the same maths with engine's fused ops.

Each replaces one module's ``forward`` (bound to that instance; the class is untouched) and computes what the
module's own forward computes. The fused path runs only when engine's kernels run on the tensors at hand (CUDA, or
Triton's interpreter under ENGINE_BACKEND=triton; never while autograd records, since the kernels have no backward):
everywhere else engine's ops are PyTorch's own ops, so the module's original forward runs unchanged (same result,
no extra pass). Dropout modules are called as the originals call them, so training mode behaves as before.

``encoder_forward`` is the exception that also pays on the CPU: it packs a padded encoder batch into its real tokens,
so every layer (linear layers included) skips the padding, and attention runs ``ops.varlen_attention``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from engine import ops
from engine.hf.attention import NAME, PACKED_MARK, _kernels_run


def _original(module: nn.Module):
    """The class's forward, bound to ``module`` (what runs when the fused path does not)."""
    return type(module).forward.__get__(module)


def _add_ln(x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm(x + residual); x, residual (..., C)."""
    return ops.add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps)[0]


def _linear_gelu(x: torch.Tensor, linear: nn.Module, approximate: str) -> torch.Tensor:
    """gelu(linear(x)) with the bias added inside the GELU kernel; ``linear`` an nn.Linear or a GPT-2 Conv1D."""
    if isinstance(linear, nn.Linear):
        h = F.linear(x, linear.weight)
    else:  # transformers' Conv1D: weight (in, out), y = x @ weight + bias
        h = torch.matmul(x, linear.weight)
    return ops.bias_gelu(h, linear.bias, approximate=approximate)


# ---- modules every family has ---------------------------------------------------------------------------------
def layer_norm_forward(self: nn.LayerNorm, input: torch.Tensor) -> torch.Tensor:
    if not _kernels_run(input, self.weight, self.bias):
        return _original(self)(input)
    return ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def output_forward(self: nn.Module, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    """BertSelfOutput / BertOutput (and RoBERTa's, ELECTRA's): LayerNorm(dropout(dense(h)) + input)."""
    if not _kernels_run(hidden_states, self.dense.weight, self.LayerNorm.weight):
        return _original(self)(hidden_states, input_tensor)
    return _add_ln(self.dropout(self.dense(hidden_states)), input_tensor, self.LayerNorm)


def intermediate_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """BertIntermediate (and RoBERTa's, ELECTRA's): gelu(dense(h))."""
    if not _kernels_run(hidden_states, self.dense.weight):
        return _original(self)(hidden_states)
    return _linear_gelu(hidden_states, self.dense, self._engine_gelu)


def gpt2_mlp_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """GPT2MLP: dropout(c_proj(gelu(c_fc(h))))."""
    if not _kernels_run(hidden_states, self.c_fc.weight):
        return _original(self)(hidden_states)
    return self.dropout(self.c_proj(_linear_gelu(hidden_states, self.c_fc, self._engine_gelu)))


def distilbert_ffn_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """DistilBERT FFN (unchunked): dropout(lin2(gelu(lin1(x))))."""
    if not _kernels_run(input, self.lin1.weight):
        return _original(self)(input)
    return self.dropout(self.lin2(_linear_gelu(input, self.lin1, self._engine_gelu)))


def distilbert_block_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
    """DistilBERT TransformerBlock: a = LN(attn(h) + h); LN(ffn(a) + a)."""
    if not _kernels_run(hidden_states, self.sa_layer_norm.weight):
        return _original(self)(hidden_states, attention_mask, **kwargs)
    attn, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
    attn = _add_ln(attn, hidden_states, self.sa_layer_norm)
    return _add_ln(self.ffn(attn), attn, self.output_layer_norm)


# ---- ALBERT: the residual adds live inside the attention and layer modules -------------------------------------
def _attention_function(module: nn.Module):
    """The attention function transformers would call for ``module`` (its config's implementation)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager)


def albert_attention_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AlbertAttention: LayerNorm(h + dropout(dense(attention(q(h), k(h), v(h)))))."""
    if not _kernels_run(hidden_states, self.LayerNorm.weight):
        return _original(self)(hidden_states, attention_mask, **kwargs)
    lead = hidden_states.shape[:-1]
    heads = (*lead, -1, self.attention_head_size)
    q, k, v = (lin(hidden_states).view(heads).transpose(1, 2) for lin in (self.query, self.key, self.value))
    out, weights = _attention_function(self)(
        self, q, k, v, attention_mask, dropout=self.attention_dropout.p if self.training else 0.0,
        scaling=self.scaling, **kwargs)
    out = self.output_dropout(self.dense(out.reshape(*lead, -1)))
    return _add_ln(out, hidden_states, self.LayerNorm), weights


def albert_layer_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         **kwargs) -> torch.Tensor:
    """AlbertLayer (unchunked): a = attention(h); LN(ffn_output(gelu(ffn(a))) + a)."""
    if not _kernels_run(hidden_states, self.full_layer_layer_norm.weight):
        return _original(self)(hidden_states, attention_mask, **kwargs)
    attn, _ = self.attention(hidden_states, attention_mask, **kwargs)
    ffn = self.ffn_output(_linear_gelu(attn, self.ffn, self._engine_gelu))
    return _add_ln(ffn, attn, self.full_layer_layer_norm)


# ---- padded encoder batches run packed ---------------------------------------------------------------------------
def key_padding(mask: object, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """(B, N) bool keep-mask when ``mask`` is a key-padding mask over these N tokens (the stride-0 view
    engine's mask function returns: (B, 1, N, N) bool, stride 0 over the queries), else None."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 4:
        return None
    B, N = hidden_states.shape[:2]
    if tuple(mask.shape) != (B, 1, N, N) or mask.stride(2) != 0:
        return None
    return mask[:, 0, 0, :]


def _collecting_outputs() -> bool:
    """Whether transformers' output hooks are gathering per-layer outputs (they would see packed shapes)."""
    capturing = sys.modules.get("transformers.utils.output_capturing")
    collector = getattr(capturing, "_active_collector", None)
    return collector is None or bool(collector.get())


def _pack_plan(self: nn.Module, hidden_states: torch.Tensor, attention_mask: object, args: tuple,
               kwargs: dict) -> torch.Tensor | None:
    """The (B, N) keep-mask when this call runs packed, else None (the module's own forward runs)."""
    if (self.training or self._engine_config._attn_implementation != NAME or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and hidden_states.requires_grad)
            or any(a is not None for a in args) or kwargs.get("cu_seq_lens_q") is not None
            or any(kwargs.get(k) is not None for k in ("encoder_hidden_states", "encoder_attention_mask", "cache"))
            or kwargs.get("use_cache") or _collecting_outputs()):
        return None
    keep = key_padding(attention_mask, hidden_states)
    if keep is None:
        return None
    if self._engine_pack is None:
        from engine.models.blocks import pack_by_default  # engine's own rule for its encoders

        return keep if pack_by_default(keep) else None
    return keep if self._engine_pack else None


def encoder_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    *args, **kwargs):
    """BertEncoder (RoBERTa's, ELECTRA's), AlbertTransformer, DistilBERT's Transformer: a padded batch (B, N, C) runs
    as (1, T, C) real tokens with ``cu_seq_lens_*`` for the attention; the output is padded back to (B, N, C) with
    zeros at the padding (its values there are unspecified, as in engine's own models)."""
    keep = _pack_plan(self, hidden_states, attention_mask, args, kwargs)
    if keep is None:
        return _original(self)(hidden_states, attention_mask, *args, **kwargs)
    B, N = keep.shape
    packed, indices, cu, max_len = ops.unpad_input(hidden_states, keep)  # (T, C); one host sync
    setattr(cu, PACKED_MARK, True)
    out = _original(self)(packed[None], None, *args, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len,
                          max_length_k=max_len, **kwargs)
    out.last_hidden_state = ops.pad_input(out.last_hidden_state[0], indices, B, N)
    return out
