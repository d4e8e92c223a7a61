"""Any input, any entry point: arbitrary text, paths and numbers thrown at every CLI command and at the Python API
options (hypothesis, on tiny models built here). The only acceptable outcomes are success or a clear error: exit
code 2 with one line on stderr naming the command; a ValueError / TypeError (or FileNotFoundError /
FileExistsError for paths) whose one-line message names the argument. Never a traceback, a hang, another
exception type, or an output that silently ignores the value."""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import pytest
import torch
import transformers as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

import engine
from engine import ops, sampling
from engine.__main__ import main
from engine.convert import convert

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# CI runs a fixed, small set (derandomize); FUZZ_RANDOM=1 FUZZ_SCALE=20 explores (see the report for what it found)
SETTINGS = dict(deadline=None, database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCALE = float(os.environ.get("FUZZ_SCALE", 1))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))
WORDS = "the a cat dog sat ran on in park mat sky blue is paris france capital of".split()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders: a GPT-2 LM with a word-level tokenizer.json, BERT MLM / classifier / base with a
    vocab.txt, a T5 text2text model and a T5 encoder with a word-level tokenizer.json (T5's special ids: pad 0,
    EOS 1); plus a folder without config, a file, and a root for fresh paths."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=len(vocab), n_positions=32,
                                   eos_token_id=0, bos_token_id=0)).save_pretrained(root / "gpt2")
    tok.save(str(root / "gpt2" / "tokenizer.json"))
    bert_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    for name, arch in (("mlm", "BertForMaskedLM"), ("cls", "BertForSequenceClassification"), ("base", "BertModel")):
        cfg = T.BertConfig(vocab_size=len(bert_vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=11, max_position_embeddings=24, architectures=[arch])
        getattr(T, arch)(cfg).save_pretrained(root / name)
        (root / name / "vocab.txt").write_text("\n".join(bert_vocab) + "\n")
    t5_vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    t5_tok = Tokenizer(models.WordLevel(t5_vocab, unk_token="<unk>"))
    t5_tok.pre_tokenizer = pre_tokenizers.Whitespace()
    for name, arch in (("t5", "T5ForConditionalGeneration"), ("t5enc", "T5EncoderModel")):
        cfg = T.T5Config(vocab_size=len(t5_vocab), d_model=8, d_kv=4, d_ff=12, num_layers=1, num_heads=2,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         feed_forward_proj="gated-gelu", decoder_start_token_id=0, architectures=[arch])
        getattr(T, arch)(cfg).save_pretrained(root / name)
        t5_tok.save(str(root / name / "tokenizer.json"))
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    return {"root": root, **{n: root / n for n in MODEL_DIRS + ("empty", "a_file")}}


MODEL_DIRS = ("gpt2", "mlm", "cls", "base", "t5", "t5enc")


# ---- strategies ------------------------------------------------------------------------------------------------
texts = st.one_of(st.text(max_size=40), st.text(alphabet="ab /.-_\\:\x00\t\n[]MASK", max_size=30),
                  st.sampled_from(["", " ", "[MASK]", "the [MASK] sat", "-1", "nan", "--help", "a" * 300,
                                   "the cat " * 40, "/", ".", "..", "~", "C:\\x"]))
numbers = st.one_of(st.integers(0, 5), st.floats(0.05, 1.0), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["0", "1", "-1", "1.5", "nan", "inf", "-inf", "1e999", "0x10", "", "abc", "2**70",
                                     "9" * 30]))


def path_kinds(dirs: dict[str, Path]):
    """Existing model folders of every kind, a folder without config.json, a file, missing and odd paths (all
    under the test's temporary root, so a convert never writes elsewhere)."""
    root = dirs["root"]
    fixed = [dirs[n] for n in MODEL_DIRS + ("empty", "a_file")]
    fixed += [root / "missing", root / ("x" * 300), root / "a_file" / "below", Path(""), root / "nul\x00byte"]
    return st.one_of(st.sampled_from(fixed), st.builds(lambda t: root / "new" / t.replace("/", "_")[:50],
                                                       st.text(min_size=1, max_size=20).filter(
                                                           lambda t: t not in (".", "..") and "\x00" not in t)))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def assert_clean(argv: list, rc: int, out: str, err: str) -> None:
    cmd = str(argv[0])
    if rc == 0:
        return
    assert rc == 2, (argv, rc, err[-2000:])
    assert err.count("\n") == 1 and err.startswith(f"engine {cmd}: error: "), (argv, err[-2000:])
    assert "Traceback" not in err


