"""Pieces every family shares: op wrappers, self-attention, MLP, the post-LN encoder layer, input checks.

The model code reaches engine's kernels only through the five small wrappers below (`layer_norm`,
`add_layer_norm`, `bias_gelu`, `sdpa`, `varlen`): each calls ``engine.ops`` when that op exists and PyTorch's
op otherwise, so CUDA runs our Triton kernels and every other device runs PyTorch with the same results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import ops


# ---- op wrappers: the model's call sites in the shape it uses (nn.LayerNorm modules, packed qkv) -------------
def layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last dim of ``x`` (..., C) with ``ln``'s weight, bias and eps."""
    return ops.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x + residual), x + residual); x, residual (..., C)."""
    return ops.add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """gelu(x + bias); x (..., F), bias (F,); approximate "none" (erf) or "tanh"."""
    return ops.bias_gelu(x, bias, approximate=approximate)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, causal: bool,
         scale: float, relative_position_bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention on (B, H, N, D) tensors; ``mask`` additive or bool (B, 1, 1 or N, N) or None; T5's (H, 2L - 1)
    relative-position table or None; ``dropout_p`` on the attention probabilities (training only)."""
    return ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal,
                                            scale=scale, relative_position_bias=relative_position_bias)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p)`` in training mode with p > 0; ``x`` itself otherwise (no op, no copy)."""
    return F.dropout(x, p, training=True) if training and p > 0.0 else x


def packable(module: nn.Module, attention_dropout: float) -> bool:
    """Whether a padded batch may run packed: varlen attention has no dropout, so a model in training mode with
    attention dropout runs the padded-mask path (same results otherwise)."""
    return not (module.training and attention_dropout > 0.0)


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, *,
           causal: bool, scale: float, relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention on packed (total, H, D) tokens of sequences delimited by int32 ``cu_seqlens`` (B + 1,); T5's
    (H, 2L - 1) relative-position table or None.

    cu_seqlens come from ``unpad``: known good, so the op's value check (a device sync) is skipped."""
    return ops.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal,
                                scale=scale, validate=False, relative_position_bias=relative_position_bias)


# ---- how one forward pass lays out its tokens --------------------------------------------------------------
@dataclass
class TokenLayout:
    """Padded tokens (B, N, C) with an optional additive mask, or packed tokens (T, C) with ``cu_seqlens``.

    Built once per forward pass and handed to every attention layer.
    """

    causal: bool = False
    mask: torch.Tensor | None = None  # padded: additive float (B, 1, 1 or N, N), or None for no padding
    cu_seqlens: torch.Tensor | None = None  # packed: int32 (B + 1,)
    max_seqlen: int = 0
    indices: torch.Tensor | None = None  # packed: positions of the real tokens in the flattened (B * N) batch

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def attend(self, qkv: torch.Tensor, num_heads: int, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
        """Fused qkv (B, N, 3C) or (T, 3C) -> attention output (B, N, C) or (T, C), heads merged. ``dropout_p``:
        attention dropout (padded layouts only: the caller does not pack when it is > 0)."""
        C = qkv.shape[-1] // 3
        D = C // num_heads
        if self.packed:
            T = qkv.shape[0]
            q, k, v = qkv.view(T, 3, num_heads, D).unbind(1)  # each (T, H, D)
            y = varlen(q, k, v, self.cu_seqlens, self.max_seqlen, causal=self.causal, scale=scale)
            return y.reshape(T, C)
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, num_heads, D).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        y = sdpa(q, k, v, mask=self.mask, causal=self.causal and self.mask is None, scale=scale, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(B, N, C)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype, *, causal: bool) -> torch.Tensor:
    """Additive mask from a (B, N) 0/1 mask: 0 where a key may be seen, dtype's most negative value elsewhere.

    (B, 1, 1, N), or (B, 1, N, N) with the causal triangle folded in. A finite minimum (not -inf) keeps rows
    with no visible key finite (uniform), as Hugging Face does, so padding never produces NaNs.
    """
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, N)
    if causal:
        N = attention_mask.shape[1]
        tri = torch.ones(N, N, dtype=torch.bool, device=attention_mask.device).tril()
        keep = keep & tri  # (B, 1, N, N)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def pack_by_default(attention_mask: torch.Tensor, *, cuda: bool = True) -> bool:
    """Whether a padded batch runs packed when the user has not chosen. CUDA: always (varlen attention spends no
    FLOPs on padding), unless ``cuda=False``. CPU: when at least 1/16 of the tokens are padding (the count costs no
    device sync there): the linear layers then skip the padding, which outweighs one SDPA call per sequence
    (bert-small, 32 x 64 with 40% padding: 1.44x transformers packed, 0.93x with the padding mask). Other devices:
    the padding mask."""
    if attention_mask.is_cuda:
        return cuda
    if attention_mask.device.type != "cpu":
        return False
    total = attention_mask.numel()
    return (total - int(attention_mask.count_nonzero())) * 16 >= total


