"""engine.tokenizer on tiny tokenizer files written into tmp_path, against transformers' tokenizers loaded from the
same files (PreTrainedTokenizerFast for tokenizer.json, BertTokenizer for a WordPiece vocab.txt): padded batches,
truncation, token types, encode / decode, the pad id, what tokenizer_config.json sets, and the refusals by name.
Two tests build a tiny random BERT (hidden 8, one layer) to check the callers that truncate / pad through the
tokenizer (Embedder, embed.encode, ``engine classify``); every test runs in well under a second (once transformers'
BERT modeling is imported)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertTokenizer, PreTrainedTokenizerFast

from engine.tokenizer import load_tokenizer, tokenizer_problem

# [PAD] is not id 0, so a pad id that falls back to 0 (or comes from the wrong source) shows in the batch
WORDS = ["[UNK]", "[CLS]", "[SEP]", "a", "b", "[PAD]", "c", "<pad>", "hello", "world"]
TEXTS = ["a b c hello", "b", "world a zzz", "c c"]  # different lengths, an unknown word
PAIRS = ["c", "hello world a b", "a", "b b"]


def _write(folder: Path, *, template: bool = True, padding: bool | str = False, words: list[str] = WORDS,
           config: dict | None = None, truncation: str | None = None) -> Path:
    """A WordLevel tokenizer.json (whitespace split; optionally BERT's [CLS] A [SEP] B [SEP] template, a padding
    section naming <pad> (on side ``padding`` when a str), a truncation section on side ``truncation``, and an
    added token <extra> beyond the model's vocabulary) and tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
        tok.add_special_tokens(["[CLS]", "[SEP]"])
        tok.add_tokens(["<extra>"])
    if padding:
        tok.enable_padding(pad_id=words.index("<pad>"), pad_token="<pad>",
                           direction=padding if isinstance(padding, str) else "right")
    if truncation is not None:
        tok.enable_truncation(100, direction=truncation)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _reference(texts, pairs=None, *, hf, max_length=None, truncation=None, **kw) -> dict[str, torch.Tensor]:
    truncation = max_length is not None if truncation is None else truncation
    out = hf(texts, pairs, padding=True, truncation=truncation, max_length=max_length,
             return_token_type_ids=pairs is not None, return_tensors="pt", **kw)
    return dict(out)


def _assert_batch(ours: dict, ref: dict) -> None:
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].dtype == torch.long and torch.equal(ours[k], ref[k]), (k, ours[k], ref[k])


@pytest.mark.parametrize("padding", [False, True], ids=["pad-from-vocab", "pad-from-padding-section"])
def test_batches_match_transformers(tmp_path, padding):
    folder = _write(tmp_path, padding=padding, config={"pad_token": "[PAD]"} if not padding else None)
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = load_tokenizer(folder)
    assert tok.pad_token_id == hf.pad_token_id == (7 if padding else 5)
    _assert_batch(tok(TEXTS), _reference(TEXTS, hf=hf))
    _assert_batch(tok(TEXTS, max_length=4), _reference(TEXTS, hf=hf, max_length=4))
    _assert_batch(tok(TEXTS, PAIRS), _reference(TEXTS, PAIRS, hf=hf))
    _assert_batch(tok(TEXTS, PAIRS, max_length=6), _reference(TEXTS, PAIRS, hf=hf, max_length=6))
    _assert_batch(tok("a b <extra>"), _reference(["a b <extra>"], hf=hf))
    assert tok.vocab_size == len(hf) == len(WORDS) + 1  # the added <extra> counts


def test_encode_and_decode_match_transformers(tmp_path):
    hf = PreTrainedTokenizerFast.from_pretrained(str(_write(tmp_path)))
    tok = load_tokenizer(tmp_path)
    for text in TEXTS + ["", "a <extra> b"]:
        assert tok.encode(text) == hf.encode(text)  # with [CLS] / [SEP], as transformers by default
        assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    ids = tok(TEXTS[:2])["input_ids"][1]  # [CLS] b [SEP] [PAD] [PAD]: a padded row, as a tensor
    assert tok.decode(ids) == tok.decode(ids.tolist()) == hf.decode(ids.tolist(), skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids.tolist(), skip_special_tokens=False)
    assert tok.decode(ids) != tok.decode(ids, skip_special_tokens=False)
    with pytest.raises(TypeError, match="text"):
        tok.encode(["a"])


