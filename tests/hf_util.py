"""Helpers for the transformers-integration tests: tiny perturbed models of each family, padded inputs, kernel spies."""
from __future__ import annotations

import copy

import torch
import transformers as T

from models_util import perturb

VOCAB = 61

# One class per family, odd sizes, both GELU forms, ALBERT with grouped shared layers, GPT-2 with head dim 16 (the
# decode kernel's smallest) and layer-wise attention scaling.
CONFIGS = {
    "BertForMaskedLM": (T.BertConfig, dict(
        vocab_size=VOCAB, hidden_size=36, num_attention_heads=4, intermediate_size=53, num_hidden_layers=2,
        max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu")),
    "RobertaForSequenceClassification": (T.RobertaConfig, dict(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=45, num_hidden_layers=2,
        max_position_embeddings=34, type_vocab_size=1, pad_token_id=1, hidden_act="gelu_new", num_labels=3)),
    "AlbertForMaskedLM": (T.AlbertConfig, dict(
        vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=37,
        num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, max_position_embeddings=32)),
    "ElectraForPreTraining": (T.ElectraConfig, dict(
        vocab_size=VOCAB, embedding_size=24, hidden_size=32, num_attention_heads=4, intermediate_size=40,
        num_hidden_layers=2, max_position_embeddings=32, hidden_act="gelu")),
    "DistilBertForMaskedLM": (T.DistilBertConfig, dict(
        vocab_size=VOCAB, dim=32, n_heads=4, hidden_dim=44, n_layers=2, max_position_embeddings=32,
        activation="gelu")),
    "GPT2LMHeadModel": (T.GPT2Config, dict(
        vocab_size=VOCAB, n_embd=32, n_head=2, n_layer=2, n_inner=53, n_positions=40, bos_token_id=0,
        eos_token_id=0, scale_attn_by_inverse_layer_idx=True)),
    "T5ForConditionalGeneration": (T.T5Config, dict(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=40, num_layers=2, relative_attention_num_buckets=8,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)),
}


def make(arch: str, *, seed: int = 0, attn: str = "sdpa", **overrides) -> torch.nn.Module:
    """A tiny ``arch`` with every parameter perturbed, in eval mode, with attn_implementation ``attn``."""
    torch.manual_seed(seed)
    config_class, defaults = CONFIGS[arch]
    cfg = config_class(**{**defaults, **overrides})
    cfg._attn_implementation = attn
    return perturb(getattr(T, arch)(cfg)).eval()


def twin(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy (same weights) to patch while ``model`` stays the reference."""
    return copy.deepcopy(model)


def batch(arch: str, *, B: int = 3, N: int = 11, seed: int = 1, left: bool | None = None) -> dict[str, torch.Tensor]:
    """Random ids, a padded batch (lengths N, N - 4, N // 3, then N), right padding (left for GPT-2)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (B, N), generator=g)
    mask = torch.zeros(B, N, dtype=torch.long)
    left = arch.startswith("GPT2") if left is None else left
    for b, n in enumerate(([N, max(1, N - 4), max(1, N // 3)] + [N] * B)[:B]):
        if left:
            mask[b, N - n:] = 1
        else:
            mask[b, :n] = 1
    if arch.startswith("Roberta"):
        ids = ids.masked_fill(mask == 0, 1)  # pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if arch.startswith("T5"):
        out["decoder_input_ids"] = ids[:, :5]
    return out


def main_output(out) -> torch.Tensor:
    """The tensor a parity test compares: logits (or the encoder's last hidden state)."""
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """max |ours - ref| / max |ref| over the positions keep == 1 of the leading (B, N) dims (all when None)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.isfinite(ours).all()
    if keep is not None and ours.dim() >= 2 and ours.shape[:2] == keep.shape:
        ours, ref = ours[keep.bool()], ref[keep.bool()]
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


class KernelSpy:
    """Counts calls of engine's kernel launchers (``engine.kernels.*``) while still running them."""

    LAUNCHERS = {"attention": ("attention", "attention_fwd"), "varlen": ("attention", "varlen_fwd"),
                 "decode": ("attention.decode", "decode_attention_fwd"), "layer_norm": ("norm", "norm_fwd"),
                 "gelu": ("gelu", "gelu_fwd")}

    def __init__(self, monkeypatch) -> None:
        import importlib

        self.calls = dict.fromkeys(self.LAUNCHERS, 0)
        for key, (mod, fn) in self.LAUNCHERS.items():
            module = importlib.import_module(f"engine.kernels.{mod}")
            monkeypatch.setattr(module, fn, self._counting(key, getattr(module, fn)))

    def _counting(self, key: str, fn):
        def wrapper(*args, **kwargs):
            self.calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper
