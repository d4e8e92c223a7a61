"""A WordPiece tokenizer built from a folder's vocab.txt as transformers' BertTokenizer builds it.

The vocabulary, BERT's normalizer and pre-tokenizer, then the folder's added and special tokens, which stay whole in
any text ("[E1]" is one id, not "[", "e", "##1", "]"):

- tokenizer_config.json's ``added_tokens_decoder`` ({id: {"content", "special", "lstrip", "rstrip", "normalized",
  "single_word"}}), as transformers saves a tokenizer; without it the older files: special_tokens_map.json (the
  named tokens and ``additional_special_tokens``, over tokenizer_config.json's) and added_tokens.json ({token: id},
  normalized unless special);
- the named special tokens (bos / eos / unk / sep / pad / cls / mask: tokenizer_config.json's, else BERT's
  defaults) and the extra ones (``extra_special_tokens`` / ``additional_special_tokens``).

Tokens are added in transformers' order (the added ones by id, then the named and extra special ones not yet added),
so each gets the id transformers gives it: its vocabulary id, else the next free one. The post-processor wraps a
text as ``cls A sep`` and a pair as ``cls A sep B sep``.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

# transformers' SPECIAL_TOKENS_ATTRIBUTES order, with BertTokenizer's defaults
_NAMED = {"bos_token": None, "eos_token": None, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
          "cls_token": "[CLS]", "mask_token": "[MASK]"}
_EXTRA = ("extra_special_tokens", "additional_special_tokens")
_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def json_object(file: Path) -> dict:
    """The JSON object in ``file``; a ValueError naming the file when it is not valid JSON or not an object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object; got {type(data).__name__}")
    return data


def _token(value: object, where: str, *, special: bool | None = None) -> str | AddedToken:
    """A token as a file writes it: a string, or an AddedToken object ({"content", flags...}); ``special`` overrides
    the object's own flag (special_tokens_map.json's tokens are special)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: v for k, v in value.items() if k in _FLAGS}
        bad = {k: v for k, v in flags.items() if not isinstance(v, bool)}
        if bad:
            raise ValueError(f"{where}: an AddedToken's flags must be true or false; got {bad}")
        if special is not None:
            flags["special"] = special
        return AddedToken(value["content"], **flags)
    raise ValueError(f"{where} must be a string or an object with a string \"content\"; got {value!r}")


def _extras(value: object, where: str, *, special: bool | None = None) -> list[str | AddedToken]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of tokens; got {value!r}")
    return [_token(v, f"{where}[{i}]", special=special) for i, v in enumerate(value)]


def _vocab(file: Path) -> dict[str, int]:
    """vocab.txt's token -> line number, read as transformers' load_vocab (a repeated line keeps its last number)."""
    try:
        with open(file, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {file}: {exc}") from None
    return {line.rstrip("\n"): i for i, line in enumerate(lines)}


def wordpiece_tokenizer(folder: Path, cfg: dict, *, lowercase: bool, strip_accents: bool | None,
                        handle_chinese_chars: bool) -> tuple[Tokenizer, str | None]:
    """``folder/vocab.txt`` with the folder's added and special tokens (module docstring), and its pad token (None
    where the files set it to null); ``cfg`` is its parsed tokenizer_config.json ({} when absent)."""
    cfg_file = folder / "tokenizer_config.json"
    named: dict[str, str | AddedToken | None] = {}
    for key, default in _NAMED.items():
        value = cfg.get(key, default)
        named[key] = None if value is None else _token(value, f"{cfg_file}: {key}")
    given = {k for k in _NAMED if cfg.get(k) is not None}  # named in a file, not by BERT's defaults
    extras = next((_extras(cfg[k], f"{cfg_file}: {k}") for k in _EXTRA if cfg.get(k)), [])
    added: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in cfg:
        table = cfg["added_tokens_decoder"]
        if not isinstance(table, dict):
            raise ValueError(f"{cfg_file}: added_tokens_decoder must map ids to tokens; got {table!r}")
        for idx, value in table.items():
            if not (isinstance(idx, str) and idx.isdigit()) or not isinstance(value, dict):
                raise ValueError(f"{cfg_file}: added_tokens_decoder entries must be \"id\": {{\"content\": ...}}; "
                                 f"got {idx!r}: {value!r}")
            added[int(idx)] = _token(value, f"{cfg_file}: added_tokens_decoder[{idx}]")  # type: ignore[assignment]
    else:
        map_file = folder / "special_tokens_map.json"
        late: list[str | AddedToken] = []  # the map's additional_special_tokens: extras, not special for added_tokens
        for key, value in (json_object(map_file) if map_file.is_file() else {}).items():
            where = f"{map_file}: {key}"
            if key in _NAMED:
                named[key] = None if value is None else _token(value, where, special=True)
                given.add(key)
            elif key == "extra_special_tokens":  # merged into the config's
                extras += [t for t in _extras(value, where, special=True) if t not in extras]
            elif key == "additional_special_tokens":
                late = _extras(value, where, special=True)
        added_file = folder / "added_tokens.json"
        # as transformers: an added token is special when a file names it so (a default such as [PAD] does not)
        specials = {str(named[k]) for k in given if named[k] is not None} | {str(t) for t in extras}
        extras = extras or late
        if added_file.is_file():
            for text, idx in json_object(added_file).items():
                if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                    raise ValueError(f"{added_file}: token {text!r} must map to a non-negative int id; got {idx!r}")
                special = text in specials
                added[idx] = AddedToken(text, lstrip=False, rstrip=False, normalized=not special, special=special)
    for key in ("unk_token", "cls_token", "sep_token"):
        if named[key] is None:
            raise ValueError(f"{cfg_file}: {key} is null; a WordPiece vocab.txt needs one")
    by_text = {t.content: t for t in added.values()}  # a named token listed among the added keeps its flags
    named = {k: by_text.get(str(v), v) if v is not None else None for k, v in named.items()}

    tok = Tokenizer(WordPiece(_vocab(folder / "vocab.txt"), unk_token=str(named["unk_token"])))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=handle_chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    new = [added[i] for i in sorted(added)]
    seen = {t.content for t in new}
    for t in [*named.values(), *extras]:
        if t is not None and str(t) not in seen:
            seen.add(str(t))
            if isinstance(t, str):
                t = AddedToken(t, special=True)
            elif not t.special and t in named.values():  # as transformers: a named token is special (an extra one
                t.special = True                          # keeps its file's flag)
            new.append(t)
    tok.add_tokens(new)
    cls, sep = str(named["cls_token"]), str(named["sep_token"])
    try:  # the template's syntax, as transformers writes it: a token holding a space or a ":" cannot be written
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    except Exception as exc:  # noqa: BLE001 -- the library's error names neither the file nor the setting
        raise ValueError(f"{cfg_file}: cls_token {cls!r} / sep_token {sep!r} cannot be written in the post-processor "
                         f"template (transformers' BertTokenizer fails on them too): {exc}") from None
    pad = named["pad_token"]
    return tok, None if pad is None else str(pad)