@pytest.mark.parametrize("pad_token, padding, want", [
    ("<pad>", False, 7), ("[PAD]", True, 5), ("<extra>", False, 10),
    ({"__type": "AddedToken", "content": "<pad>", "lstrip": False, "normalized": True, "rstrip": False,
      "single_word": False}, True, 7)], ids=["str", "over-padding-section", "added-token", "added-token-object"])
def test_configured_pad_token_matches_transformers(tmp_path, pad_token, padding, want):
    """tokenizer_config.json's pad_token (a str, or an object with its content) gives the pad id, over
    tokenizer.json's padding section and the [PAD] / <pad> fallback, as in transformers."""
    folder = _write(tmp_path, padding=padding, config={"pad_token": pad_token})
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = load_tokenizer(folder)
    assert tok.pad_token_id == hf.pad_token_id == want
    _assert_batch(tok(TEXTS, PAIRS), _reference(TEXTS, PAIRS, hf=hf))


def test_bad_pad_token_is_refused_by_name(tmp_path):
    """A pad_token the vocabulary lacks (transformers would add a new id past the model's embedding) or of the
    wrong type: a ValueError naming tokenizer_config.json and the field."""
    for pad_token, match in (("zzz", "tokenizer_config.json: pad_token 'zzz' is not in the vocabulary of "
                                     ".*tokenizer.json"),
                             (1, "tokenizer_config.json: pad_token must be a string .*; got 1"),
                             ({"id": 1}, "tokenizer_config.json: pad_token as an object must have a string "
                                         "\"content\"")):
        with pytest.raises(ValueError, match=match):
            load_tokenizer(_write(tmp_path, config={"pad_token": pad_token}))


def test_pad_id_without_a_pad_token_is_in_the_vocabulary(tmp_path):
    """No padding section and none of [PAD] / <pad> / <|endoftext|>: the padded places still hold a token id the
    model's embedding has (the only id of a one-word vocabulary), under a mask of 0."""
    tok = load_tokenizer(_write(tmp_path, template=False, words=["a"]))
    batch = tok(["a a a", "a"])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert 0 <= int(batch["input_ids"].max()) < tok.vocab_size == 1


def test_vocab_txt_follows_tokenizer_config(tmp_path):
    """A WordPiece vocab.txt alone is lower-cased (BertTokenizer's default); tokenizer_config.json's do_lower_case
    and model_max_length are followed, as transformers' BertTokenizer follows them."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world",
                                                   "Hello", "##s", "e"]) + "\n")
    texts = ["Hello worlds", "hello", "Héllo e"]
    for config in (None, {"do_lower_case": False}, {"do_lower_case": True, "model_max_length": 3}):
        if config is not None:
            (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        hf = BertTokenizer.from_pretrained(str(tmp_path))
        ref = hf(texts, padding=True, truncation=True, return_token_type_ids=False, return_tensors="pt")
        _assert_batch(load_tokenizer(tmp_path)(texts), dict(ref))
    assert load_tokenizer(tmp_path).model_max_length == 3


@pytest.mark.parametrize("config", [{}, {"strip_accents": False}, {"strip_accents": True, "do_lower_case": False},
                                    {"do_lower_case": False}, {"tokenize_chinese_chars": False},
                                    {"strip_accents": None, "tokenize_chinese_chars": True}],
                         ids=["defaults", "keep-accents", "strip-cased", "cased", "chinese-off", "nulls"])
def test_vocab_txt_normalizes_as_bert_tokenizer(tmp_path, config):
    """tokenizer_config.json's strip_accents (null: strip when lower-casing) and tokenize_chinese_chars (each CJK
    character a word) shape a vocab.txt tokenizer's ids as they shape transformers' BertTokenizer's."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "héllo",
                                                   "Héllo", "Hello", "中", "国", "中国", "##国", "x"]) + "\n",
                                        encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["Héllo 中国", "héllo x", "HELLO 国中x", "Hello"]
    hf = BertTokenizer.from_pretrained(str(tmp_path))
    _assert_batch(load_tokenizer(tmp_path)(texts), _reference(texts, hf=hf))


