"""BERT, ALBERT and RoBERTa: one encoder (embeddings -> post-LN layers) with the heads of the HF classes.

What ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns, by ``config.architecture``:
    *Model                        last_hidden_state (B, N, C)   (``return_pooled=True``: (that, pooler (B, C)))
    *ForMaskedLM                  logits (B, N, vocab)
    *ForSequenceClassification    logits (B, num_labels)
    BertForQuestionAnswering      (start_logits (B, N), end_logits (B, N))
    BertForNextSentencePrediction logits (B, 2)
    BertForPreTraining            (prediction_logits (B, N, vocab), seq_relationship_logits (B, 2))
Positions where attention_mask == 0 hold unspecified values (zeros on the packed CUDA path).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from engine import graphs
from engine.config import ModelConfig
from engine.models import blocks

# Which outputs of each head have a sequence dimension (cut back to the real length after a CUDA graph's padded
# run), for return_pooled=False and True.
_SEQ_OUTPUTS = {"base": ((True,), (True, False)), "mlm": ((True,), (True,)), "seq_cls": ((False,), (False,)),
                "qa": ((True, True), (True, True)), "nsp": ((False,), (False,)),
                "pretraining": ((True, False), (True, False))}


class Embeddings(nn.Module):
    """word + position (+ token type) embeddings, then LayerNorm; width E (ALBERT's embedding_size) or C."""

    def __init__(self, cfg: ModelConfig, width: int) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, width)
        self.position = nn.Embedding(cfg.max_position_embeddings, width)
        self.token_type = nn.Embedding(cfg.type_vocab_size, width) if cfg.type_vocab_size > 0 else None
        self.ln = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.dropout = cfg.embedding_dropout

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """ids (B, N) -> (B, N, E)."""
        x = self.word(input_ids) + self.position(position_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                x = x + self.token_type.weight[0]
            else:
                x = x + self.token_type(token_type_ids)
        return blocks.dropout(blocks.layer_norm(x, self.ln), self.dropout, self.training)


class MLMHead(nn.Module):
    """dense (C -> E) -> GELU -> LayerNorm -> decoder (E -> vocab, tied to the word embeddings unless untied)."""

    def __init__(self, cfg: ModelConfig, width: int, *, gelu: str) -> None:
        super().__init__()
        self.gelu = gelu
        self.dense = nn.Linear(cfg.hidden_size, width)
        self.ln = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.empty(cfg.vocab_size))
        self.decoder = None if cfg.tie_word_embeddings else nn.Parameter(torch.empty(cfg.vocab_size, width))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = blocks.layer_norm(blocks.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias, self.gelu), self.ln)
        weight = word_embeddings if self.decoder is None else self.decoder
        return F.linear(h, weight, self.bias)


