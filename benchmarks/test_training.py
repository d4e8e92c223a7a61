"""One fine-tuning step (forward, cross-entropy, backward, AdamW) of a BERT sequence classifier: engine's model
(``from_transformers(..., trainable=True)``, train mode) vs the same transformers model (attn_implementation="sdpa",
train mode), each with its own AdamW, timed in the same run.

CPU (fp32, random weights): a MiniLM-shaped BERT (384 wide, 6 layers, 12 heads; the shipped checkpoint's shape),
8 x 128, full and ragged (lengths uniform in [0.2 N, N]: 60% fill). Target (issue 16): no slower than
transformers. CUDA (bf16 weights with fp32 AdamW states): BERT-base 32 x 128 (the issue's H200 case, target
>= 1.3x). Before timing, both models take one step in eval mode (dropout off) from the same weights on the same
batch: their losses and the pooler / classifier gradients must agree.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from engine.checkpoint import from_transformers  # noqa: E402

CUDA = torch.cuda.is_available()
SHAPES = {"minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
_MODELS: dict[tuple, dict] = {}


def models(name: str, device: str, dtype: torch.dtype, case: str) -> dict[str, tuple]:
    """{provider: (model, logits_of_output)}: one random classifier, both copies built fresh for each ``case`` (the
    timed AdamW steps change the weights, a different number of times per provider)."""
    key = (name, device, dtype, case)
    if key not in _MODELS:
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512, attn_implementation="sdpa",
                                      num_labels=2, architectures=["BertForSequenceClassification"], **SHAPES[name])
        hf = transformers.BertForSequenceClassification(cfg).to(device=device, dtype=dtype)
        ours = from_transformers(hf, trainable=True)
        _MODELS.clear()
        _MODELS[key] = {"transformers": (hf, lambda out: out.logits), "engine": (ours, lambda out: out)}
    return _MODELS[key]


def batch(B: int, N: int, *, device: str, ragged: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, N), generator=g)
    lens = torch.randint(int(0.2 * N), N + 1, (B,), generator=g) if ragged else torch.full((B,), N)
    mask = (torch.arange(N)[None] < lens[:, None]).long()
    return ids.to(device), mask.to(device), torch.randint(0, 2, (B,), generator=g).to(device)


def step_fn(model, logits_of, opt, ids, mask, labels):
    def step():
        loss = torch.nn.functional.cross_entropy(logits_of(model(ids, attention_mask=mask)).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def check_same_first_step(all_models, ids, mask, labels, rtol: float) -> None:
    """Eval mode, same weights and batch: equal losses and gradients of the classifier (before any update)."""
    losses, grads = {}, {}
    for provider, (model, logits_of) in all_models.items():
        model.eval()
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(logits_of(model(ids, attention_mask=mask)).float(), labels)
        loss.backward()
        losses[provider] = loss.item()
        grads[provider] = model.classifier.weight.grad.float().clone()
        model.zero_grad(set_to_none=True)
        model.train()
    assert abs(losses["engine"] - losses["transformers"]) <= rtol * abs(losses["transformers"]), losses
    err = (grads["engine"] - grads["transformers"]).abs().max() / grads["transformers"].abs().max()
    assert err < rtol * 10, f"classifier gradient relative error {err:.3g}"


def run_case(bench, provider: str, name: str, B: int, N: int, *, device: str, dtype: torch.dtype, ragged: bool,
             rtol: float) -> None:
    group = f"train-step {name} {str(dtype).split('.')[-1]} {device} {B}x{N}{' ragged 60%' if ragged else ''}"
    all_models = models(name, device, dtype, group)
    ids, mask, labels = batch(B, N, device=device, ragged=ragged)
    if provider == "engine":  # once per case (engine runs first): both models are still at the same weights
        check_same_first_step(all_models, ids, mask, labels, rtol)
    model, logits_of = all_models[provider]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    loss = bench(step_fn(model, logits_of, opt, ids, mask, labels), provider=provider, group=group,
                 extra={"area": "model", "tokens": int(mask.sum())})
    assert torch.isfinite(loss)


@pytest.mark.parametrize("provider", ["engine", "transformers"])
@pytest.mark.parametrize("ragged", [False, True])
def test_train_step_cpu_fp32(bench, provider, ragged):
    run_case(bench, provider, "minilm", 8, 128, device="cpu", dtype=torch.float32, ragged=ragged, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("provider", ["engine", "transformers"])
def test_train_step_bert_base_cuda_bf16(bench, provider):
    run_case(bench, provider, "bert-base", 32, 128, device="cuda", dtype=torch.bfloat16, ragged=False, rtol=2e-2)
