"""Sentence embeddings: mean pooling over real tokens (as sentence-transformers models expect), optional L2 norm.

    model = engine.from_pretrained(path); tok = load_tokenizer(path)
    vecs = encode(model, tok, ["first sentence", "second"], normalize=True)     # (2, C) float32
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.tokenizer import Tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              normalize: bool = False) -> torch.Tensor:
    """hidden (B, N, C), attention_mask (B, N) of 0/1 -> (B, C): the mean over real tokens, in float32 math.

    normalize: divide each row by its L2 norm (cosine similarity becomes a dot product).
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must be a (batch, seq_len, hidden) tensor; got {getattr(hidden, 'shape', hidden)}")
    B, N, _ = hidden.shape
    h = hidden.float()
    if attention_mask is None:
        pooled = h.mean(1)
    else:
        if tuple(attention_mask.shape) != (B, N):
            raise ValueError(f"attention_mask must have shape {(B, N)}; got {tuple(attention_mask.shape)}")
        m = attention_mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)  # (B, N, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


@torch.inference_mode()
def encode(model: torch.nn.Module, tokenizer: Tokenizer, texts: list[str], *, normalize: bool = True,
           batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Texts -> (len(texts), C) float32 embeddings on the model's device (a *Model architecture required)."""
    if getattr(getattr(model, "config", None), "head", None) != "base":
        raise ValueError("encode needs a base model (BertModel, RobertaModel, ...) that returns hidden states")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], max_length=max_length)
        hidden = model(**batch)
        out.append(mean_pool(hidden, batch["attention_mask"], normalize=normalize))
    return torch.cat(out)