class RobertaClassifier(nn.Module):
    """RoBERTa's sequence-classification head on the first token: dense -> tanh -> out_proj."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.dropout = cfg.classifier_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, training = self.dropout, self.training
        h = torch.tanh(self.dense(blocks.dropout(x[:, 0], p, training)))
        return self.out_proj(blocks.dropout(h, p, training))


class EncoderModel(nn.Module):
    """BERT / ALBERT / RoBERTa with the head of ``cfg.architecture``. ALBERT's shared layers exist once.

    ``packed``: None (default) packs padded batches into their real tokens (varlen attention) on CUDA always, and on
    the CPU when at least 1/16 of the tokens are padding; True/False force the packed / padded-mask path. Under
    torch.compile, None means the padded-mask path (True cannot be compiled: the packed size is data dependent).

    ``cuda_graph``: None (default) replays CUDA graphs of the whole forward for small CUDA batches (at most
    ``graphs.GRAPH_MAX_TOKENS`` tokens after padding to a length bucket, see engine.graphs), True for any CUDA batch, False
    never; ``model(..., cuda_graph=...)`` chooses for one call. Graphs are captured per (batch size, length bucket)
    on first use; they hold the parameters' addresses, so after replacing parameters (``.to``, ``.half``) the
    graphs are rebuilt (keyed by the word embedding's storage, device and dtype).
    """

    def __init__(self, cfg: ModelConfig, *, with_pooler: bool | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.packed: bool | None = None
        self.cuda_graph: bool | None = None
        C = cfg.hidden_size
        width = cfg.embedding_size if cfg.family == "albert" else C
        self.embeddings = Embeddings(cfg, width)
        self.emb_proj = nn.Linear(width, C) if cfg.family == "albert" else None

        def layer() -> blocks.EncoderLayer:
            return blocks.EncoderLayer(C, cfg.num_heads, cfg.intermediate_size, gelu=cfg.gelu,
                                       eps=cfg.layer_norm_eps, dropout=cfg.hidden_dropout,
                                       attention_dropout=cfg.attention_dropout)

        if cfg.family == "albert":
            self.layers = None
            self.groups = nn.ModuleList(
                nn.ModuleList(layer() for _ in range(cfg.inner_group_num)) for _ in range(cfg.num_hidden_groups)
            )
        else:
            self.groups = None
            self.layers = nn.ModuleList(layer() for _ in range(cfg.num_layers))
        head = cfg.head
        if with_pooler is None:
            with_pooler = head in ("base", "nsp", "pretraining") or (head == "seq_cls" and cfg.family != "roberta")
        self.pooler = nn.Linear(C, C) if with_pooler else None
        self.mlm = None
        if head in ("mlm", "pretraining"):
            self.mlm = MLMHead(cfg, width, gelu="none" if cfg.family == "roberta" else cfg.gelu)
        self.nsp = nn.Linear(C, 2) if head in ("nsp", "pretraining") else None
        self.qa = nn.Linear(C, 2) if head == "qa" else None
        self.classifier: nn.Module | None = None
        if head == "seq_cls":
            self.classifier = RobertaClassifier(cfg) if cfg.family == "roberta" else nn.Linear(C, cfg.num_labels)

    def generate(self, *args, **kwargs):
        raise TypeError(f"generate needs a GPT-2 (causal LM) model; this is {self.config.architecture}")

    def schedule(self) -> list[blocks.EncoderLayer]:
        """The layers in the order they run (ALBERT repeats its groups, exactly as HF runs them)."""
        cfg = self.config
        if self.layers is not None:
            return list(self.layers)
        # Layer i runs group int(i / (layers / groups)), in transformers' float arithmetic (any layer and group
        # counts: with 5 layers in 2 groups, layers 0-2 run group 0 and layers 3-4 group 1).
        span = cfg.num_layers / cfg.num_hidden_groups
        return [lyr for i in range(cfg.num_layers) for lyr in self.groups[int(i / span)]]

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) positions: 0.. for BERT/ALBERT; RoBERTa counts real tokens from pad_token_id + 1."""
        if self.config.family == "roberta":
            pad_id = self.config.pad_token_id
            real = input_ids.ne(pad_id).long()
            return torch.cumsum(real, dim=1) * real + pad_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, *, packed: bool | None = None) -> torch.Tensor:
        """Checked ids (B, N) -> last_hidden_state (B, N, C). ``packed`` overrides ``self.packed`` for this call."""
        x = self.embeddings(input_ids, self.position_ids(input_ids), token_type_ids)
        if self.emb_proj is not None:
            x = self.emb_proj(x)
        B, N, _ = x.shape
        has_padding = attention_mask is not None
        if torch.compiler.is_compiling():  # the packed layout's size depends on the mask's values
            blocks.refuse_compiled_packing(self.packed)
            packed = False
        elif not blocks.packable(self, self.config.attention_dropout):
            packed = False  # attention dropout runs on the padded-mask path
        elif packed is None:
            packed = self.packed if self.packed is not None else has_padding and blocks.pack_by_default(attention_mask)
        if has_padding and packed:
            x, layout = blocks.unpad(x, attention_mask)
        else:
            mask = blocks.padding_mask(attention_mask, x.dtype, causal=False) if has_padding else None
            layout = blocks.TokenLayout(mask=mask)
        for lyr in self.schedule():
            x = lyr(x, layout)
        return blocks.pad(x, layout, B, N) if layout.packed else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> tanh(dense(first token)) (B, C)."""
        if self.pooler is None:
            raise ValueError("this checkpoint has no pooler weights, so there is no pooled output")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, return_pooled: bool = False,
                cuda_graph: bool | None = None):
        """input_ids (B, N) -> the main output of ``config.architecture`` (see the module docstring).
        cuda_graph: None follows ``self.cuda_graph``; True / False force or skip CUDA graphs for this call."""
        cfg = self.config
        input_ids, attention_mask, token_type_ids = blocks.check_inputs(
            input_ids, attention_mask, token_type_ids, vocab_size=cfg.vocab_size, max_len=cfg.max_seq_len,
            type_vocab_size=cfg.type_vocab_size, device=self.embeddings.word.weight.device)
        if graphs.use_graph(self, input_ids, cuda_graph):
            return graphs.graphs_of(self).run(input_ids, attention_mask, token_type_ids, return_pooled=return_pooled)
        return self.head(self.encode(input_ids, attention_mask, token_type_ids), return_pooled=return_pooled)

    # ---- what engine.graphs needs: the whole forward, on the padded-mask path ----
    def graph_weight(self) -> torch.Tensor:
        return self.embeddings.word.weight

    def graph_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: torch.Tensor | None, return_pooled: bool) -> tuple:
        out = self.head(self.encode(input_ids, attention_mask, token_type_ids, packed=False),
                        return_pooled=return_pooled)
        return out if isinstance(out, tuple) else (out,)

    def graph_outputs(self, return_pooled: bool) -> tuple[bool, ...]:
        return _SEQ_OUTPUTS[self.config.head][int(return_pooled)]

    def head(self, hidden: torch.Tensor, *, return_pooled: bool = False):
        """last_hidden_state (B, N, C) -> the main output of ``config.architecture``."""
        cfg = self.config
        head = cfg.head
        if head == "base":
            return (hidden, self.pool(hidden)) if return_pooled else hidden
        if head == "mlm":
            return self.mlm(hidden, self.embeddings.word.weight)
        if head == "seq_cls":
            if cfg.family == "roberta":
                return self.classifier(hidden)
            return self.classifier(blocks.dropout(self.pool(hidden), cfg.classifier_dropout, self.training))
        if head == "qa":
            start, end = self.qa(hidden).unbind(-1)
            return start.contiguous(), end.contiguous()
        if head == "nsp":
            return self.nsp(self.pool(hidden))
        return self.mlm(hidden, self.embeddings.word.weight), self.nsp(self.pool(hidden))  # pretraining


# ---- Hugging Face names -> engine names --------------------------------------------------------------------
_PREFIXES = ("bert.", "roberta.", "albert.")
_LAYER_BERT = r"encoder\.layer\.(\d+)\."
_LAYER_ALBERT = r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\."
_BERT_LAYER_PARTS = {
    "attention.self.query": "attn.qkv#0", "attention.self.key": "attn.qkv#1", "attention.self.value": "attn.qkv#2",
    "attention.output.dense": "attn.out", "attention.output.LayerNorm": "ln_attn",
    "intermediate.dense": "mlp.fc", "output.dense": "mlp.proj", "output.LayerNorm": "ln_mlp",
}
_ALBERT_LAYER_PARTS = {
    "attention.query": "attn.qkv#0", "attention.key": "attn.qkv#1", "attention.value": "attn.qkv#2",
    "attention.dense": "attn.out", "attention.LayerNorm": "ln_attn",
    "ffn": "mlp.fc", "ffn_output": "mlp.proj", "full_layer_layer_norm": "ln_mlp",
}
_COMMON = {
    "embeddings.word_embeddings": "embeddings.word", "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type", "embeddings.LayerNorm": "embeddings.ln",
    "encoder.embedding_hidden_mapping_in": "emb_proj", "pooler.dense": "pooler", "pooler": "pooler",
    "qa_outputs": "qa", "cls.seq_relationship": "nsp",
}
_HEADS = {
    "bert": {"cls.predictions.transform.dense": "mlm.dense", "cls.predictions.transform.LayerNorm": "mlm.ln",
             "cls.predictions": "mlm", "cls.predictions.decoder": "mlm.decoder@", "classifier": "classifier"},
    "albert": {"predictions.dense": "mlm.dense", "predictions.LayerNorm": "mlm.ln", "predictions": "mlm",
               "predictions.decoder": "mlm.decoder@", "classifier": "classifier",
               "sop_classifier.classifier": "sop"},
    "roberta": {"lm_head.dense": "mlm.dense", "lm_head.layer_norm": "mlm.ln", "lm_head": "mlm",
                "lm_head.decoder": "mlm.decoder@", "classifier.dense": "classifier.dense",
                "classifier.out_proj": "classifier.out_proj"},
}
_BUFFERS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")


def hf_name(cfg: ModelConfig, name: str) -> tuple[str, int] | None:
    """One HF tensor name -> (engine name, part) where part is 0/1/2 for q/k/v pieces of a fused qkv, -1 for
    a whole tensor; "" for buffers engine recomputes; None when the name means nothing to this family.
    """
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
            break
    if _BUFFERS.search(name):
        return "", -1
    stem, _, leaf = name.rpartition(".")
    leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    target = None
    if cfg.family == "albert":
        m = re.fullmatch(_LAYER_ALBERT + r"(.+)", stem)
        if m and m.group(3) in _ALBERT_LAYER_PARTS:
            target = f"groups.{m.group(1)}.{m.group(2)}.{_ALBERT_LAYER_PARTS[m.group(3)]}"
    else:
        m = re.fullmatch(_LAYER_BERT + r"(.+)", stem)
        if m and m.group(2) in _BERT_LAYER_PARTS:
            target = f"layers.{m.group(1)}.{_BERT_LAYER_PARTS[m.group(2)]}"
    if target is None:
        target = _COMMON.get(stem) or _HEADS[cfg.family].get(stem)
        if target is None:
            return None
        if target == "mlm.decoder@":  # HF runs the decoder's own bias; its weight is the (untied) decoder
            return ("mlm.bias", -1) if leaf == "bias" else ("mlm.decoder", -1) if leaf == "weight" else None
        if target == "mlm":  # the head's bias: the same tensor as decoder.bias when tied (often saved alone)
            return ("mlm.bias@", -1) if leaf == "bias" else None
    part = -1
    if "#" in target:
        target, idx = target.split("#")
        part = int(idx)
    return f"{target}.{leaf}", part