@pytest.mark.parametrize("limit", [1, 3, 1e30, 0, True, False, None],
                         ids=["1", "3", "1e30-no-limit", "0-no-limit", "true-no-limit", "false-no-limit", "null"])
def test_model_max_length_from_tokenizer_config(tmp_path, limit):
    """model_max_length truncates every call without max_length (as transformers' truncation=True); 1e30 is what
    save_pretrained writes for "no limit"; 0 is no length at all and is ignored (transformers would cut every row
    to nothing, which no model can take); true / false are no limit either (not 1 / 0: transformers truncates
    nothing at them); an explicit max_length wins over it."""
    folder = _write(tmp_path, template=False, config={"pad_token": "[PAD]", "model_max_length": limit})
    tok = load_tokenizer(folder)
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    number = limit is not None and not isinstance(limit, bool)
    assert tok.model_max_length == (limit if number and 1 <= limit < 1e9 else None)
    _assert_batch(tok(TEXTS), _reference(TEXTS, hf=hf, truncation=number and limit != 0))  # hf: its model_max_length
    _assert_batch(tok(TEXTS, max_length=2), _reference(TEXTS, hf=hf, max_length=2))


@pytest.mark.parametrize("config, section", [({"truncation_side": "left"}, None), ({}, "left"),
                                             ({"truncation_side": "right"}, "left"),
                                             ({"truncation_side": "left"}, "right")],
                         ids=["config-left", "section-left", "config-right-over-section", "config-left-over-section"])
def test_truncation_side_matches_transformers(tmp_path, config, section):
    """tokenizer_config.json's truncation_side, else the direction of tokenizer.json's truncation section, else
    right: "left" keeps the last tokens (of each text of a pair, longest first), as transformers truncates."""
    folder = _write(tmp_path, config={"pad_token": "[PAD]", "model_max_length": 4, **config}, truncation=section)
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = load_tokenizer(folder)
    assert tok.truncation_side == hf.truncation_side
    _assert_batch(tok(TEXTS), _reference(TEXTS, hf=hf, truncation=True))  # at model_max_length 4
    _assert_batch(tok(TEXTS, max_length=3), _reference(TEXTS, hf=hf, max_length=3))
    _assert_batch(tok(TEXTS, PAIRS, max_length=6), _reference(TEXTS, PAIRS, hf=hf, max_length=6))


