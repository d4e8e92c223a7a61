"""Sentence embeddings with sentence-transformers' semantics: the checkpoint's own max length, pooling and norm.

    emb = Embedder.from_pretrained(path)               # reads modules.json & co. when the folder has them
    vecs = emb.encode(["first sentence", "second"])    # (2, dim) float32, in input order

engine/embed_spec.py reads a folder's sentence-transformers files into an ``EmbeddingSpec`` (max length, lower
casing, prompt, pooling modes, Dense modules, normalisation); this module pools hidden states, applies the Dense
modules and runs the batches. Any base encoder engine loads works: the BERT family and T5 encoders
(T5EncoderModel; sentence-T5 / GTR folders: T5 encoder -> mean pooling -> Dense -> Normalize).

Texts run in token-budget batches (``token_batches``): sorted by length, each batch filled up to a budget of
padded tokens, so there is almost no padding; the model packs what is left by its own rule (BERT family on CUDA,
BERT and T5 on the CPU: varlen attention over the real tokens).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from engine.embed_spec import (DENSE_ACTIVATIONS, POOLING_MODES, POOLINGS, DenseSpec,  # noqa: F401
                               EmbeddingConfigError, EmbeddingSpec, embedding_spec, positive_int,
                               read_sentence_transformers)
from engine.tokenizer import Tokenizer

DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}
DEFAULT_WINDOW = 16384  # texts sorted by length together (encode); the corpus job's shard size by default
K, V = TypeVar("K"), TypeVar("V")
_ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu,
                "sigmoid": torch.sigmoid, "silu": F.silu}  # DENSE_ACTIVATIONS' values, as torch.nn's defaults


def check_texts(texts: object) -> Sequence[str]:
    """``texts`` if it is a list (any Sequence but a str) of str, else a TypeError naming the first bad item."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings; got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str; got {type(t).__name__}")
    return texts


def base_config(model: object):
    """``model.config`` if ``model`` is an engine base encoder (its output: hidden states), else a ValueError."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "head", None) != "base":
        raise ValueError("embeddings need a base model (BertModel, RobertaModel, AlbertModel, T5EncoderModel, ...) "
                         f"that returns hidden states; got {getattr(cfg, 'architecture', type(model).__name__)}")
    return cfg


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


def load_dense(spec: DenseSpec, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Dense module's weights -> (weight (out, in), bias (out,) or None), float32 on ``device``; the tensors
    must be exactly linear.weight (+ linear.bias) with the config's shapes (else EmbeddingConfigError)."""
    from engine.checkpoint import TensorSource

    try:
        src = TensorSource(spec.path, device=torch.device("cpu"))
    except (FileNotFoundError, ValueError) as exc:
        raise EmbeddingConfigError(f"Dense module {spec.path}: {exc}") from None
    want = {"linear.weight": (spec.out_features, spec.in_features)}
    if spec.bias:
        want["linear.bias"] = (spec.out_features,)
    if set(src.names()) != set(want):
        raise EmbeddingConfigError(f"Dense module {spec.path} holds tensors {sorted(src.names())}; its config.json "
                                   f"(bias {str(spec.bias).lower()}) means exactly {sorted(want)}")
    out = []
    for name, shape in want.items():
        t = src.get(name) if src.shape(name) == shape else None  # read only what has the right shape
        if t is None or not t.dtype.is_floating_point:
            raise EmbeddingConfigError(f"Dense module {spec.path}: {name} is "
                                       f"{src.dtype(name) if t is None else t.dtype} {src.shape(name)}; its "
                                       f"config.json means a float tensor of shape {shape}")
        out.append(t.to(device=device, dtype=torch.float32))
    return out[0], (out[1] if spec.bias else None)


def apply_dense(vecs: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor | None, str]]) -> torch.Tensor:
    """(B, in) float32 -> each layer's activation(vecs @ weight.T + bias) in turn -> (B, out of the last)."""
    for weight, bias, activation in layers:
        vecs = _ACTIVATIONS[activation](F.linear(vecs, weight, bias))
    return vecs


