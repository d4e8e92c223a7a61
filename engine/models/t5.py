"""T5, mT5 and UMT5 (T5Model, T5ForConditionalGeneration, T5EncoderModel and the MT5* / UMT5* classes).

An encoder and a decoder stack of pre-norm blocks around a shared token embedding, with T5's pieces:
    RMSNorm (no mean, no bias; ``ops.rms_norm`` / ``ops.add_rms_norm``), attention without biases or softmax scaling
    (scale 1.0) plus a learned relative position bias (a (H, 2L - 1) table per stack, from the first layer's
    buckets; UMT5: one per layer; see engine/models/relative_bias.py), cross-attention in the decoder, and a
    feed-forward of ReLU (T5 v1.0) or GeGLU (v1.1 / flan-T5 / mT5: one fused [gate | up] projection, then
    ``ops.gelu_and_mul``). v1.0's tied LM head rescales the decoder output by d_model**-0.5 first.

What ``model(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None)`` returns:
    *EncoderModel                 the encoder's last_hidden_state (B, N, C)
    *Model                        the decoder's last_hidden_state (B, Nd, C)
    *ForConditionalGeneration    logits (B, Nd, vocab)
Encoder padding may sit left or right (relative positions count raw indices, as in transformers); outputs at
padded positions are unspecified. In float16 the residual stream is clamped after every sublayer exactly as
transformers does (finite values kept, infinities replaced), so fp16 checkpoints that overflow stay finite.

A stack pass attends through a ``Context``: full sequences (masks, causal flag) for ``model(...)``, or a KV cache
for generation (engine/seq2seq.py), which also hands in the cross-attention keys/values computed once. A padded
encoder batch whose rows each hold one run of real tokens runs packed, as the BERT family's does (always on CUDA,
where the varlen kernel gathers the bias; on the CPU when at least 1/16 of it is padding; ``model.packed = True /
False`` forces either path): the real tokens go through varlen attention, the distances between them, and so the
bias, unchanged.

The encoder pass replays CUDA graphs for small CUDA batches (engine/graphs.py: padded right to a length bucket with
the mask, which keeps every distance between real tokens and so the bias): T5EncoderModel's forward, and the encoder
pass of the seq2seq classes' forward and generate. ``model.cuda_graph`` (None: batches of at most
``graphs.GRAPH_MAX_TOKENS`` bucket-padded tokens; True; False) and ``model(..., cuda_graph=...)`` choose, as for the
BERT family. Under torch.compile the encoder runs the padded-mask path (``model.packed = True`` is refused).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine import graphs, ops
from engine.config import ModelConfig
from engine.models import blocks
from engine.models.relative_bias import bias_table

FP16_MAX = torch.finfo(torch.float16).max


class Attention(nn.Module):
    """Bias-free projections of one attention: self (fused qkv) or cross (q; fused kv over the encoder output),
    and the layer's relative-bias embedding (num_buckets, H) when it owns one."""

    def __init__(self, cfg: ModelConfig, *, cross: bool, has_bias: bool) -> None:
        super().__init__()
        C, H, D = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.num_heads, self.head_dim = H, D
        if cross:
            self.q = nn.Linear(C, H * D, bias=False)
            self.kv = nn.Linear(C, 2 * H * D, bias=False)
        else:
            self.qkv = nn.Linear(C, 3 * H * D, bias=False)
        self.out = nn.Linear(H * D, C, bias=False)
        self.rel_bias = nn.Embedding(cfg.relative_attention_num_buckets, H) if has_bias else None

    def heads(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n * H * D) -> n views (B, H, T, D); packed (T, n * H * D) -> n views (T, H, D)."""
        if x.dim() == 2:
            return x.view(x.shape[0], n, self.num_heads, self.head_dim).unbind(1)
        B, T, _ = x.shape
        return x.view(B, T, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output (B, H, T, D), or packed (T, H, D) -> output projection (B, T, C) / (T, C)."""
        if y.dim() == 3:
            return self.out(y.reshape(y.shape[0], -1))
        B, H, T, D = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    """wi (C -> F, or C -> 2F = [gate | up] when gated) -> activation (x gate product) -> wo (F -> C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        F_ = cfg.intermediate_size
        self.gated, self.activation, self.approximate = cfg.gated_mlp, cfg.activation, cfg.gelu
        self.dropout = cfg.hidden_dropout  # between the activation and wo, in training mode
        self.wi = nn.Linear(cfg.hidden_size, 2 * F_ if cfg.gated_mlp else F_, bias=False)
        self.wo = nn.Linear(F_, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.wi(x)  # (..., F) or (..., 2F)
        if self.gated and self.activation == "gelu":
            h = ops.gelu_and_mul(h, self.approximate)
        elif self.gated:  # gated ReLU: one pass of PyTorch's own ops (no kernel of ours would beat them)
            n = h.shape[-1] // 2
            h = torch.relu(h[..., :n]).mul_(h[..., n:])
        elif self.activation == "relu":
            h = torch.relu_(h)  # in place: one read and write, no allocation
        else:
            h = ops.gelu(h, self.approximate)
        return self.wo(blocks.dropout(h, self.dropout, self.training))


class Layer(nn.Module):
    """One block: RMSNorm -> self-attention (+ RMSNorm -> cross-attention in the decoder) -> RMSNorm -> MLP, each
    added to the residual stream."""

    def __init__(self, cfg: ModelConfig, *, decoder: bool, has_bias: bool) -> None:
        super().__init__()
        C, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.ln_attn = nn.RMSNorm(C, eps=eps)
        self.attn = Attention(cfg, cross=False, has_bias=has_bias)
        self.ln_cross = nn.RMSNorm(C, eps=eps) if decoder else None
        self.cross = Attention(cfg, cross=True, has_bias=False) if decoder else None
        self.ln_mlp = nn.RMSNorm(C, eps=eps)
        self.mlp = MLP(cfg)


@dataclass
class Context:
    """How one stack pass attends. tables: each layer's (H, 2L - 1) bias table. Full sequences: ``mask`` (B, 1, 1, N)
    bool key padding or None, ``causal``; or packed real tokens (``layout``, encoder only). Generation: ``cache`` (a
    StaticKVCache: self-attention keys/values). Decoder: ``cross_kv`` [(k, v) (B, H, Ns, D)] per layer,
    ``memory_mask`` (B, 1, 1, Ns) bool or None."""

    tables: list[torch.Tensor]
    layout: blocks.TokenLayout | None = None
    mask: torch.Tensor | None = None
    causal: bool = False
    cache: Any = None
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    memory_mask: torch.Tensor | None = None
    dropout_p: float = 0.0  # attention dropout (training; full sequences, padded layout only)

    def attend_self(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, H, T, D) of layer i -> (B, H, T, D)."""
        if self.cache is not None:
            return self.cache.attend(i, q, k, v, scale=1.0, relative_position_bias=self.tables[i])
        if self.layout is not None:  # packed (T, H, D)
            return blocks.varlen(q, k, v, self.layout.cu_seqlens, self.layout.max_seqlen, causal=False, scale=1.0,
                                 relative_position_bias=self.tables[i])
        return blocks.sdpa(q, k, v, mask=self.mask, causal=self.causal, scale=1.0,
                           relative_position_bias=self.tables[i], dropout_p=self.dropout_p)

    def attend_cross(self, i: int, q: torch.Tensor) -> torch.Tensor:
        k, v = self.cross_kv[i]
        return blocks.sdpa(q, k, v, mask=self.memory_mask, causal=False, scale=1.0, dropout_p=self.dropout_p)


