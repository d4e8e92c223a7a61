"""Thin tokenizer loading through the `tokenizers` library: tokenizer.json, or a WordPiece vocab.txt.

    tok = load_tokenizer("path/to/model")
    batch = tok(["a sentence", "another one"], max_length=128)   # dict of (B, N) int64 tensors
    model(**batch)
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer

from engine.wordpiece import json_object, wordpiece_tokenizer

_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>")
_SIDES = ("right", "left")


def _side(name: str, value: object, where: str = "") -> str:
    """A padding_side / truncation_side value checked: "right" or "left" (as transformers, which refuses others)."""
    if value not in _SIDES:
        raise ValueError(f"{where}{name} must be 'right' or 'left'; got {value!r}")
    return value  # type: ignore[return-value]


def _flag(cfg: dict, name: str, default: bool | None, file: Path) -> bool | None:
    """tokenizer_config.json's boolean ``name`` (``default`` when absent; null only where the default is null)."""
    value = cfg.get(name, default)
    if isinstance(value, bool) or (value is None and default is None):
        return value
    raise ValueError(f"{file}: {name} must be true or false{' or null' if default is None else ''}; got {value!r}")


class Tokenizer:
    """Wraps a ``tokenizers.Tokenizer``: ``encode``/``decode`` single texts, ``__call__`` pads a batch.

    The pad id: ``pad_token``'s (tokenizer_config.json's), else the padding section's, else the first of [PAD] /
    <pad> / <|endoftext|> in the vocabulary, else 0. The file's own padding/truncation settings are switched off;
    ``__call__`` pads to the longest text on the side ``padding_side`` names and truncates to ``max_length`` when
    given, on the side ``truncation_side`` names ("right" keeps the first tokens, "left" the last). None: the
    direction of tokenizer.json's padding / truncation section, else "right", as transformers.
    """

    def __init__(self, tok: _HFTokenizer, *, model_max_length: int | None = None,
                 truncation_side: str | None = None, padding_side: str | None = None,
                 pad_token: str | None = None) -> None:
        self.tok = tok
        padding = tok.padding
        if truncation_side is None:
            truncation_side = tok.truncation["direction"] if tok.truncation is not None else "right"
        self.truncation_side: str = _side("truncation_side", truncation_side)
        if padding_side is None:
            padding_side = padding["direction"] if padding is not None else "right"
        self.padding_side: str = _side("padding_side", padding_side)
        self.pad_token_id: int = 0
        if pad_token is not None:  # as transformers: the configured pad token wins over the padding section
            pad_id = tok.token_to_id(pad_token)
            if pad_id is None:
                raise ValueError(f"pad_token {pad_token!r} is not in the tokenizer's vocabulary")
            self.pad_token_id = pad_id
        elif padding is not None:
            self.pad_token_id = int(padding["pad_id"])
        else:
            for t in _PAD_TOKENS:
                if tok.token_to_id(t) is not None:
                    self.pad_token_id = tok.token_to_id(t)
                    break
        self.model_max_length = model_max_length
        tok.no_padding()
        tok.no_truncation()
        # __call__ sets truncation on the shared ``tokenizers`` object for one batch: held while it is set, and by
        # encode, so no other thread's call is truncated by it (or has its own truncation switched off)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pickle / deepcopy (e.g. DataLoader workers): the lock is not state
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        with self._lock:
            return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | list[str], text_pairs: list[str] | None = None, *,
                 max_length: int | None = None, padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Texts -> input_ids, attention_mask (B, N) int64; with text_pairs also token_type_ids (B, N).

        padding_side: "right" / "left" for this call (None: the tokenizer's ``padding_side``). With "left", a model
        with absolute positions (BERT, GPT-2) sees a short row's tokens at other positions than alone; callers
        that want each row's own result pass "right"."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a non-empty list of str")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"text_pairs must have one entry per text ({len(texts)}); got {len(text_pairs)}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None; got {max_length!r}")
        side = self.padding_side if padding_side is None else _side("padding_side", padding_side)
        max_length = max_length or self.model_max_length
        items = list(zip(texts, text_pairs)) if text_pairs is not None else texts
        with self._lock:
            if max_length is not None:
                self.tok.enable_truncation(max_length, direction=self.truncation_side)
            try:
                encs = self.tok.encode_batch(items)
            finally:
                self.tok.no_truncation()
        N = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), N), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(encs), N, dtype=torch.long)
        types = torch.zeros(len(encs), N, dtype=torch.long)
        for b, e in enumerate(encs):
            n = len(e.ids)
            row = slice(0, n) if side == "right" else slice(N - n, N)
            ids[b, row] = torch.tensor(e.ids, dtype=torch.long)
            mask[b, row] = 1
            types[b, row] = torch.tensor(e.type_ids, dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if text_pairs is not None:  # single segments: all zeros, which every model already assumes
            out["token_type_ids"] = types
        return out


def tokenizer_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` holds a tokenizer engine reads (tokenizer.json or vocab.txt), else what is wrong and how
    to fix it (a SentencePiece-only folder, such as many T5 checkpoints, gets the command that writes
    tokenizer.json)."""
    p = Path(path)
    if (p / "tokenizer.json").is_file() or (p / "vocab.txt").is_file():
        return None
    if (p / "spiece.model").is_file():
        return (f"{str(p)!r} has only a SentencePiece spiece.model; engine reads tokenizer.json (the tokenizers "
                "library's format). Write it once next to spiece.model with transformers (which needs the "
                "sentencepiece and protobuf packages for this): python -c \"import sys; from transformers import "
                "AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[1])\" "
                f"{str(p)!r}")
    return f"no tokenizer.json or vocab.txt in {str(p)!r}"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load ``path/tokenizer.json``, else a WordPiece ``path/vocab.txt`` (normalized per tokenizer_config.json's
    do_lower_case, strip_accents and tokenize_chinese_chars, as transformers' BertTokenizer)."""
    p = Path(path)
    cfg: dict = {}
    file = cfg_file = p / "tokenizer_config.json"
    if file.is_file():
        cfg = json_object(file)
    # transformers: tokenizer_config.json's sides win over the direction of tokenizer.json's sections
    sides = {name: _side(name, cfg[name], f"{file}: ") for name in ("truncation_side", "padding_side") if name in cfg}
    pad_token = cfg.get("pad_token")  # a str, or an AddedToken as a dict with its "content"; null: none set
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
        if not isinstance(pad_token, str):
            raise ValueError(f"{file}: pad_token as an object must have a string \"content\"; got {cfg['pad_token']!r}")
    elif pad_token is not None and not isinstance(pad_token, str):
        raise ValueError(f"{file}: pad_token must be a string (or an object with a string \"content\"); "
                         f"got {pad_token!r}")
    # model_max_length: a number in [1, 1e9) is a limit; null, a bool (transformers truncates nothing at true or
    # false), 0 or a huge one such as save_pretrained's 1e30 is none; anything else is refused (transformers fails)
    max_len = cfg.get("model_max_length")
    if max_len is not None and not isinstance(max_len, (int, float)):
        raise ValueError(f"{file}: model_max_length must be a number (or null); got {max_len!r}")
    max_len = int(max_len) if not isinstance(max_len, bool) and max_len is not None and 1 <= max_len < 1e9 else None
    for name in ("tokenizer.json", "vocab.txt"):
        file = p / name
        if not file.is_file():
            continue
        if name == "vocab.txt":  # normalized as transformers' BertTokenizer (strip_accents None: as lowercase)
            bert = {"lowercase": _flag(cfg, "do_lower_case", True, cfg_file),
                    "strip_accents": _flag(cfg, "strip_accents", None, cfg_file),
                    "handle_chinese_chars": _flag(cfg, "tokenize_chinese_chars", True, cfg_file)}
        try:
            if name == "tokenizer.json":
                tok = _HFTokenizer.from_file(str(file))
            else:
                tok, pad_token = wordpiece_tokenizer(p, cfg, **bert)  # its pad token, always in its vocabulary
        except ValueError as exc:
            if name == "tokenizer.json":  # the library's: say which file
                raise ValueError(f"cannot read {file}: {exc}") from None
            raise  # wordpiece_tokenizer's own, naming the file and the entry
        except Exception as exc:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise ValueError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
        if pad_token is not None and tok.token_to_id(pad_token) is None:
            raise ValueError(f"{cfg_file}: pad_token {pad_token!r} is not in the vocabulary of {file} (transformers "
                             "would add it as a new token, an id the model's embedding does not have)")
        return Tokenizer(tok, model_max_length=max_len, pad_token=pad_token, **sides)
    raise FileNotFoundError(tokenizer_problem(p))