# ---- batching -----------------------------------------------------------------------------------------------
def token_batches(lengths: Sequence[int] | np.ndarray, *, budget: int) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest first, each at most ``budget`` padded tokens.

    Items are sorted by length (descending, stable); a batch grows while rows x its longest item <= budget
    (one item always fits, whatever its length). Returns int64 index arrays covering every item once.
    """
    positive_int("budget", budget)
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // max(int(lens[order[start]]), 1))  # the first item is the batch's longest
        batches.append(order[start:start + rows])
        start += rows
    return batches


def prefetched(keys: Sequence[K], load: Callable[[K], V]) -> Iterator[tuple[K, V]]:
    """(key, load(key)) for each key in order; the next key's ``load`` runs in a background thread meanwhile
    (tokenizers release the GIL, so reading and tokenizing the next window overlaps this one's model calls)."""
    if not keys:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        nxt = executor.submit(load, keys[0])
        for i, key in enumerate(keys):
            value = nxt.result()
            if i + 1 < len(keys):
                nxt = executor.submit(load, keys[i + 1])
            yield key, value


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

    ``prepare`` (tokenize + batch: host work) and ``run`` (model calls) are the two halves of ``encode``; the
    corpus job runs them apart, the next shard's ``prepare`` in a background thread during this one's ``run``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, spec: EmbeddingSpec, *,
                 path: str | os.PathLike | None = None) -> None:
        cfg = base_config(model)
        if "pooler" in spec.pooling and getattr(model, "pooler", None) is None:
            raise ValueError(f"pooling 'pooler' needs pooler weights, which this {cfg.architecture} checkpoint "
                             "does not have")
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.path = None if path is None else Path(path)
        self.dim = cfg.hidden_size * len(spec.pooling)
        self.dense: list[tuple[torch.Tensor, torch.Tensor | None, str]] = []
        for d in spec.dense:  # sentence-transformers' Dense modules, in float32 like the pooled vectors
            if d.in_features != self.dim:
                raise EmbeddingConfigError(
                    f"{Path(d.path) / 'config.json'}: in_features is {d.in_features}, but the vectors reaching it "
                    f"have {self.dim} columns ({'+'.join(spec.pooling)} pooling of hidden size {cfg.hidden_size}"
                    f"{', then the Dense modules before it' if self.dense else ''})")
            self.dense.append((*load_dense(d, device=self.device), d.activation))
            self.dim = d.out_features
        specials = tokenizer.tok.num_special_tokens_to_add(False)
        if spec.max_length is not None and spec.max_length > cfg.max_seq_len:
            raise ValueError(f"max_length {spec.max_length} exceeds this model's {cfg.max_seq_len} positions")
        if spec.max_length is not None and spec.max_length <= specials:
            raise ValueError(f"max_length must leave room for text beside the {specials} special tokens; "
                             f"got {spec.max_length}")
        # a private copy of the tokenizer with truncation on (on the tokenizer's truncation_side, as
        # sentence-transformers truncates through transformers): the caller's tokenizer is never mutated
        self._tok = type(tokenizer.tok).from_str(tokenizer.tok.to_str())
        self._tok.no_padding()
        if spec.max_length is not None:
            self._tok.enable_truncation(spec.max_length, direction=tokenizer.truncation_side)
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

    def preprocess(self, text: str) -> str:
        """The string the tokenizer sees, as sentence-transformers builds it: prompt + text, stripped, lowered."""
        s = (self.spec.prompt + text).strip()
        return s.lower() if self.spec.lower_case else s

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Texts -> token id lists (truncated to spec.max_length) and a bool array: was each one truncated."""
        check_texts(texts)
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encs = encode([self.preprocess(t) for t in texts])
        return [e.ids for e in encs], np.fromiter((bool(e.overflowing) for e in encs), dtype=bool,
                                                  count=len(encs))

    def batch(self, ids: Sequence[Sequence[int]], truncated: np.ndarray | None = None, *,
              batch_tokens: int | None = None) -> "Window":
        """Token id lists -> a Window of padded batches (CPU tensors, pinned for a CUDA model): all the host-side
        work of a model call, so it can run in a background thread. batch_tokens: padded tokens per model call
        (default: DEFAULT_BATCH_TOKENS for the model's device)."""
        budget = self.default_batch_tokens() if batch_tokens is None else positive_int("batch_tokens", batch_tokens)
        pin = self.device.type == "cuda"
        batches = []
        for idx in token_batches([len(s) for s in ids], budget=budget):
            input_ids, mask = pad_batch([ids[i] for i in idx], self.tokenizer.pad_token_id)
            index = torch.from_numpy(idx)
            if pin:
                input_ids, mask, index = input_ids.pin_memory(), mask.pin_memory(), index.pin_memory()
            batches.append(Batch(index, input_ids, mask, int(sum(len(ids[i]) for i in idx))))
        if truncated is None:
            truncated = np.zeros(len(ids), dtype=bool)
        return Window(len(ids), batches, truncated, sum(b.tokens for b in batches))

    def prepare(self, texts: Sequence[str], *, batch_tokens: int | None = None) -> "Window":
        """Texts -> a Window ready to ``run`` (tokenize + batch)."""
        ids, truncated = self.tokenize(texts)
        return self.batch(ids, truncated, batch_tokens=batch_tokens)

    @torch.inference_mode()
    def run(self, window: "Window", *, on_batch: Callable[[int, int], None] | None = None,
            cuda_graph: bool | None = None) -> torch.Tensor:
        """A Window's batches through the model -> (window.size, dim) float32 on the CPU, in input order.

        on_batch(items, tokens) is called after each batch (progress). cuda_graph: the model calls' choice (None:
        the model's own; the corpus job passes False: its batch shapes rarely repeat, so graphs would only pile
        up, and eager BERT-family batches run packed)."""
        dev = self.device
        out = torch.empty(window.size, self.dim, dtype=torch.float32, device=dev)
        want_pooled = "pooler" in self.spec.pooling  # only the BERT family has a pooler (checked in __init__)
        extra = {"return_pooled": True} if want_pooled else {}
        if cuda_graph is not None and hasattr(self.model, "graph_forward"):  # models that take part in engine.graphs
            extra["cuda_graph"] = cuda_graph
        for b in window.batches:
            mask = b.attention_mask.to(dev, non_blocking=True)
            res = self.model(b.input_ids.to(dev, non_blocking=True), attention_mask=mask, **extra)
            hidden, pooled = res if want_pooled else (res, None)
            vecs = apply_dense(pool(hidden, mask, self.spec.pooling, pooled=pooled), self.dense)
            if self.spec.normalize:
                vecs = F.normalize(vecs, p=2, dim=-1)
            out[b.index.to(dev, non_blocking=True)] = vecs
            if on_batch is not None:
                on_batch(len(b.index), b.tokens)
        return out.cpu()

    def embed_tokens(self, ids: Sequence[Sequence[int]], *, batch_tokens: int | None = None,
                     on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Token id lists -> (len(ids), dim) float32 on the CPU, in input order (``batch`` then ``run``)."""
        return self.run(self.batch(ids, batch_tokens=batch_tokens), on_batch=on_batch)

    def encode(self, texts: Sequence[str], *, batch_tokens: int | None = None,
               window: int = DEFAULT_WINDOW) -> torch.Tensor:
        """Texts -> (len(texts), dim) float32 embeddings on the CPU, in input order.

        Texts are sorted by length within windows of ``window`` texts; the next window is tokenized and batched
        in a background thread while this one runs. An empty list gives a (0, dim) tensor, as sentence-transformers.
        """
        check_texts(texts)
        positive_int("window", window)
        if batch_tokens is not None:
            positive_int("batch_tokens", batch_tokens)
        out = torch.empty(len(texts), self.dim)
        starts = list(range(0, len(texts), window))
        load = lambda s: self.prepare(texts[s:s + window], batch_tokens=batch_tokens)  # noqa: E731
        for start, win in prefetched(starts, load):
            out[start:start + win.size] = self.run(win)
        return out


@dataclasses.dataclass
class Batch:
    """One model call: rows ``index`` (B,) of its window, input_ids and attention_mask (B, N), real tokens."""

    index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: int


@dataclasses.dataclass
class Window:
    """Texts tokenized and batched: ``size`` rows, their batches, which were truncated, real tokens in all."""

    size: int
    batches: list[Batch]
    truncated: np.ndarray
    tokens: int


@torch.inference_mode()
def encode(model: torch.nn.Module, tokenizer: Tokenizer, texts: list[str], *, normalize: bool = True,
           batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
    """Texts -> (len(texts), C) float32 mean-pooled embeddings on the model's device (a *Model required).

    The plain form, without a folder's sentence-transformers settings (``Embedder`` reads those). texts: a list
    of str (an empty list gives (0, C)); batch_size: texts per model call; max_length: None (the tokenizer's) or
    the tokens per text, longer ones truncated.
    """
    cfg = base_config(model)
    check_texts(texts)
    positive_int("batch_size", batch_size)
    if max_length is not None:
        positive_int("max_length", max_length)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool; got {type(normalize).__name__}")
    if not texts:
        return torch.empty(0, cfg.hidden_size, device=next(model.parameters()).device)
    out = []
    for i in range(0, len(texts), batch_size):
        # right padding whatever the tokenizer's padding_side: left padding would move a short text's tokens to
        # other absolute positions (BERT) than the text alone, and so change its embedding with its batch
        batch = tokenizer(list(texts[i:i + batch_size]), max_length=max_length, padding_side="right")
        hidden = model(**batch)
        out.append(mean_pool(hidden, batch["attention_mask"], normalize=normalize))
    return torch.cat(out)