# ---- the CLI -----------------------------------------------------------------------------------------------------
@st.composite
def cli_calls(draw, dirs):
    paths = path_kinds(dirs)
    cmd = draw(st.sampled_from(["generate", "embed", "fill-mask", "classify", "convert", "bench"]))
    right = {"generate": draw(st.sampled_from(["gpt2", "t5"])), "embed": draw(st.sampled_from(["base", "t5enc"])),
             "fill-mask": "mlm", "classify": "cls"}.get(cmd, draw(st.sampled_from(["cls", "t5"])))
    model = draw(st.one_of(st.just(dirs[right]), paths, texts))  # the right kind of model a third of the time
    opts: list = []

    def maybe(flag: str, values) -> None:
        if draw(st.integers(0, 3)) == 0:
            opts.extend([flag, draw(values)])

    devices = st.one_of(st.just("cpu"), st.sampled_from(["cuda", "cuda:7", "tpu", "meta", "cpu:0", "", "CPU"]), texts)
    if cmd == "generate":
        argv = ["generate", model]
        if draw(st.integers(0, 9)):
            opts += ["--prompt", draw(texts)]
        for flag in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty",
                     "--seed"):
            maybe(flag, numbers)
        if not any(o == "--max-new-tokens" for o in opts):
            opts += ["--max-new-tokens", "3"]  # keep the successful runs short
    elif cmd == "embed":
        argv = ["embed"] + ([model] if draw(st.booleans()) else []) + draw(st.lists(texts, max_size=3))
        maybe("--model", st.one_of(paths, texts))
    elif cmd == "fill-mask":
        argv = ["fill-mask", model, draw(texts)]
        maybe("--top-k", numbers)
    elif cmd == "classify":
        argv = ["classify", model] + draw(st.lists(texts, max_size=3))
    elif cmd == "convert":
        argv = ["convert", model, draw(paths)]
        if draw(st.booleans()):
            opts.append("--force")
        maybe("--dtype", st.one_of(st.sampled_from(["float32", "bfloat16", "int8"]), texts))
        return argv + opts
    else:  # bench: only its argument checks (a valid call runs the whole benchmark)
        argv = ["bench", "--device", draw(devices.filter(lambda d: d.strip().lower() not in ("cpu", "cpu:0")))]
        maybe("--threads", numbers)
        return argv
    maybe("--device", devices)
    maybe("--dtype", st.one_of(st.sampled_from(["float32", "float16", "bfloat16", "int8", "float64"]), texts))
    return argv + opts


def test_the_tiny_models_run(dirs):
    """The fuzzed commands' right-model cases can succeed (so the property above sees successes, not only errors)."""
    for argv in (["generate", dirs["gpt2"], "--prompt", "the cat", "--max-new-tokens", "2"],
                 ["generate", dirs["t5"], "--prompt", "the cat", "--max-new-tokens", "2", "--temperature", "0.7"],
                 ["embed", dirs["base"], "the cat"], ["embed", dirs["t5enc"], "the cat", "a dog"],
                 ["fill-mask", dirs["mlm"], "the [MASK] sat"], ["classify", dirs["cls"], "the cat"]):
        rc, out, err = run_cli(argv)
        assert rc == 0 and out, (argv, err)


def test_cli_any_input_is_success_or_one_clean_line(dirs):
    @settings(max_examples=examples(60), **SETTINGS)
    @given(argv=cli_calls(dirs))
    def check(argv):
        rc, out, err = run_cli(argv)
        assert_clean(argv, rc, out, err)

    check()


# ---- the Python API -----------------------------------------------------------------------------------------------
anything = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=10), st.lists(st.integers(-5, 200), max_size=3),
                     st.builds(torch.tensor, st.floats(-3, 3)), st.just(object()))


def assert_named(exc: BaseException, name: str) -> None:
    msg = str(exc)
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {msg}"
    assert msg and "\n" not in msg and name in msg, (name, msg)


GENERATE_OPTIONS = ["max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                    "eos_token_id", "pad_token_id", "seed", "cuda_graph"]


def test_generate_and_stream_options(dirs):
    """GPT-2's generate / stream and the T5 family's (engine.seq2seq: the same decoding options, plus
    decoder_start_token_id; no cuda_graph keyword)."""
    from engine import seq2seq

    models_ = {n: engine.from_pretrained(dirs[n]) for n in ("gpt2", "t5")}
    streams = {"gpt2": engine.generate.stream, "t5": seq2seq.stream}
    ids = torch.tensor([[2, 3, 4]])

    @settings(max_examples=examples(100), **SETTINGS)
    @given(which=st.sampled_from(sorted(models_)), name=st.sampled_from(GENERATE_OPTIONS + ["decoder_start_token_id"]),
           value=anything, do_sample=st.booleans(), use_stream=st.booleans())
    def check(which, name, value, do_sample, use_stream):
        model, prompt = models_[which], 1 if which == "t5" else 3  # T5's output starts with the start token
        kw = {"max_new_tokens": 3, "do_sample": do_sample, name: value}
        try:
            out = torch.stack(list(streams[which](model, ids, **kw)), 1) if use_stream else \
                model.generate(ids, **kw)[:, prompt:]
        except Exception as exc:  # noqa: BLE001 - judged below
            assert_named(exc, name)
            return
        assert out.dtype == torch.int64 and 1 <= out.shape[1] <= 3
        assert out.min() >= 0 and out.max() < model.config.vocab_size

    check()


SAMPLING_OPTIONS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "num_threads",
                    "prev_tokens"]


