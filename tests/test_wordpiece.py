"""engine/wordpiece.py: a vocab.txt folder's added and special tokens, against transformers' BertTokenizer on the
same folder (token ids of texts and pairs, decoding, padding), and the files' bad entries refused by name."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import BertTokenizer

from engine.tokenizer import load_tokenizer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "e", "##1", "[", "]", "x", "<s>", "</s>",
         "a", "##b"]
TEXTS = ["hello [E1] world", "[e1]x hello", "hello<ent>world", " <ent> a", "[MASK] hello [mask]", "xx<s>hello</s>",
         "Hello WORLD [E1][E1]", "ab <s> a</s>", "hello\x00 \x07world\u00a0a\tx"]


def _token(content, *, lstrip=False, rstrip=False, normalized=False, single_word=False, special=True):
    return {"content": content, "lstrip": lstrip, "rstrip": rstrip, "normalized": normalized,
            "single_word": single_word, "special": special}


# folder files beside vocab.txt; each case holds tokens the plain vocabulary would split or wrap differently
CASES = {
    # the older files: added_tokens.json, special_tokens_map.json
    "added-json": {"added_tokens.json": {"[E1]": 16, "<ent>": 17}},
    "added-json-special": {"added_tokens.json": {"[E1]": 16},
                           "special_tokens_map.json": {"additional_special_tokens": ["[E1]"]}},
    "added-json-at-0": {"added_tokens.json": {"[PAD]": 0, "[E1]": 16}},
    "added-json-cased": {"added_tokens.json": {"[E1]": 16}, "tokenizer_config.json": {"do_lower_case": False}},
    "map-named": {"special_tokens_map.json": {"cls_token": "<s>", "sep_token": _token("</s>")}},
    "map-objects-bare": {"special_tokens_map.json": {"cls_token": {"content": "<S>"}, "sep_token": {"content": "</S>"},
                                                     "extra_special_tokens": [{"content": "[E1]"}]}},
    "map-named-normalized": {"special_tokens_map.json": {"cls_token": {"content": "<S>", "normalized": True},
                                                         "mask_token": {"content": "[MASK]", "normalized": True}}},
    "added-json-named": {"tokenizer_config.json": {"cls_token": "<S>"}, "added_tokens.json": {"<S>": 16, "[E1]": 17}},
    "config-named-not-special": {"tokenizer_config.json": {
        "cls_token": {"__type": "AddedToken", **_token("<S>", special=False)},
        "mask_token": {"__type": "AddedToken", **_token("[MASK]", special=False, normalized=True)}}},
    "map-extra-merged": {"tokenizer_config.json": {"extra_special_tokens": ["<ent>"]},
                         "special_tokens_map.json": {"extra_special_tokens": ["[E1]"]},
                         "added_tokens.json": {"[E1]": 17, "<ent>": 16}},
    "config-and-map-additional": {"tokenizer_config.json": {"additional_special_tokens": ["<ent>"]},
                                  "special_tokens_map.json": {"additional_special_tokens": ["[E1]"]},
                                  "added_tokens.json": {"[E1]": 16}},
    # what save_pretrained writes today: tokenizer_config.json's added_tokens_decoder (the older files ignored)
    "decoder": {"tokenizer_config.json": {"added_tokens_decoder": {
        "16": _token("[E1]"), "17": _token("<ent>", lstrip=True, rstrip=True, special=False)}}},
    "decoder-gap-normalized": {"tokenizer_config.json": {"added_tokens_decoder": {
        "20": _token("[E1]", normalized=True, special=False)}}},
    "decoder-over-legacy": {"tokenizer_config.json": {"added_tokens_decoder": {
        "16": _token("<ent>", normalized=True, single_word=True, special=False)}}, "added_tokens.json": {"[E1]": 16}},
    "decoder-named-flags": {"tokenizer_config.json": {"cls_token": "<s>", "added_tokens_decoder": {
        "12": _token("<s>", lstrip=True, rstrip=True)}}},
    # named tokens: custom, an AddedToken object, missing from the vocabulary, bos / eos, extras in the config
    "config-named": {"tokenizer_config.json": {"cls_token": "<s>", "sep_token": "</s>", "bos_token": "<s>",
                                               "eos_token": "[E1]"}},
    "mask-lstrip": {"tokenizer_config.json": {"mask_token": {"__type": "AddedToken", **_token("[MASK]", lstrip=True)}}},
    "config-extras-objects": {"tokenizer_config.json": {"additional_special_tokens": [
        {"__type": "AddedToken", **_token("<ent>", special=False)}, {"__type": "AddedToken", **_token("[E1]")}]}},
    "config-extras": {"tokenizer_config.json": {"additional_special_tokens": ["[E1]", "<ent>"]}},
    "added-in-vocab": {"added_tokens.json": {"hello": 5},
                       "special_tokens_map.json": {"additional_special_tokens": ["hello"]}},
}


def _folder(root: Path, files: dict, words: list[str] = WORDS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    for name, content in files.items():
        (root / name).write_text(json.dumps(content), encoding="utf-8")
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_added_and_special_tokens_match_bert_tokenizer(tmp_path, case):
    folder = _folder(tmp_path, CASES[case])
    hf, ours = BertTokenizer.from_pretrained(str(folder)), load_tokenizer(folder)
    assert ours.vocab_size == len(hf)
    for text in TEXTS:
        assert ours.encode(text) == hf(text)["input_ids"], text
    pairs = TEXTS[1:] + TEXTS[:1]
    want = hf(TEXTS, pairs, padding=True)
    got = ours(TEXTS, pairs)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert got[key].tolist() == want[key], key
    for ids in want["input_ids"]:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("words", [[w for w in WORDS if w != "[MASK]"], [w for w in WORDS if w != "[PAD]"]],
                         ids=["no-mask", "no-pad"])
def test_named_tokens_missing_from_the_vocabulary_are_added_as_transformers_adds_them(tmp_path, words):
    folder = _folder(tmp_path, {"special_tokens_map.json": {"pad_token": "<s>"}} if "[PAD]" in words else {}, words)
    hf, ours = BertTokenizer.from_pretrained(str(folder)), load_tokenizer(folder)
    assert ours.vocab_size == len(hf) and ours.pad_token_id == hf.pad_token_id
    assert ours(TEXTS)["input_ids"].tolist() == hf(TEXTS, padding=True)["input_ids"]


@pytest.mark.parametrize("files, message", [
    ({"added_tokens.json": {"[E1]": "16"}}, r"added_tokens.json: token '\[E1\]' must map to a non-negative int id"),
    ({"added_tokens.json": ["[E1]"]}, r"added_tokens.json must hold a JSON object; got list"),
    ({"tokenizer_config.json": {"added_tokens_decoder": {"x": _token("[E1]")}}},
     r"added_tokens_decoder entries must be \"id\": \{\"content\": ...\}; got 'x'"),
    ({"tokenizer_config.json": {"added_tokens_decoder": [_token("[E1]")]}}, r"added_tokens_decoder must map ids"),
    ({"tokenizer_config.json": {"added_tokens_decoder": {"16": {"content": "[E1]", "lstrip": "yes"}}}},
     r"added_tokens_decoder\[16\]: an AddedToken's flags must be true or false; got \{'lstrip': 'yes'\}"),
    ({"tokenizer_config.json": {"cls_token": None}}, r"tokenizer_config.json: cls_token is null"),
    ({"tokenizer_config.json": {"sep_token": 3}}, r"tokenizer_config.json: sep_token must be a string or an object"),
    ({"special_tokens_map.json": {"additional_special_tokens": "[E1]"}},
     r"special_tokens_map.json: additional_special_tokens must be a list of tokens"),
    ({"special_tokens_map.json": "{"}, r"special_tokens_map.json must hold a JSON object"),
])
def test_bad_entries_are_refused_by_file_and_name(tmp_path, files, message):
    folder = _folder(tmp_path, files)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(folder)


def test_token_objects_in_the_maps_additional_list_are_special(tmp_path):
    """special_tokens_map.json's additional_special_tokens as token objects (transformers 5 raises TypeError on such
    a file; older versions read them as special tokens): kept whole and skipped by decode like any special token."""
    folder = _folder(tmp_path, {"special_tokens_map.json": {"additional_special_tokens": [{"content": "[E1]"}]}})
    ours = load_tokenizer(folder)
    ids = ours.encode("hello [E1] world")
    assert ids == [2, 5, len(WORDS), 6, 3]
    assert ours.decode(ids) == "hello world"
    assert ours.decode(ids, skip_special_tokens=False) == "[CLS] hello [E1] world [SEP]"


@pytest.mark.parametrize("key, token", [("cls_token", "[C LS]"), ("sep_token", "<s:x>")])
def test_a_cls_or_sep_token_the_template_cannot_hold_is_refused_by_file_and_name(tmp_path, key, token):
    """A space or a ":" in cls / sep breaks the post-processor template (transformers' BertTokenizer fails on it too,
    with the library's message alone): engine's error names tokenizer_config.json and the setting."""
    folder = _folder(tmp_path, {"tokenizer_config.json": {key: token}}, WORDS + [token])
    with pytest.raises(ValueError):
        BertTokenizer.from_pretrained(str(folder))
    with pytest.raises(ValueError, match=rf"tokenizer_config.json: .*{key} {re.escape(repr(token))}.* cannot be "
                                         r"written in the post-processor template"):
        load_tokenizer(folder)