def _add_norm(y: torch.Tensor, h: torch.Tensor, ln: nn.RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h + y), h + y): the sublayer output joins the residual stream, the next sublayer's input is its
    norm. float16: transformers' clamp of the stream (to +-max, or +-(max - 1000) once anything is infinite)."""
    if h.dtype != torch.float16:
        return ops.add_rms_norm(y, h, ln.weight, ln.eps)
    s = h + y
    lim = torch.where(torch.isinf(s).any(), FP16_MAX - 1000, FP16_MAX).to(s.dtype)
    s = torch.clamp(s, min=-lim, max=lim)
    return ops.rms_norm(s, (s.shape[-1],), ln.weight, ln.eps), s


class Stack(nn.Module):
    """The encoder (bidirectional bias) or the decoder (causal bias, cross-attention) layers and the final norm."""

    def __init__(self, cfg: ModelConfig, *, decoder: bool) -> None:
        super().__init__()
        n = cfg.num_decoder_layers if decoder else cfg.num_layers
        every = cfg.family == "umt5"  # UMT5: a bias table per layer; T5 / mT5: layer 0's serves them all
        self.layers = nn.ModuleList(Layer(cfg, decoder=decoder, has_bias=every or i == 0) for i in range(n))
        self.ln_f = nn.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bidirectional = not decoder
        self.buckets = (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        self.dropout = cfg.hidden_dropout  # embeddings, each sublayer's output and the final norm's, in training

    def tables(self, length: int) -> list[torch.Tensor]:
        """Each layer's bias table (H, 2 * length - 1) (a layer without its own reuses the one before)."""
        out, table = [], None
        for lyr in self.layers:
            if lyr.attn.rel_bias is not None:
                table = bias_table(lyr.attn.rel_bias.weight, bidirectional=self.bidirectional,
                                   num_buckets=self.buckets[0], max_distance=self.buckets[1], length=length)
            out.append(table)
        return out

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encoder output (B, Ns, C) -> per decoder layer (k, v), each (B, H, Ns, D)."""
        return [lyr.cross.heads(lyr.cross.kv(memory), 2) for lyr in self.layers]

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Embedded tokens (B, T, C) -> the final normed hidden states (B, T, C)."""
        layers = self.layers
        p, training = self.dropout, self.training
        if training and ctx.cache is None:
            ctx.dropout_p = p
        h = blocks.dropout(x, p, training)  # the residual stream
        a = ops.rms_norm(h, (h.shape[-1],), layers[0].ln_attn.weight, layers[0].ln_attn.eps)
        for i, lyr in enumerate(layers):
            q, k, v = lyr.attn.heads(lyr.attn.qkv(a), 3)
            y = lyr.attn.merge(ctx.attend_self(i, q, k, v))
            if lyr.cross is not None:
                a, h = _add_norm(blocks.dropout(y, p, training), h, lyr.ln_cross)
                (q,) = lyr.cross.heads(lyr.cross.q(a), 1)
                y = lyr.cross.merge(ctx.attend_cross(i, q))
            a, h = _add_norm(blocks.dropout(y, p, training), h, lyr.ln_mlp)
            nxt = layers[i + 1].ln_attn if i + 1 < len(layers) else self.ln_f
            a, h = _add_norm(blocks.dropout(lyr.mlp(a), p, training), h, nxt)
        return blocks.dropout(a, p, training)


def key_padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) 0/1 -> (B, 1, 1, N) bool (True = attend), or None."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


