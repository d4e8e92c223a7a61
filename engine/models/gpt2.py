"""GPT-2 (GPT2Model, GPT2LMHeadModel; any size): token + position embeddings, pre-LN causal blocks, ln_f.

The residual stream is carried through fused add + LayerNorm calls: each block's output is added to the stream
and normalised by the *next* LayerNorm (ln_2, the next block's ln_1, finally ln_f) in one op.

KV-cache hook (for engine.generate): ``forward(..., position_ids=..., cache=obj)`` hands each layer's attention
to ``obj.attend(layer_idx, q, k, v, scale=s) -> (B, H, T, D)``, where q, k, v are the new tokens' (B, H, T, D)
projections. The cache object stores k/v in its own buffers and attends over everything cached (with whatever
masking it keeps); the model does the rest (qkv projection, head split/merge, output projection, MLPs). With a
cache, the input checks that need a device sync are skipped (the caller validated the prompt) so the decode
step can be captured in a CUDA graph; ``position_ids`` (B or 1, T) must then be given.
"""
from __future__ import annotations

import math
import re
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models import blocks


class KVCache(Protocol):
    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               scale: float) -> torch.Tensor: ...


class Block(nn.Module):
    """One pre-LN block's weights: ln_1, attn (fused qkv + out), ln_2, mlp (fc + proj)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        C = cfg.hidden_size
        scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.ln_1 = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.attn = blocks.SelfAttention(C, cfg.num_heads, scale=scale, dropout=cfg.attention_dropout)
        self.ln_2 = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.mlp = blocks.MLP(C, cfg.intermediate_size, gelu=cfg.gelu)


class GPT2(nn.Module):
    """GPT2Model (returns last_hidden_state (B, T, C)) or GPT2LMHeadModel (returns logits (B, T, vocab)).

    The LM head is the token embedding (tied) unless the config unties it (then ``lm_head`` holds it).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        C = cfg.hidden_size
        self.wte = nn.Embedding(cfg.vocab_size, C)
        self.wpe = nn.Embedding(cfg.max_position_embeddings, C)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        untied = cfg.head == "lm" and not cfg.tie_word_embeddings
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False) if untied else None

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                      cache: KVCache | None = None) -> torch.Tensor:
        """Checked ids (B, T) -> final hidden states after ln_f (B, T, C)."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)  # as HF: token types are embedded with the token table
        cfg, training = self.config, self.training
        x = blocks.dropout(x, cfg.embedding_dropout, training)
        layout = None
        if cache is None:
            has_padding = attention_mask is not None
            mask = blocks.padding_mask(attention_mask, x.dtype, causal=True) if has_padding else None
            layout = blocks.TokenLayout(causal=True, mask=mask)
        h = x  # the residual stream
        a = blocks.layer_norm(h, self.blocks[0].ln_1)
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            if cache is None:
                y = blk.attn(a, layout)
            else:
                q, k, v = blk.attn.split_heads(blk.attn.qkv(a))  # each (B, H, T, D)
                y = blk.attn.out(blk.attn.merge_heads(cache.attend(i, q, k, v, scale=blk.attn.scale)))
            a, h = blocks.add_layer_norm(blocks.dropout(y, cfg.hidden_dropout, training), h, blk.ln_2)
            nxt = self.blocks[i + 1].ln_1 if i + 1 < n else self.ln_f
            a, h = blocks.add_layer_norm(blocks.dropout(blk.mlp(a), cfg.hidden_dropout, training), h, nxt)
        return a

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., vocab)."""
        return F.linear(hidden, self.wte.weight if self.lm_head is None else self.lm_head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab) for GPT2LMHeadModel, last_hidden_state (B, T, C) for
        GPT2Model. attention_mask (B, T) of 0/1 (left or right padding; positions stay 0..T-1 as in HF).
        Outputs at masked positions are unspecified.
        """
        cfg = self.config
        if cache is None:
            input_ids, attention_mask, token_type_ids = blocks.check_inputs(
                input_ids, attention_mask, token_type_ids, vocab_size=cfg.vocab_size,
                max_len=cfg.max_position_embeddings, type_vocab_size=None, device=self.wte.weight.device)
        elif position_ids is None:
            raise ValueError("position_ids (B or 1, T) must be given together with cache")
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids, position_ids=position_ids,
                                    cache=cache)
        return self.logits(hidden) if cfg.head == "lm" else hidden

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """(B, T) prompts -> (B, T + new) int64, like HF's generate: see engine.generate.generate."""
        from engine.generate import generate

        return generate(self, input_ids, **kwargs)


# ---- Hugging Face names -> engine names --------------------------------------------------------------------
_LAYER = re.compile(r"h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)")
_PARTS = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.out",
          "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def hf_name(cfg: ModelConfig, name: str) -> tuple[str, bool] | None:
    """One HF GPT-2 tensor name -> (engine name, transpose?) ; ("", False) for buffers; None if unknown.

    Conv1D weights (in, out) are transposed to Linear's (out, in).
    """
    if name.startswith("transformer."):
        name = name[len("transformer."):]
    if _BUFFERS.fullmatch(name):
        return "", False
    if name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"):
        return name, False
    m = _LAYER.fullmatch(name)
    if m is None:
        return None
    part, leaf = m.group(2), m.group(3)
    transpose = leaf == "weight" and part.startswith(("attn", "mlp"))
    return f"blocks.{m.group(1)}.{_PARTS[part]}.{leaf}", transpose
