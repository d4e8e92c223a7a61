"""``python -m engine`` on T5-family folders: generate runs text2text (greedy, as transformers' generate), embed
mean-pools a T5EncoderModel, convert round-trips, and a SentencePiece-only folder gets the command that writes
tokenizer.json. Tiny random models with a word-level tokenizer.json built here (T5's ids: <pad> 0, </s> 1)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers as T
from models_util import t5_dir
from tokenizers import Tokenizer

from engine.__main__ import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    return t5_dir(tmp_path_factory.mktemp("t5cli"), "T5ForConditionalGeneration")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_is_text2text_greedy(lm_dir, tmp_path, capsys):
    prompt = "translate english to german the cat sat on the mat"
    rc, out, err = run(capsys, "generate", lm_dir, "--prompt", prompt, "--max-new-tokens", 12, "--device", "cpu")
    assert rc == 0, err
    tok = Tokenizer.from_file(str(lm_dir / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    assert ids[0, -1] == 1  # the source ends with </s>
    hf = T.T5ForConditionalGeneration.from_pretrained(lm_dir).eval()
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, 1:].tolist()  # greedy, EOS 1 from the config
    new = ref[:ref.index(1)] if 1 in ref else ref
    assert len(new) >= 3
    assert out == tok.decode(new) + "\n"  # only the output: the prompt is the source, not a prefix
    assert re.search(rf"\[{len(new)} new tokens in [\d.]+ s", err)
    rc, _, err = run(capsys, "convert", lm_dir, tmp_path / "conv")
    assert rc == 0, err
    rc, converted, err = run(capsys, "generate", tmp_path / "conv", "--prompt", prompt, "--max-new-tokens", 12)
    assert rc == 0 and converted == out, err


def test_embed_mean_pools_the_encoder(tmp_path, capsys):
    d = t5_dir(tmp_path, "T5EncoderModel")
    texts = ["the cat sat on the mat", "a dog ran in the park", "the sky is blue"]
    rc, out, err = run(capsys, "embed", d, *texts)
    assert rc == 0, err
    assert "T5EncoderModel" in out and "(3, 32)" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\[\d+\]\s+-?\d", line)]
    sims = torch.tensor([[float(x) for x in line.split()[1:]] for line in rows])
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    encs = [tok.encode(t).ids for t in texts]
    n = max(map(len, encs))
    ids = torch.tensor([e + [0] * (n - len(e)) for e in encs])
    mask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in encs])
    hf = T.T5EncoderModel.from_pretrained(d).eval()
    with torch.no_grad():
        h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(sims, v @ v.T, atol=1e-4, rtol=0)


def test_user_errors(lm_dir, tmp_path, capsys):
    spiece = tmp_path / "spiece_only"
    spiece.mkdir()
    for f in ("config.json", "model.safetensors"):
        (spiece / f).write_bytes((lm_dir / f).read_bytes())
    (spiece / "spiece.model").write_bytes(b"not read")
    enc = t5_dir(tmp_path, "T5Model")
    capsys.readouterr()  # transformers' save progress
    for argv, pattern in [
        (["generate", spiece, "--prompt", "hi"],
         r"only a SentencePiece spiece\.model.*tokenizer\.json.*save_pretrained"),
        (["embed", lm_dir, "the cat"],
         "embed needs a base encoder .*T5EncoderModel.* is a T5ForConditionalGeneration"),
        (["generate", enc, "--prompt", "the cat"], "generate needs .*text2text.* is a T5Model"),
    ]:
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert re.search(pattern, err), (pattern, err)
