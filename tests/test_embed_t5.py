"""Sentence embeddings from T5 encoders and sentence-transformers' Dense modules (sentence-T5 / GTR layout: a
T5EncoderModel -> mean pooling -> Dense -> Normalize): the Embedder's token-budget batches (packed on the CPU), the
corpus job and the CLI against a float64 reference built from sentence-transformers' definitions (transformers'
T5EncoderModel in float64, one text at a time, then mean, activation(W x + b), L2 norm); Dense weights and configs
engine cannot follow are refused. Tiny random T5 (d_model 32) with a word-level tokenizer (tests/models_util.py)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from models_util import T5_WORDS, t5_dir
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from engine.__main__ import main
from engine.corpus import OutputError, embed_corpus
from engine.embed import DenseSpec, Embedder, EmbeddingConfigError, load_dense

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MAX_LEN = 9  # sentence_bert_config.json's max_seq_length (</s> included): the longer texts are truncated
ACT_PATHS = {"Identity": "torch.nn.modules.linear.Identity", "Tanh": "torch.nn.modules.activation.Tanh",
             "GELU": "torch.nn.modules.activation.GELU", "ReLU": "torch.nn.modules.activation.ReLU"}
ACT_F64 = {"Identity": lambda x: x, "Tanh": torch.tanh, "GELU": F.gelu, "ReLU": F.relu}
# (in, out, bias, activation) per Dense module; sentence-T5 / GTR ship one 768 -> 768, no bias, Identity
LAYOUTS = {"sentence-t5": ([(32, 32, False, "Identity")], True),
           "two-dense-tanh-gelu": ([(32, 19, True, "Tanh"), (19, 11, True, "GELU")], False)}


def make_texts(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [" ".join(r.choice(T5_WORDS) for _ in range(r.choice([1, 2, 4, 7, 12]))) for _ in range(n)]


def write_dense(folder: Path, i: int, o: int, bias: bool, act: str, *, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"in_features": i, "out_features": o, "bias": bias,
                                                    "activation_function": ACT_PATHS[act]}))
    g = torch.Generator().manual_seed(seed)
    tensors = {"linear.weight": torch.randn(o, i, generator=g) * 0.3}
    if bias:
        tensors["linear.bias"] = torch.randn(o, generator=g) * 0.5
    save_file(tensors, str(folder / "model.safetensors"))


def st5_folder(root: Path, layout: str, *, seed: int = 0) -> Path:
    """A sentence-transformers folder around a tiny T5EncoderModel: Transformer, Pooling (mean), the layout's Dense
    modules (random weights), Normalize when the layout has it; max_seq_length MAX_LEN."""
    dense, normalize = LAYOUTS[layout]
    d = t5_dir(root, "T5EncoderModel", seed=seed)
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    for k, (i, o, bias, act) in enumerate(dense):
        write_dense(d / f"{2 + k}_Dense", i, o, bias, act, seed=seed * 10 + k)
        modules.append((f"{2 + k}_Dense", "Dense"))
    if normalize:
        modules.append((f"{len(modules)}_Normalize", "Normalize"))
    (d / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_mean_tokens": True}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_LEN, "do_lower_case": False}))
    return d


def reference(folder: Path, layout: str, texts: list[str], *, with_dense: bool = True) -> torch.Tensor:
    """float64, one text at a time (no padding at all), from sentence-transformers' module definitions."""
    dense, normalize = LAYOUTS[layout]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(MAX_LEN)
    hf = T.T5EncoderModel.from_pretrained(folder).double().eval()
    rows = []
    for text in texts:
        ids = torch.tensor([tok.encode(text.strip()).ids])
        with torch.no_grad():
            v = hf(input_ids=ids).last_hidden_state[0].mean(0)  # (C,)
        for k, (_, _, _, act) in enumerate(dense if with_dense else []):
            w = {n: t.double() for n, t in load_file(str(folder / f"{2 + k}_Dense" / "model.safetensors")).items()}
            v = ACT_F64[act](w["linear.weight"] @ v + w.get("linear.bias", 0))
        rows.append(F.normalize(v, dim=0) if normalize else v)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def st5(tmp_path_factory) -> Path:
    return st5_folder(tmp_path_factory.mktemp("st5"), "sentence-t5")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_equals_float64_reference(layout, tmp_path):
    folder = st5_folder(tmp_path, layout)
    texts = make_texts(13, seed=1)
    emb = Embedder.from_pretrained(folder)
    dense, normalize = LAYOUTS[layout]
    assert emb.spec.max_length == MAX_LEN and emb.spec.normalize == normalize and emb.dim == dense[-1][1]
    assert [(d.in_features, d.out_features, d.bias) for d in emb.spec.dense] == [x[:3] for x in dense]
    ids, truncated = emb.tokenize(texts)
    assert max(map(len, ids)) == MAX_LEN and 0 < truncated.sum() < len(texts)
    ours = emb.encode(texts, batch_tokens=2 * MAX_LEN)  # several batches, length-sorted, order restored
    ref = reference(folder, layout, texts)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)  # float32 against float64
    if layout == "sentence-t5":  # the test can tell a Dense module applied from one left out
        assert (ours.double() - reference(folder, layout, texts, with_dense=False)).abs().max() > 1e-2


