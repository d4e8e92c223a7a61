"""Model code: shared blocks (blocks.py), GPT-2 (gpt2.py), BERT / ALBERT / RoBERTa (bert.py), T5 / mT5 / UMT5 (t5.py).

``build_model(config)`` makes the nn.Module for a ModelConfig; ``hf_rename`` maps one Hugging Face tensor
name to engine's (engine/checkpoint.py uses both).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from engine.config import T5_FAMILIES, ModelConfig
from engine.models import bert, gpt2, t5
from engine.models.bert import EncoderModel
from engine.models.gpt2 import GPT2
from engine.models.t5 import T5

__all__ = ["EncoderModel", "GPT2", "Rename", "T5", "build_model", "hf_rename"]


def build_model(cfg: ModelConfig, *, with_pooler: bool | None = None, with_lm_head: bool | None = None) -> nn.Module:
    """The module for ``cfg`` (parameters uninitialised: build under ``torch.device('meta')`` and load).

    with_pooler: for the *Model architectures of the BERT family, whether to hold pooler weights.
    with_lm_head: for the T5 family's LM, whether the head has its own weights (else the shared embedding).
    """
    if cfg.family == "gpt2":
        return GPT2(cfg)
    if cfg.family in T5_FAMILIES:
        return T5(cfg, with_lm_head=with_lm_head)
    return EncoderModel(cfg, with_pooler=with_pooler)


@dataclass(frozen=True)
class Rename:
    """Where one HF tensor goes: engine ``name`` ("" = a buffer engine recomputes), ``part`` of a tensor stacked
    from ``parts`` sources along dim 0 (a fused qkv: 0/1/2 of 3; -1 for the whole tensor), ``transpose`` (GPT-2
    Conv1D), ``alias`` (used only when the primary source of ``name`` is absent, e.g. BERT's decoder.bias next to
    predictions.bias)."""

    name: str
    part: int = -1
    transpose: bool = False
    alias: bool = False
    parts: int = 3


def hf_rename(cfg: ModelConfig, hf: str) -> Rename | None:
    """Map one HF tensor name for ``cfg``'s family; None when the name means nothing to that family."""
    if cfg.family == "gpt2":
        r = gpt2.hf_name(cfg, hf)
        return None if r is None else Rename(r[0], -1, r[1])
    if cfg.family in T5_FAMILIES:
        r = t5.hf_name(cfg, hf)
        return None if r is None else Rename(r[0], r[1], False, r[3], r[2])
    r = bert.hf_name(cfg, hf)
    if r is None:
        return None
    name, part = r
    alias = "@" in name
    return Rename(name.replace("@", ""), part, False, alias)
