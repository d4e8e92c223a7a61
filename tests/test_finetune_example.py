"""examples/finetune_classifier.py: fine-tuning MiniLM (the packaged checkpoint) on engine follows transformers'
loss curve step for step (same initial weights, head included; same batches; dropout off; AdamW), and the held-out
accuracy goes up. 20 small steps, so CI stays quick."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers as T

import engine
from engine.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_classifier.py"


@pytest.fixture(scope="module")
def fc():
    spec = importlib.util.spec_from_file_location("finetune_classifier", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_is_balanced_and_test_adjectives_are_unseen(fc):
    train, test = fc.build_dataset(0)
    assert {y for _, y in train} == {0, 1} and abs(sum(y for _, y in train) * 2 - len(train)) == 0
    held = set(fc.POSITIVE[-fc.HELD_OUT:] + fc.NEGATIVE[-fc.HELD_OUT:])
    assert not any(a in text.split() for text, _ in train for a in held)
    assert all(any(a in text.split() for a in held) for text, _ in test)


def test_loss_curve_matches_transformers_and_accuracy_goes_up(fc):
    path = fc.minilm_dir()
    tokenizer = load_tokenizer(path)
    train, test = fc.build_dataset(0)
    test = test[:96]
    torch.manual_seed(0)
    ours = fc.Classifier(engine.from_pretrained(path, trainable=True), 384)
    ref = fc.Classifier(T.BertModel.from_pretrained(str(path), attn_implementation="sdpa"), 384, hf=True)
    ref.head.load_state_dict(ours.head.state_dict())
    # The word embeddings stay frozen in both (half of MiniLM's parameters: AdamW's work, and CI's time, halve).
    ours.encoder.embeddings.word.weight.requires_grad_(False)
    ref.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    before = fc.accuracy(ours, test, tokenizer)
    curves = []
    for model in (ours, ref):
        model.eval()  # dropout off: both runs are deterministic
        curves.append(fc.train(model, train, tokenizer, steps=20, batch=8, lr=1e-4, seed=0))
    mine, theirs = (torch.tensor(c, dtype=torch.float64) for c in curves)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)  # measured: 1.8e-7 at most
    after = fc.accuracy(ours, test, tokenizer)
    assert mine[-5:].mean() < 0.5 * mine[:5].mean(), mine
    assert after >= before + 0.2 and after >= 0.8, (before, after)