class T5(nn.Module):
    """The T5-family class of ``cfg.architecture`` (see the module docstring). The LM head is the shared embedding
    unless the checkpoint has its own ``lm_head.weight`` (``with_lm_head``; transformers unties the same way)."""

    def __init__(self, cfg: ModelConfig, *, with_lm_head: bool | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.packed: bool | None = None  # the encoder's padded batches: None = automatic (see the module docstring)
        self.cuda_graph: bool | None = None  # CUDA graphs of the encoder pass (see the module docstring)
        self.shared = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True) if cfg.head != "base" else None
        untied = with_lm_head if with_lm_head is not None else not cfg.tie_word_embeddings
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) if cfg.head == "lm" and untied else None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               packed: bool | None = None) -> torch.Tensor:
        """Checked ids (B, N), mask (B, N) or None -> the encoder's last hidden state (B, N, C). ``packed``
        overrides ``self.packed`` for this call."""
        B, N = input_ids.shape
        tables = self.encoder.tables(N)
        x = self.shared(input_ids)
        if torch.compiler.is_compiling():  # the packed layout's size depends on the mask's values
            blocks.refuse_compiled_packing(self.packed)
            return self.encoder(x, Context(tables=tables, mask=key_padding(attention_mask)))
        if (attention_mask is not None and blocks.packable(self, self.config.attention_dropout)
                and self._pack(attention_mask, self.packed if packed is None else packed)):
            x, layout = blocks.unpad(x, attention_mask)
            return blocks.pad(self.encoder(x, Context(tables=tables, layout=layout)), layout, B, N)
        return self.encoder(x, Context(tables=tables, mask=key_padding(attention_mask)))

    def encoder_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       cuda_graph: bool | None = None) -> torch.Tensor:
        """``encode``, replayed as a CUDA graph when ``graphs.use_graph`` says so (see the module docstring)."""
        if graphs.use_graph(self, input_ids, cuda_graph):
            return graphs.graphs_of(self).run(input_ids, attention_mask, None)
        return self.encode(input_ids, attention_mask)

    def _pack(self, attention_mask: torch.Tensor, packed: bool | None) -> bool:
        """Run this padded batch packed? Only if every row's real tokens are one run (packing keeps the distances
        between them, so the bias); then ``packed``, or by default as ``blocks.pack_by_default`` says."""
        if packed is False or (packed is None and not blocks.pack_by_default(attention_mask)):
            return False
        m = attention_mask.bool()
        runs = m[:, 0].long() + (m[:, 1:] & ~m[:, :-1]).sum(1)  # runs of real tokens per row
        return bool((runs <= 1).all())

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Checked decoder ids (B, Nd) over the encoder output ``memory`` (B, Ns, C) -> decoder hidden (B, Nd, C).

        memory_mask: (B, Ns) 0/1 or None; decoder_attention_mask: (B, Nd) 0/1 or None (causal either way)."""
        ctx = Context(tables=self.decoder.tables(decoder_input_ids.shape[1]), mask=key_padding(decoder_attention_mask),
                      causal=True, cross_kv=self.decoder.cross_kv(memory), memory_mask=key_padding(memory_mask))
        return self.decoder(self.shared(decoder_input_ids), ctx)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder hidden (..., C) -> (..., vocab); v1.0 (scale_decoder_outputs) rescales by d_model**-0.5 first."""
        if self.config.scale_decoder_outputs:
            hidden = hidden * self.config.hidden_size ** -0.5
        return F.linear(hidden, self.shared.weight if self.lm_head is None else self.lm_head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None, *, cuda_graph: bool | None = None) -> torch.Tensor:
        """input_ids (B, N) (+ decoder_input_ids (B, Nd) for the seq2seq classes) -> the main output of
        ``config.architecture``; masks are (B, N) / (B, Nd) of 0/1, padding anywhere. cuda_graph: for the encoder
        pass (None follows ``self.cuda_graph``)."""
        cfg = self.config
        dev = self.shared.weight.device
        ids, mask, _ = blocks.check_inputs(input_ids, attention_mask, None, vocab_size=cfg.vocab_size,
                                           max_len=cfg.max_seq_len, type_vocab_size=None, device=dev)
        if cfg.head == "base":
            if decoder_input_ids is not None or decoder_attention_mask is not None:
                raise ValueError(f"{cfg.architecture} is an encoder only: it takes no decoder_input_ids or "
                                 "decoder_attention_mask")
            return self.encoder_output(ids, mask, cuda_graph=cuda_graph)
        if decoder_input_ids is None:
            raise ValueError(f"decoder_input_ids must be given for {cfg.architecture}: the decoder's input, "
                             f"decoder_start_token_id ({cfg.decoder_start_token_id}) then the target so far "
                             "(model.generate builds it)")
        dec_ids, dec_mask, _ = blocks.check_inputs(decoder_input_ids, decoder_attention_mask, None,
                                                   vocab_size=cfg.vocab_size, max_len=cfg.max_seq_len,
                                                   type_vocab_size=None, device=dev, prefix="decoder_")
        if dec_ids.shape[0] != ids.shape[0]:
            raise ValueError(f"decoder_input_ids must have the batch size of input_ids ({ids.shape[0]}); got "
                             f"{dec_ids.shape[0]}")
        hidden = self.decode(dec_ids, self.encoder_output(ids, mask, cuda_graph=cuda_graph), mask, dec_mask)
        return self.logits(hidden) if cfg.head == "lm" else hidden

    # ---- what engine.graphs needs: the encoder pass, on the padded-mask path ----
    def graph_weight(self) -> torch.Tensor:
        return self.shared.weight

    def graph_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: None, return_pooled: bool) -> tuple[torch.Tensor]:
        return (self.encode(input_ids, attention_mask, packed=False),)

    def graph_outputs(self, return_pooled: bool) -> tuple[bool]:
        return (True,)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """(B, N) source ids -> (B, 1 + new) decoder ids, like HF's generate: see engine.seq2seq.generate."""
        from engine.seq2seq import generate

        return generate(self, input_ids, **kwargs)


