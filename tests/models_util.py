"""Helpers for the model tests: tiny random HF models (every parameter perturbed), inputs, main outputs."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, processors

VOCAB = {"gpt2": 97, "bert": 103, "albert": 89, "roberta": 101}


def hf_config(arch: str) -> T.PretrainedConfig:
    """A tiny config for ``arch`` (odd sizes; ALBERT with shared groups; options varied across classes)."""
    for prefix in ("UMT5", "MT5", "T5"):  # the T5 family (engine's T5 tests build their own models: tests/test_t5.py)
        if arch.startswith(prefix):
            return getattr(T, f"{prefix}Config")(vocab_size=61, d_model=24, d_kv=5, d_ff=37, num_layers=2,
                                                 num_heads=3, architectures=[arch])
    if arch.startswith("GPT2"):
        extra = {"activation_function": "gelu", "scale_attn_by_inverse_layer_idx": True, "n_inner": 53} \
            if arch == "GPT2Model" else {}
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB["gpt2"], n_positions=24,
                            architectures=[arch], **extra)
    common = dict(hidden_size=32, num_attention_heads=4, intermediate_size=37, max_position_embeddings=24,
                  architectures=[arch], num_labels=2 if arch.endswith("QuestionAnswering") else 3)
    if arch.startswith("Albert"):
        return T.AlbertConfig(vocab_size=VOCAB["albert"], embedding_size=16, num_hidden_layers=4,
                              num_hidden_groups=2, inner_group_num=2, **common)
    if arch.startswith("Roberta"):
        return T.RobertaConfig(vocab_size=VOCAB["roberta"], num_hidden_layers=2, pad_token_id=1,
                               type_vocab_size=1, **{**common, "max_position_embeddings": 26})
    act = "gelu_new" if arch == "BertForMaskedLM" else "gelu"
    return T.BertConfig(vocab_size=VOCAB["bert"], num_hidden_layers=2, type_vocab_size=2, hidden_act=act, **common)


def make_hf(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb(getattr(T, arch)(hf_config(arch)).eval())


def perturb(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Add noise to every parameter (in place): nothing left at its initial value, LayerNorms and biases included."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def family(arch: str) -> str:
    return "gpt2" if arch.startswith("GPT2") else arch.split("For")[0].replace("Model", "").lower()


def inputs(arch: str, *, B: int = 3, N: int = 11, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random ids with a padded batch (left padding for GPT-2, right for encoders), token types for BERT/ALBERT."""
    g = torch.Generator().manual_seed(seed)
    fam = family(arch)
    ids = torch.randint(2, VOCAB[fam], (B, N), generator=g)
    lens = [N, max(1, N - 4), max(1, N // 3)][:B] + [N] * max(0, B - 3)
    mask = torch.zeros(B, N, dtype=torch.long)
    for b, n in enumerate(lens):
        if fam == "gpt2":
            mask[b, N - n:] = 1
        else:
            mask[b, :n] = 1
    if fam == "roberta":
        ids = ids.masked_fill(mask == 0, 1)  # pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if fam in ("bert", "albert"):
        out["token_type_ids"] = torch.randint(0, 2, (B, N), generator=g)
    return out


def hf_main(arch: str, out) -> torch.Tensor | tuple[torch.Tensor, ...]:
    if arch.endswith("QuestionAnswering"):
        return out.start_logits, out.end_logits
    if arch.endswith("PreTraining"):
        return out.prediction_logits, out.seq_relationship_logits
    if arch.endswith("Model") and "LMHead" not in arch:
        return out.last_hidden_state
    return out.logits


def assert_close_valid(ours, ref, mask: torch.Tensor, *, rtol: float = 1e-4) -> None:
    """Relative error (max |ours - ref| / max |ref|) below rtol, over positions where mask == 1."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape, (a.shape, b.shape)
        assert torch.isfinite(a).all()
        if a.dim() >= 2 and a.shape[:2] == mask.shape:
            a, b = a[mask.bool()], b[mask.bool()]
        err = (a.double() - b.double()).abs().max() / b.double().abs().max()
        assert err < rtol, f"relative error {err:.3g} >= {rtol}"


T5_WORDS = ("translate english to german summarize the cat sat on mat a dog ran in park sky is blue das ist "
            "gut haus katze hund").split()
T5_VOCAB = ["<pad>", "</s>", "<unk>", *T5_WORDS]


def t5_dir(root: Path, arch: str, *, seed: int = 0) -> Path:
    """A tiny random T5-family folder (d_model 32, GeGLU, every parameter perturbed) with a word-level tokenizer.json
    built here (T5's ids: <pad> 0, </s> 1 appended to every text); ``arch`` its class (T5EncoderModel, ...)."""
    d = root / arch
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(T5_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.add_special_tokens(T5_VOCAB[:3])  # as T5's tokenizer.json: decode skips them
    cfg = T.T5Config(vocab_size=len(T5_VOCAB), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                     feed_forward_proj="gated-gelu", decoder_start_token_id=0, architectures=[arch])
    torch.manual_seed(seed)
    model = getattr(T, arch)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.4)
    model.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    return d


def left_padded_prompts(B: int, T_: int, vocab: int, *, seed: int = 0,
                        pads: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, T) in [0, vocab) and a left-padding mask with ``pads[b]`` leading zeros in row b (the pad
    positions keep their random ids)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T_), generator=g)
    mask = torch.ones(B, T_, dtype=torch.long)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    return ids, mask