def unpad(x: torch.Tensor, attention_mask: torch.Tensor, *, causal: bool = False) -> tuple[torch.Tensor, TokenLayout]:
    """(B, N, C) padded tokens -> (T, C) real tokens and the packed layout (sequences must be left-aligned)."""
    packed, indices, cu, max_seqlen = ops.unpad_input(x, attention_mask)
    return packed, TokenLayout(causal=causal, cu_seqlens=cu, max_seqlen=max_seqlen, indices=indices)


def pad(x: torch.Tensor, layout: TokenLayout, B: int, N: int) -> torch.Tensor:
    """(T, C) packed tokens back to (B, N, C); padded positions are zeros."""
    return ops.pad_input(x, layout.indices, B, N)


# ---- modules ------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    ``qkv`` (C -> 3C, rows ordered q, k, v; heads contiguous within each) and ``out`` (C -> C) are plain
    Linear layers, so a KV-cache can call ``qkv``, split heads itself and finish with ``out``.
    """

    def __init__(self, hidden: int, heads: int, *, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = scale
        self.dropout = dropout  # attention dropout, in training mode
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, 3C) -> q, k, v each (B, H, T, D) (views, not copies)."""
        B, T, C3 = qkv.shape
        D = C3 // (3 * self.num_heads)
        return qkv.view(B, T, 3, self.num_heads, D).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def merge_heads(y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) -> (B, T, H * D)."""
        B, H, T, D = y.shape
        return y.transpose(1, 2).reshape(B, T, H * D)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """x (B, N, C) or packed (T, C) -> same shape."""
        p = self.dropout if self.training else 0.0
        return self.out(layout.attend(self.qkv(x), self.num_heads, self.scale, p))


class MLP(nn.Module):
    """fc (C -> F) -> bias + GELU (fused) -> proj (F -> C)."""

    def __init__(self, hidden: int, inner: int, *, gelu: str) -> None:
        super().__init__()
        self.gelu = gelu
        self.fc = nn.Linear(hidden, inner)
        self.proj = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(bias_gelu(F.linear(x, self.fc.weight), self.fc.bias, self.gelu))


class EncoderLayer(nn.Module):
    """Post-LN block (BERT, ALBERT, RoBERTa): x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x)))."""

    def __init__(self, hidden: int, heads: int, inner: int, *, gelu: str, eps: float, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout  # hidden dropout of each sublayer's output, in training mode
        self.attn = SelfAttention(hidden, heads, scale=1.0 / math.sqrt(hidden // heads), dropout=attention_dropout)
        self.ln_attn = nn.LayerNorm(hidden, eps=eps)
        self.mlp = MLP(hidden, inner, gelu=gelu)
        self.ln_mlp = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """x (B, N, C) or packed (T, C) -> same shape."""
        x, _ = add_layer_norm(dropout(self.attn(x, layout), self.dropout, self.training), x, self.ln_attn)
        x, _ = add_layer_norm(dropout(self.mlp(x), self.dropout, self.training), x, self.ln_mlp)
        return x


# ---- input checks (all raised before any compute) -----------------------------------------------------------
def check_inputs(input_ids: object, attention_mask: object, token_type_ids: object, *, vocab_size: int,
                 max_len: int, type_vocab_size: int | None, device: torch.device, prefix: str = "") -> tuple:
    """Validate ``model(...)`` inputs and move them to ``device``. Returns (input_ids, mask, token_type_ids).

    input_ids (B, N) integers in [0, vocab_size) with 1 <= N <= max_len; attention_mask (B, N) of 0/1;
    token_type_ids (B, N) in [0, type_vocab_size) (``None`` type_vocab_size: the vocabulary bound applies).
    The value checks cost one device-to-host copy in all (none when the inputs are CPU tensors: they are checked
    before they move to ``device``). An attention_mask of all ones is returned as None (no padding: the unmasked
    attention path). ``prefix`` names the arguments in errors (``decoder_`` for a seq2seq decoder's
    decoder_input_ids / decoder_attention_mask). Under torch.compile the value checks run as the registered op
    ``engine::check_range`` (same errors, raised when the compiled graph runs) and the mask is kept as given.
    """
    ids_name = f"{prefix}input_ids"
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{ids_name} must be a torch.Tensor of token ids; got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"{ids_name} must be an integer tensor; got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"{ids_name} must have shape (batch, seq_len) with both >= 1; got {tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_len:
        raise ValueError(
            f"{ids_name} has sequence length {input_ids.shape[1]}, longer than this model's maximum {max_len} "
            "(max_position_embeddings)"
        )
    # Values are checked where the inputs are (CPU inputs of a CUDA model: before the copy, with no device sync),
    # then the tensors move to ``device``.
    host = input_ids.is_cpu and all(t is None or (isinstance(t, torch.Tensor) and t.is_cpu)
                                    for t in (attention_mask, token_type_ids))
    where = input_ids.device if host else device
    tensors = {"input_ids": input_ids.to(device=where, dtype=torch.long)}
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{prefix}{name} must be a torch.Tensor or None; got {type(t).__name__}")
        if t.shape != input_ids.shape:
            raise ValueError(f"{prefix}{name} must have the shape of {ids_name} {tuple(input_ids.shape)}; got "
                             f"{tuple(t.shape)}")
        if t.dtype.is_floating_point and name == "token_type_ids":
            raise TypeError(f"token_type_ids must be an integer tensor; got {t.dtype}")
        tensors[name] = t.to(device=where, dtype=torch.long)
    names = list(tensors)
    bounds = [vocab_size if n == "input_ids" else 2 if n == "attention_mask"
              else vocab_size if type_vocab_size is None else type_vocab_size for n in names]
    requirements = [f"lie in [0, {b}) (the vocabulary)" if n == "input_ids" else "be 0 or 1" if n == "attention_mask"
                    else f"be in [0, {b})" for n, b in zip(names, bounds)]
    labels = [f"{prefix}{n}" for n in names]  # as the errors name them
    if torch.compiler.is_compiling():
        # Compiled: the values are checked when the graph runs (a registered op, same errors); the mask is kept as
        # given, since dropping an all-ones mask is a data-dependent branch (the masked path gives the same results).
        tensors = {n: t.to(device) for n, t in tensors.items()}
        ids = torch.ops.engine.check_range(tensors["input_ids"], [tensors[n] for n in names[1:]], bounds, labels,
                                           requirements)
        return ids, tensors.get("attention_mask"), tensors.get("token_type_ids")
    stats = check_value_ranges(list(tensors.values()), bounds, labels, requirements)
    if "attention_mask" in tensors and stats[names.index("attention_mask")][0] == 1:
        tensors["attention_mask"] = None  # all ones: no padding
    get = lambda n: None if tensors.get(n) is None else tensors[n].to(device)  # noqa: E731
    return get("input_ids"), get("attention_mask"), get("token_type_ids")


def check_value_ranges(tensors: list[torch.Tensor], bounds: list[int], names: list[str],
                       requirements: list[str]) -> list[tuple[int, int]]:
    """(min, max) of each tensor, read with one device-to-host copy; raises ValueError(f"{name} values must
    {requirement}; got values in [lo, hi]") for the first whose values leave [0, bound)."""
    stats = torch.stack([x for t in tensors for x in torch.aminmax(t)]).tolist()  # one sync
    pairs = list(zip(stats[0::2], stats[1::2]))
    for (lo, hi), bound, name, requirement in zip(pairs, bounds, names, requirements):
        if lo < 0 or hi >= bound:
            raise ValueError(f"{name} values must {requirement}; got values in [{lo}, {hi}]")
    return pairs


def refuse_compiled_packing(packed: bool | None) -> None:
    """Under torch.compile encoders run the padded-mask path: the packed layout's size depends on the mask's
    values. ``model.packed = True`` asks for packing, so it is refused with a clear error instead."""
    if packed:
        raise ValueError("model.packed = True cannot be compiled (the number of real tokens is data dependent); set "
                         "it to None or False, which compile the padded-batch path")
