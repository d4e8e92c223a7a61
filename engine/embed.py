"""Sentence embeddings with sentence-transformers' semantics: the checkpoint's own max length, pooling and norm.

    emb = Embedder.from_pretrained(path)               # reads modules.json & co. when the folder has them
    vecs = emb.encode(["first sentence", "second"])    # (2, dim) float32, in input order

A sentence-transformers folder defines its embedding in files next to the weights: ``modules.json`` (the module
chain), ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``), ``1_Pooling/config.json`` (the
pooling modes), a ``Normalize`` module (L2 norm) and ``config_sentence_transformers.json`` (a default prompt).
``embedding_spec`` reads them into an ``EmbeddingSpec``; a chain engine cannot reproduce exactly (a Dense
layer, an unknown pooling mode, ...) is refused with the module's name rather than embedded differently. A
folder without ``modules.json`` gets mean pooling, no normalisation and the tokenizer's / model's max length.

Texts run in token-budget batches (``token_batches``): sorted by length, each batch filled up to a budget of
padded tokens, so there is almost no padding; BERT-family models pack what is left (varlen attention).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.tokenizer import Tokenizer

# sentence-transformers' Pooling modes, in the order it concatenates them when several are on
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# "pooler": the checkpoint's own pooler (tanh(dense(first token))), as transformers' pooler_output
POOLINGS = (*POOLING_MODES, "pooler")
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


class EmbeddingConfigError(ValueError):
    """A sentence-transformers file that engine cannot follow exactly (names the file and the field)."""


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """What turns a text into one vector.

    pooling: modes concatenated in this order (each adds ``hidden_size`` columns); normalize: L2 norm last;
    max_length: tokens per text, special tokens included (longer texts are truncated); lower_case: lower-case
    the text first; prompt: prepended to every text; model_dir: the folder holding the transformer's weights
    (a sentence-transformers Transformer module may live in a sub-folder); source: where this came from.
    """

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_length: int | None = None
    lower_case: bool = False
    prompt: str = ""
    model_dir: str = ""
    source: str = "defaults (no modules.json)"

    def describe(self) -> str:
        norm = ", L2-normalised" if self.normalize else ""
        return f"{'+'.join(self.pooling)} pooling{norm}, max {self.max_length} tokens"


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbeddingConfigError(f"cannot read {what} {str(path)!r}: {exc}") from None


def read_sentence_transformers(path: str | os.PathLike) -> dict | None:
    """The embedding fields a sentence-transformers folder defines, or None when it has no modules.json.

    Returns a dict with the keys of ``EmbeddingSpec`` that the files set (``max_length`` only when
    sentence_bert_config.json gives ``max_seq_length``). Raises EmbeddingConfigError for a module chain other
    than Transformer -> Pooling -> [Normalize], or a pooling setting engine does not implement.
    """
    root = Path(path)
    if not (root / "modules.json").is_file():
        return None
    modules = _read_json(root / "modules.json", "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise EmbeddingConfigError(f"{root / 'modules.json'} must be a list of objects with a 'type' string")
    kinds = []
    for i, m in enumerate(modules):
        kind = m["type"].rsplit(".", 1)[-1]
        if not m["type"].startswith("sentence_transformers.") or kind not in _ST_MODULES:
            raise EmbeddingConfigError(
                f"modules.json module {i} is {m['type']}, which engine does not implement (it runs Transformer "
                "-> Pooling -> optional Normalize); its embeddings would differ from sentence-transformers'")
        kinds.append(kind)
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise EmbeddingConfigError(f"modules.json chains {' -> '.join(kinds)}; engine runs Transformer -> "
                                   "Pooling -> optional Normalize")
    out: dict = {"normalize": kinds[-1] == "Normalize", "model_dir": str(root / modules[0].get("path", "")),
                 "source": f"sentence-transformers ({root / 'modules.json'})"}
    sbert = Path(out["model_dir"]) / "sentence_bert_config.json"
    if sbert.is_file():
        cfg = _read_json(sbert, "sentence_bert_config.json")
        if not isinstance(cfg, dict):
            raise EmbeddingConfigError(f"{sbert} must hold a JSON object")
        msl = cfg.get("max_seq_length")
        if msl is not None:
            if not isinstance(msl, int) or isinstance(msl, bool) or msl < 1:
                raise EmbeddingConfigError(f"{sbert}: max_seq_length must be a positive integer; got {msl!r}")
            out["max_length"] = msl
        out["lower_case"] = bool(cfg.get("do_lower_case", False))
    pool_file = root / modules[1].get("path", "") / "config.json"
    pool = _read_json(pool_file, "pooling config") if pool_file.is_file() else {}
    if not isinstance(pool, dict):
        raise EmbeddingConfigError(f"{pool_file} must hold a JSON object")
    out["pooling"] = _pooling_from_config(pool, pool_file)
    if pool.get("include_prompt", True) is False:
        out["exclude_prompt"] = True
    st_cfg = root / "config_sentence_transformers.json"
    if st_cfg.is_file():
        cfg = _read_json(st_cfg, "config_sentence_transformers.json")
        name = cfg.get("default_prompt_name") if isinstance(cfg, dict) else None
        if name:
            prompts = cfg.get("prompts") or {}
            if not isinstance(prompts, dict) or not isinstance(prompts.get(name), str):
                raise EmbeddingConfigError(f"{st_cfg}: default_prompt_name {name!r} is not among its prompts")
            out["prompt"] = prompts[name]
    return out


def _pooling_from_config(pool: dict, file: Path) -> tuple[str, ...]:
    """sentence-transformers' Pooling config -> the modes in its concatenation order (default: mean)."""
    if "pooling_mode" in pool and pool["pooling_mode"] is not None:  # a string overrides the flags
        mode = str(pool["pooling_mode"]).lower()
        if mode not in POOLING_MODES:
            raise EmbeddingConfigError(f"{file}: pooling_mode {mode!r} is not one of {', '.join(POOLING_MODES)}")
        return (mode,)
    flags = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
             "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
             "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
    unknown = sorted(k for k in pool if k.startswith("pooling_mode_") and k not in flags.values() and pool[k])
    if unknown:
        raise EmbeddingConfigError(f"{file} turns on {', '.join(unknown)}, which engine does not implement")
    defaults = {"mean": True}  # sentence-transformers' Pooling defaults
    modes = tuple(m for m in POOLING_MODES if pool.get(flags[m], defaults.get(m, False)))
    if not modes:
        raise EmbeddingConfigError(f"{file} turns every pooling mode off")
    return modes