def test_embedder_truncates_on_the_tokenizers_side(tmp_path):
    """Embedder tokenizes through its own copy of the tokenizer: with truncation_side left it keeps the tokens
    transformers' tokenizer keeps (the last ones, [CLS] / [SEP] around them) and flags the rows it cut."""
    from engine.config import ModelConfig
    from engine.embed import Embedder
    from engine.embed_spec import EmbeddingSpec
    from engine.models import build_model

    folder = _write(tmp_path, config={"pad_token": "[PAD]", "truncation_side": "left"})
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    model = build_model(ModelConfig.from_hf({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(hf), "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16}))
    emb = Embedder(model, load_tokenizer(folder), EmbeddingSpec(max_length=4))
    ids, truncated = emb.tokenize(TEXTS)
    assert ids == [hf(t, truncation=True, max_length=4)["input_ids"] for t in TEXTS]
    assert truncated.tolist() == [len(hf(t)["input_ids"]) > 4 for t in TEXTS] == [True, False, True, False]


@pytest.mark.parametrize("config, section", [({"padding_side": "left"}, None), ({}, "left"),
                                             ({"padding_side": "right"}, "left"), ({"padding_side": "left"}, "right")],
                         ids=["config-left", "section-left", "config-right-over-section", "config-left-over-section"])
def test_padding_side_matches_transformers(tmp_path, config, section):
    """tokenizer_config.json's padding_side, else the direction of tokenizer.json's padding section, else right:
    input_ids, attention_mask and token_type_ids padded on that side, as transformers pads; padding_side= in the
    call wins for that call (as transformers' padding_side= argument)."""
    pad = {} if section else {"pad_token": "[PAD]"}  # else the padding section's <pad>, in both
    folder = _write(tmp_path, padding=section or False, config={**pad, **config}, truncation="left")
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = load_tokenizer(folder)
    assert tok.padding_side == hf.padding_side
    _assert_batch(tok(TEXTS), _reference(TEXTS, hf=hf))
    _assert_batch(tok(TEXTS, PAIRS, max_length=6), _reference(TEXTS, PAIRS, hf=hf, max_length=6))
    for side in ("left", "right"):
        _assert_batch(tok(TEXTS, PAIRS, padding_side=side), _reference(TEXTS, PAIRS, hf=hf, padding_side=side))
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'; got 'up'"):
        tok(TEXTS, padding_side="up")


def test_left_padding_folder_scores_each_text_as_alone(tmp_path, capsys):
    """A vocab.txt folder with padding_side left: its batches are left-padded as BertTokenizer pads them, but
    ``engine classify`` and embed.encode pad right themselves, so each text gets the scores / embedding that
    transformers' model gives it alone (BERT's absolute positions would move a left-padded short text)."""
    import transformers as T

    from engine.__main__ import main
    from engine.checkpoint import from_pretrained
    from engine.embed import encode

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "hello", "world"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"padding_side": "left"}))
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    hf = T.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for prm in hf.parameters():
            prm.add_(torch.randn_like(prm))
    hf.save_pretrained(tmp_path)
    hf.bert.save_pretrained(tmp_path / "base")
    hf_tok = BertTokenizer.from_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    _assert_batch(tok(TEXTS), _reference(TEXTS, hf=hf_tok))
    assert tok(TEXTS)["attention_mask"][1].tolist() == [0, 0, 0, 1, 1, 1]
    alone = [hf_tok(t, return_tensors="pt") for t in TEXTS]
    with torch.no_grad():
        probs = [torch.softmax(hf(**b).logits[0], -1) for b in alone]
        hidden = [hf.bert(**b).last_hidden_state[0].mean(0) for b in alone]
    capsys.readouterr()
    assert main(["classify", str(tmp_path), *TEXTS]) == 0
    for line, text, p in zip(capsys.readouterr().out.splitlines(), TEXTS, probs):
        assert line.endswith(text)
        found = sorted(float(x) for x in re.findall(r"LABEL_\d ([\d.]+)", line))
        assert found == pytest.approx(sorted(p.tolist()), abs=1e-4), (line, p)
    ours = encode(from_pretrained(tmp_path / "base"), tok, TEXTS, normalize=False)
    torch.testing.assert_close(ours, torch.stack(hidden), atol=1e-5, rtol=1e-5)


def test_call_arguments_are_refused_by_name(tmp_path):
    tok = load_tokenizer(_write(tmp_path, template=False, config={"pad_token": "[PAD]"}))
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    _assert_batch(tok(TEXTS, max_length=1), _reference(TEXTS, hf=hf, max_length=1))  # the smallest length
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="max_length"):
            tok(TEXTS, max_length=bad)
    for bad in ([], ("a", "b"), ["a", 1], None):
        with pytest.raises(TypeError, match="texts"):
            tok(bad)
    with pytest.raises(ValueError, match="text_pairs"):
        tok(TEXTS, PAIRS[:2])