def test_sampling_options():
    logits = torch.randn(2, 50)

    @settings(max_examples=examples(80), **SETTINGS)
    @given(name=st.sampled_from(SAMPLING_OPTIONS), value=anything, fn=st.sampled_from(["sample", "probs"]))
    def check(name, value, fn):
        if fn == "probs" and name == "seed":
            return
        try:
            out = getattr(sampling, fn)(logits, **{name: value})
        except Exception as exc:  # noqa: BLE001
            assert_named(exc, name)
            return
        if fn == "probs":
            assert out.shape == (2, 50) and torch.isfinite(out).all() and (out.sum(-1) - 1).abs().max() < 1e-5
        else:
            assert out.shape == (2, 1) and out.min() >= 0 and out.max() < 50

    check()


def test_sdpa_options():
    q = torch.randn(1, 2, 3, 8)
    tables = st.builds(lambda h, w, dt: torch.randn(h, w).to(dt), st.integers(0, 3), st.integers(0, 8),
                       st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))

    @settings(max_examples=examples(60), **SETTINGS)
    @given(name=st.sampled_from(["attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                                 "relative_position_bias"]), value=st.one_of(anything, tables))
    def check(name, value):
        try:
            out = ops.scaled_dot_product_attention(q, q, q, **{name: value})
        except Exception as exc:  # noqa: BLE001
            assert_named(exc, name)
            return
        assert out.shape == q.shape

    check()


def test_load_and_convert_arguments(dirs):
    paths = path_kinds(dirs)

    @settings(max_examples=examples(50), **SETTINGS)
    @given(path=st.one_of(paths, anything), device=st.one_of(st.none(), st.sampled_from(["cpu", "cuda", "tpu",
                                                                                         "cuda:3"]), anything),
           dtype=st.one_of(st.none(), st.sampled_from(["float32", "bf16", "int8", torch.float16, torch.int32]),
                           anything),
           out=st.one_of(paths, anything), force=st.one_of(st.booleans(), anything))
    def check(path, device, dtype, out, force):
        for call, names in ((lambda: engine.from_pretrained(path, device=device, dtype=dtype),
                             ("path", "device", "dtype", "directory", "config.json", "weights")),
                            (lambda: convert(path, out, force=force, dtype=dtype, progress=False),
                             ("HF_DIR", "OUT_DIR", "force", "dtype", "config.json", "weights", "engine's format"))):
            try:
                call()
            except (FileNotFoundError, FileExistsError) as exc:
                assert str(exc) and "\n" not in str(exc)
            except Exception as exc:  # noqa: BLE001
                assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
                assert str(exc) and "\n" not in str(exc) and any(n in str(exc) for n in names), str(exc)

    check()


def test_model_inputs(dirs):
    models_ = {n: engine.from_pretrained(dirs[n]) for n in ("gpt2", "cls", "t5enc")}
    tensors = st.one_of(anything, st.builds(lambda shape, lo, hi, dt: torch.randint(lo, hi, shape).to(dt),
                                            st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
                                            st.integers(-3, 0), st.integers(1, 200),
                                            st.sampled_from([torch.long, torch.int32, torch.float32, torch.bool])))

    @settings(max_examples=examples(60), **SETTINGS)
    @given(which=st.sampled_from(sorted(models_)), input_ids=tensors, attention_mask=st.one_of(st.none(), tensors))
    def check(which, input_ids, attention_mask):
        try:
            out = models_[which](input_ids, attention_mask=attention_mask)
        except Exception as exc:  # noqa: BLE001
            assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
            assert "\n" not in str(exc) and ("input_ids" in str(exc) or "attention_mask" in str(exc)), str(exc)
            return
        assert math.isfinite(float(out.float().sum()))

    check()


def test_tokenizer_call_arguments(dirs):
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(dirs["mlm"])

    @settings(max_examples=examples(40), **SETTINGS)
    @given(texts=st.one_of(anything, st.lists(st.one_of(st.text(max_size=20), anything), max_size=3), texts),
           max_length=st.one_of(st.none(), anything))
    def check(texts, max_length):
        try:
            batch = tok(texts, max_length=max_length)
        except Exception as exc:  # noqa: BLE001
            assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
            assert "\n" not in str(exc) and ("texts" in str(exc) or "max_length" in str(exc)), str(exc)
            return
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        if max_length is not None:
            assert batch["input_ids"].shape[1] <= max_length

    check()