def embedding_spec(path: str | os.PathLike, *, max_positions: int, tokenizer_max: int | None,
                   pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                   max_length: int | None = None, prompt: str | None = None) -> EmbeddingSpec:
    """The spec for the folder ``path``: sentence-transformers' files when present, then the caller's overrides.

    max_positions: the model's longest input; tokenizer_max: the tokenizer's model_max_length (or None). As in
    sentence-transformers, the default max length is max_seq_length when given, else the smaller of the two.
    pooling / normalize / max_length / prompt: None keeps the folder's choice.
    """
    st = read_sentence_transformers(path) or {"model_dir": str(Path(path))}
    if pooling is not None:
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        bad = [m for m in modes if m not in POOLINGS]
        if not modes or bad:
            raise ValueError(f"pooling must be one or more of {', '.join(POOLINGS)}; got {pooling!r}")
        st["pooling"] = tuple(m for m in POOLINGS if m in modes)  # sentence-transformers' order
    if normalize is not None:
        st["normalize"] = bool(normalize)
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str; got {type(prompt).__name__}")
        st["prompt"] = prompt
    if st.pop("exclude_prompt", False) and st.get("prompt"):
        raise EmbeddingConfigError(f"{path}: the pooling config leaves the prompt out of the pooling "
                                   "(include_prompt false), which engine does not implement; pass prompt=''")
    if max_length is not None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer; got {max_length!r}")
        st["max_length"] = max_length
    elif "max_length" not in st:
        st["max_length"] = min(max_positions, tokenizer_max or max_positions)
    if st["max_length"] > max_positions:
        raise ValueError(f"max_length {st['max_length']} exceeds this model's {max_positions} positions")
    return EmbeddingSpec(**st)