# ---- Hugging Face names -> engine names --------------------------------------------------------------------
_BLOCK = re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(\w+)\.(?:(\w+)\.)?weight")
_SELF = {"q": ("attn.qkv", 0), "k": ("attn.qkv", 1), "v": ("attn.qkv", 2), "o": ("attn.out", -1),
         "relative_attention_bias": ("attn.rel_bias", -1)}
_CROSS = {"q": ("cross.q", -1), "k": ("cross.kv", 0), "v": ("cross.kv", 1), "o": ("cross.out", -1),
          "relative_attention_bias": ("", -1)}  # transformers ignores it too
_MLP = {"wi": ("mlp.wi", -1), "wi_0": ("mlp.wi", 0), "wi_1": ("mlp.wi", 1), "wo": ("mlp.wo", -1)}
_TOP = {"shared.weight": ("shared.weight", False), "encoder.embed_tokens.weight": ("shared.weight", True),
        "decoder.embed_tokens.weight": ("", False), "encoder.final_layer_norm.weight": ("encoder.ln_f.weight", False),
        "decoder.final_layer_norm.weight": ("decoder.ln_f.weight", False), "lm_head.weight": ("lm_head.weight", False)}


def hf_name(cfg: ModelConfig, name: str) -> tuple[str, int, int, bool] | None:
    """One HF T5-family tensor name -> (engine name, part, parts, alias); "" for tensors engine does not use;
    None when the name means nothing to the family. part/parts: q/k/v (0..2 of 3) into attn.qkv, k/v (0..1 of 2)
    into cross.kv, wi_0/wi_1 (0..1 of 2) into the gated mlp.wi; -1 for whole tensors."""
    if name in _TOP:
        target, alias = _TOP[name]
        return target, -1, 1, alias
    m = _BLOCK.fullmatch(name)
    if m is None:
        return None
    stack, i, j, module, leaf = m.group(1), m.group(2), int(m.group(3)), m.group(4), m.group(5)
    ff = 1 if stack == "encoder" else 2
    if module == "layer_norm" and leaf is None:
        norm = {0: "ln_attn", ff: "ln_mlp"}.get(j) or ("ln_cross" if stack == "decoder" and j == 1 else None)
        return None if norm is None else (f"{stack}.layers.{i}.{norm}.weight", -1, 1, False)
    table = {(0, "SelfAttention"): _SELF, (ff, "DenseReluDense"): _MLP}.get((j, module))
    if stack == "decoder" and (j, module) == (1, "EncDecAttention"):
        table = _CROSS
    if table is None or leaf not in table:
        return None
    target, part = table[leaf]
    if not target:
        return "", -1, 1, False
    return f"{stack}.layers.{i}.{target}.weight", part, 3 if target == "attn.qkv" else 2, False