def test_corpus_job_and_cli(st5, tmp_path, capsys):
    texts = make_texts(17, seed=2)
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n")
    res = embed_corpus(st5, f, tmp_path / "out", shard_size=5, batch_tokens=3 * MAX_LEN, progress=False)
    vecs, ids = res.load()
    assert ids.tolist() == list(range(17)) and vecs.shape == (17, 32) and res.truncated > 0
    np.testing.assert_allclose(vecs, Embedder.from_pretrained(st5).encode(texts).numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(vecs, reference(st5, "sentence-t5", texts).numpy(), atol=1e-5, rtol=0)
    changed = tmp_path / "changed"  # the same folder with other Dense weights is another model
    shutil.copytree(st5, changed)
    write_dense(changed / "2_Dense", 32, 32, False, "Identity", seed=99)
    with pytest.raises(OutputError, match="another model"):
        embed_corpus(changed, f, tmp_path / "out", shard_size=5, progress=False)
    rc = main(["embed", str(st5), *texts[:3]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "T5EncoderModel" in out and "(3, 32)" in out and "mean pooling, Dense 32->32 identity, L2-normalised" in out


def test_dense_weights_and_sizes_checked(st5, tmp_path):
    with pytest.raises(EmbeddingConfigError, match=r"in_features is 32, but the vectors reaching it have 64 columns "
                                                   r"\(cls\+mean pooling"):
        Embedder.from_pretrained(st5, pooling=["mean", "cls"])
    wrong = st5_folder(tmp_path / "w", "two-dense-tanh-gelu")
    cfg = json.loads((wrong / "3_Dense" / "config.json").read_text())
    (wrong / "3_Dense" / "config.json").write_text(json.dumps({**cfg, "in_features": 20}))
    with pytest.raises(EmbeddingConfigError, match=r"3_Dense/config.json: in_features is 20, but the vectors .* 19 "
                                                   r"columns .*then the Dense modules before it"):
        Embedder.from_pretrained(wrong)

    def dense(name: str, tensors: dict | None, *, bias: bool = True) -> DenseSpec:
        d = tmp_path / name
        d.mkdir()
        if tensors is not None:
            save_file(tensors, str(d / "model.safetensors"))
        return DenseSpec(str(d), 5, 3, bias, "tanh")

    w, b = torch.randn(3, 5), torch.randn(3)
    for spec, pattern in [(dense("none", None), "no weights in"),
                          (dense("nobias", {"linear.weight": w}), r"holds tensors \['linear.weight'\]; .*bias true"),
                          (dense("extra", {"linear.weight": w, "linear.bias": b}, bias=False),
                           r"\['linear.bias', 'linear.weight'\]; .*\(bias false\) means exactly \['linear.weight'\]"),
                          (dense("shape", {"linear.weight": w.T.contiguous(), "linear.bias": b}),
                           r"linear.weight is torch.float32 \(5, 3\); .*shape \(3, 5\)"),
                          (dense("int", {"linear.weight": w.long(), "linear.bias": b}),
                           "linear.weight is torch.int64")]:
        with pytest.raises(EmbeddingConfigError, match=pattern):
            load_dense(spec, device=torch.device("cpu"))
    weight, bias = load_dense(dense("ok", {"linear.weight": w.double(), "linear.bias": b}), device=torch.device("cpu"))
    assert weight.dtype == torch.float32 and torch.equal(weight, w) and torch.equal(bias, b)


@pytest.mark.gpu
def test_cuda_matches_cpu(st5, tmp_path):
    """T5 encoder on CUDA (fp32): the corpus job (no CUDA graphs) and encode (graphs where the model chooses them)."""
    texts = make_texts(40, seed=3)
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n")
    cpu = Embedder.from_pretrained(st5).encode(texts).numpy()
    vecs, ids = embed_corpus(st5, f, tmp_path / "o", device="cuda", shard_size=16, batch_tokens=64,
                             progress=False).load()
    assert ids.tolist() == list(range(40))
    np.testing.assert_allclose(vecs, cpu, atol=1e-4, rtol=0)
    gpu = Embedder.from_pretrained(st5, device="cuda")
    for _ in range(3):  # the third call of a batch shape replays a captured graph
        np.testing.assert_allclose(gpu.encode(texts[:4]).numpy(), cpu[:4], atol=1e-4, rtol=0)