# ---- pooling ------------------------------------------------------------------------------------------------
def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, modes: Sequence[str], *,
         pooled: torch.Tensor | None = None) -> torch.Tensor:
    """hidden (B, N, C), attention_mask (B, N) of 0/1 (right padding) -> (B, C * len(modes)) float32.

    Modes as sentence-transformers' Pooling computes them, concatenated in the given order: "cls" (first
    token), "max" (over real tokens), "mean", "mean_sqrt_len_tokens" (sum / sqrt(count)), "weightedmean"
    (position weights 1..N), "lasttoken" (last real token); "pooler" takes ``pooled`` (B, C).
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must be a (batch, seq_len, hidden) tensor; got {getattr(hidden, 'shape', hidden)}")
    B, N, _ = hidden.shape
    h = hidden.float()
    if attention_mask is None:
        attention_mask = torch.ones(B, N, dtype=torch.long, device=h.device)
    if tuple(attention_mask.shape) != (B, N):
        raise ValueError(f"attention_mask must have shape {(B, N)}; got {tuple(attention_mask.shape)}")
    m = attention_mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)  # (B, N, 1)
    count = m.sum(1).clamp(min=1e-9)  # (B, 1)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(h[:, 0])
        elif mode == "max":
            out.append(h.masked_fill(m == 0, -1e9).amax(1))
        elif mode == "mean":
            out.append((h * m).sum(1) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append((h * m).sum(1) / count.sqrt())
        elif mode == "weightedmean":
            w = m * torch.arange(1, N + 1, device=h.device, dtype=h.dtype)[:, None]  # (B, N, 1)
            out.append((h * w).sum(1) / w.sum(1).clamp(min=1e-9))
        elif mode == "lasttoken":
            last = (attention_mask.to(h.device).long().sum(1) - 1).clamp(min=0)  # (B,)
            out.append(h[torch.arange(B, device=h.device), last])
        elif mode == "pooler":
            if pooled is None:
                raise ValueError("pooling 'pooler' needs the model's pooled output")
            out.append(pooled.float())
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLINGS)}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              normalize: bool = False) -> torch.Tensor:
    """hidden (B, N, C), attention_mask (B, N) of 0/1 -> (B, C): the mean over real tokens, in float32 math.

    normalize: divide each row by its L2 norm (cosine similarity becomes a dot product).
    """
    pooled = pool(hidden, attention_mask, ("mean",))
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


# ---- batching -----------------------------------------------------------------------------------------------
def token_batches(lengths: Sequence[int] | np.ndarray, *, budget: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest first, each at most ``budget`` padded tokens.

    Items are sorted by length (descending, stable); a batch grows while rows x its longest item <= budget
    (one item always fits, whatever its length). Returns int64 index arrays covering every item once.
    """
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"the token budget must be a positive integer; got {budget!r}")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // max(int(lens[order[start]]), 1))  # the first item is the batch's longest
        batches.append(order[start:start + rows])
        start += rows
    return batches


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> input_ids (B, N) int64 padded with ``pad_id`` on the right, attention_mask (B, N)."""
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum()))
    N = int(lens.max())
    mask = np.arange(N)[None, :] < lens[:, None]  # (B, N)
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = flat  # row-major: each row's tokens in order
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


# ---- the embedder -------------------------------------------------------------------------------------------
class Embedder:
    """A base encoder, its tokenizer and an EmbeddingSpec: texts -> vectors in input order.

    ``tokenize`` and ``embed_tokens`` are the two halves of ``encode``; the corpus job runs them apart (the
    next shard's tokenization overlaps this shard's model calls).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, spec: EmbeddingSpec, *,
                 path: str | os.PathLike | None = None) -> None:
        cfg = getattr(model, "config", None)
        if getattr(cfg, "head", None) != "base":
            raise ValueError("embeddings need a base model (BertModel, RobertaModel, AlbertModel, ...) that "
                             f"returns hidden states; got {getattr(cfg, 'architecture', type(model).__name__)}")
        if "pooler" in spec.pooling and getattr(model, "pooler", None) is None:
            raise ValueError("pooling 'pooler' needs pooler weights, which this checkpoint does not have")
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.path = None if path is None else Path(path)
        self.dim = cfg.hidden_size * len(spec.pooling)
        specials = tokenizer.tok.num_special_tokens_to_add(False)
        if spec.max_length is not None and spec.max_length <= specials:
            raise ValueError(f"max_length must leave room for text beside the {specials} special tokens; "
                             f"got {spec.max_length}")
        # a private copy of the tokenizer with truncation on: the caller's tokenizer is never mutated
        self._tok = type(tokenizer.tok).from_str(tokenizer.tok.to_str())
        self._tok.no_padding()
        if spec.max_length is not None:
            self._tok.enable_truncation(spec.max_length)
        else:
            self._tok.no_truncation()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, pooling: str | Sequence[str] | None = None,
                        normalize: bool | None = None, max_length: int | None = None,
                        prompt: str | None = None) -> "Embedder":
        """Load a model folder (Hugging Face, engine convert, or sentence-transformers) for embeddings.

        pooling / normalize / max_length / prompt: None keeps the folder's sentence-transformers settings."""
        from engine.checkpoint import from_pretrained
        from engine.tokenizer import load_tokenizer

        st = read_sentence_transformers(path)
        model_dir = Path(st["model_dir"]) if st else Path(path)
        return cls.from_model(from_pretrained(model_dir, device=device, dtype=dtype), load_tokenizer(model_dir),
                              path, pooling=pooling, normalize=normalize, max_length=max_length, prompt=prompt)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike, *,
                   pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                   max_length: int | None = None, prompt: str | None = None) -> "Embedder":
        """An Embedder for a loaded model and tokenizer, with the spec of the folder ``path`` (see above)."""
        spec = embedding_spec(path, max_positions=model.config.max_seq_len, tokenizer_max=tokenizer.model_max_length,
                              pooling=pooling, normalize=normalize, max_length=max_length, prompt=prompt)
        return cls(model, tokenizer, spec, path=path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def default_batch_tokens(self) -> int:
        return DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])

    def prepare(self, text: str) -> str:
        """The string the tokenizer sees, as sentence-transformers builds it: prompt + text, stripped, lowered."""
        s = (self.spec.prompt + text).strip()
        return s.lower() if self.spec.lower_case else s

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Texts -> token id lists (truncated to spec.max_length) and a bool array: was each one truncated."""
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encs = encode([self.prepare(t) for t in texts])
        return [e.ids for e in encs], np.fromiter((bool(e.overflowing) for e in encs), dtype=bool,
                                                  count=len(encs))

    @torch.inference_mode()
    def embed_tokens(self, ids: Sequence[Sequence[int]], *, batch_tokens: int | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Token id lists -> (len(ids), dim) float32 on the CPU, in input order.

        batch_tokens: padded tokens per model call (default: DEFAULT_BATCH_TOKENS for the device);
        on_batch(items, tokens) is called after each batch (progress).
        """
        budget = self.default_batch_tokens() if batch_tokens is None else batch_tokens
        dev = self.device
        out = torch.empty(len(ids), self.dim, dtype=torch.float32, device=dev)
        want_pooled = "pooler" in self.spec.pooling
        pad_id = self.tokenizer.pad_token_id
        for idx in token_batches([len(s) for s in ids], budget=budget):
            input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
            input_ids, mask = input_ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
            res = self.model(input_ids, attention_mask=mask, return_pooled=want_pooled)
            hidden, pooled = res if want_pooled else (res, None)
            vecs = pool(hidden, mask, self.spec.pooling, pooled=pooled)
            if self.spec.normalize:
                vecs = F.normalize(vecs, p=2, dim=-1)
            out[torch.from_numpy(idx).to(dev)] = vecs
            if on_batch is not None:
                on_batch(len(idx), int(sum(len(ids[i]) for i in idx)))
        return out.cpu()

    def encode(self, texts: Sequence[str], *, batch_tokens: int | None = None) -> torch.Tensor:
        """Texts -> (len(texts), dim) float32 embeddings on the CPU, in input order."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of strings")
        if not texts:
            return torch.empty(0, self.dim)
        ids, _ = self.tokenize(texts)
        return self.embed_tokens(ids, batch_tokens=batch_tokens)


@torch.inference_mode()
def encode(model: torch.nn.Module, tokenizer: Tokenizer, texts: list[str], *, normalize: bool = True,
           batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Texts -> (len(texts), C) float32 mean-pooled embeddings on the model's device (a *Model required).

    The plain form, without a folder's sentence-transformers settings (``Embedder`` reads those).
    """
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