def test_what_a_folder_lacks_is_named(tmp_path):
    """tokenizer_problem: None for a folder with tokenizer.json or vocab.txt; a SentencePiece-only folder gets the
    command that writes tokenizer.json; a broken tokenizer_config.json / tokenizer.json is a ValueError naming it."""
    empty, spiece, vocab = tmp_path / "empty", tmp_path / "spiece", tmp_path / "vocab"
    for d in (empty, spiece, vocab):
        d.mkdir()
    (spiece / "spiece.model").write_bytes(b"\0")
    (vocab / "vocab.txt").write_text("[UNK]\n[PAD]\na\n")
    assert tokenizer_problem(_write(tmp_path / "json")) is None and tokenizer_problem(vocab) is None
    assert "save_pretrained" in tokenizer_problem(spiece) and "spiece.model" in tokenizer_problem(spiece)
    assert tokenizer_problem(empty) == f"no tokenizer.json or vocab.txt in {str(empty)!r}"
    for d in (empty, spiece):
        with pytest.raises(FileNotFoundError, match="tokenizer.json"):
            load_tokenizer(d)
    for text, match in (("{not json", "tokenizer_config.json is not valid JSON"),
                        ("[1]", "tokenizer_config.json must hold a JSON object"),
                        ('{"truncation_side": "middle"}',
                         "tokenizer_config.json: truncation_side must be 'right' or 'left'; got 'middle'"),
                        ('{"padding_side": null}', "tokenizer_config.json: padding_side must be 'right' or 'left'; "
                                                   "got None"),
                        ('{"strip_accents": "no"}', "tokenizer_config.json: strip_accents must be true or false or "
                                                    "null; got 'no'"),
                        ('{"do_lower_case": null}', "tokenizer_config.json: do_lower_case must be true or false; "
                                                    "got None"),
                        ('{"tokenize_chinese_chars": 1}', "tokenize_chinese_chars must be true or false; got 1"),
                        ('{"model_max_length": "512"}', "tokenizer_config.json: model_max_length must be a number "
                                                        "\\(or null\\); got '512'")):
        (vocab / "tokenizer_config.json").write_text(text)
        with pytest.raises(ValueError, match=match):
            load_tokenizer(vocab)
    (vocab / "tokenizer_config.json").unlink()
    (vocab / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot read .*tokenizer.json"):
        load_tokenizer(vocab)


def test_a_library_value_error_from_tokenizer_json_names_the_file(tmp_path, monkeypatch):
    """The tokenizers library's own ValueError (not engine's, which names its file) gets tokenizer.json's path."""
    import engine.tokenizer as module

    def refuse(path):
        raise ValueError("bad merges")
    monkeypatch.setattr(module._HFTokenizer, "from_file", staticmethod(refuse))
    folder = _write(tmp_path)
    with pytest.raises(ValueError, match=rf"cannot read {re.escape(str(folder / 'tokenizer.json'))}: bad merges"):
        load_tokenizer(folder)


def test_calls_from_two_threads_keep_their_own_truncation(tmp_path):
    """One Tokenizer shared by threads: a call's max_length (set on the shared ``tokenizers`` object for that call)
    never truncates another thread's batch or ``encode``; every result equals the same call made alone."""
    import threading

    tok = load_tokenizer(_write(tmp_path))
    long_text = " ".join(["hello world a b c"] * 40)
    want_short = tok([long_text] * 8, max_length=5)["input_ids"]
    want_full = tok([long_text] * 8)["input_ids"]
    want_ids = tok.encode(long_text)
    wrong = []

    def short():
        for _ in range(150):
            if not torch.equal(tok([long_text] * 8, max_length=5)["input_ids"], want_short):
                wrong.append("short")

    def full():
        for _ in range(150):
            if not torch.equal(tok([long_text] * 8)["input_ids"], want_full) or tok.encode(long_text) != want_ids:
                wrong.append("full")

    threads = [threading.Thread(target=f) for f in (short, full)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} calls saw another thread's truncation ({sorted(set(wrong))})"


def test_pickle_and_deepcopy_keep_the_tokenizer(tmp_path):
    """A Tokenizer pickles and deep-copies (DataLoader workers, copied pipelines) to one that batches and encodes as
    the original, with a lock of its own."""
    import copy
    import pickle

    tok = load_tokenizer(_write(tmp_path, config={"pad_token": "<pad>", "truncation_side": "left"}))
    for other in (pickle.loads(pickle.dumps(tok)), copy.deepcopy(tok)):
        assert other._lock is not tok._lock
        _assert_batch(other(TEXTS, PAIRS, max_length=5), tok(TEXTS, PAIRS, max_length=5))
        assert other.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and other.pad_token_id == tok.pad_token_id
