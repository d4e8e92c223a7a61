"""``patch(model)`` / ``unpatch(model)``: run a loaded transformers model on engine's fused ops, in place.

What is patched (the families engine knows; every other module is left alone):

    attention        the model's attn_implementation becomes "engine" (engine.hf.attention), submodels included
    add_layer_norm   BERT / RoBERTa / ELECTRA SelfOutput and Output, ALBERT attention and layer, DistilBERT block:
                     residual add + LayerNorm in one kernel
    bias_gelu        BERT / RoBERTa / ELECTRA Intermediate, GPT-2 MLP, DistilBERT FFN, ALBERT layer: the up
                     projection's bias and the GELU (erf or tanh form, as the config names it) in one kernel
    layer_norm       every other torch.nn.LayerNorm (embeddings, GPT-2's ln_1 / ln_2 / ln_f, heads)
    packing          BERT / RoBERTa / ELECTRA / ALBERT / DistilBERT encoders: padded batches run as their real tokens

Each patch binds a forward to the module instance (``module.forward``); the class, the parameters and the
state_dict are untouched, and ``unpatch`` deletes exactly what ``patch`` added. ``copy.deepcopy`` keeps the patches;
pickling a whole patched model (``torch.save(model)``) is not supported: save its state_dict, or unpatch first.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from engine.hf import forwards as fw
from engine.hf.attention import NAME

_MARK = "_engine_patch"  # set on every module whose forward engine bound: the kind of patch
_EXTRA = ("_engine_gelu", "_engine_config", "_engine_pack")  # per-module settings the forwards read
_PREVIOUS = "_engine_previous_attn_implementation"  # set on the patched model: the implementation to restore

_BERTLIKE = ("bert", "roberta", "electra")  # transformers.models.<family>.modeling_<family>


@dataclass
class PatchReport:
    """What ``patch`` / ``unpatch`` did: module names per kind of patch, and known modules it left alone (why)."""

    patched: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    attention: str | None = None  # the attn_implementation now in force after patch (restored one after unpatch)

    def add(self, kind: str, name: str) -> None:
        self.patched.setdefault(kind, []).append(name or "<model>")

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.patched.values())

    def __str__(self) -> str:
        lines = [f"attn_implementation: {self.attention}"] if self.attention else []
        lines += [f"{kind}: {len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                  for kind, names in self.patched.items()]
        lines += [f"left alone: {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines) or "nothing patched"


def _family(module: nn.Module) -> str | None:
    """'bert' for a class defined in transformers.models.bert.modeling_bert, etc.; None outside transformers."""
    parts = type(module).__module__.split(".")
    return parts[2] if len(parts) == 4 and parts[:2] == ["transformers", "models"] else None


def _gelu(act: object) -> str | None:
    """The ``approximate`` of ops.bias_gelu that computes activation module ``act``, or None if it is not a GELU."""
    from transformers import activations as A

    if type(act) is nn.GELU:
        return act.approximate
    if type(act) is A.GELUActivation:  # erf (C or Python form)
        return "none"
    names = ("GELUTanh", "NewGELUActivation", "FastGELUActivation", "AccurateGELUActivation")
    tanh = tuple(getattr(A, n) for n in names if hasattr(A, n))
    return "tanh" if type(act) in tanh else None


def _plan(module: nn.Module) -> tuple[str, Callable, dict] | str | None:
    """(kind, forward, settings) for a module engine patches; a reason string for a known module it cannot; None for
    a module it does not know. Settings: attributes to set on the module for its forward."""
    fam, cls = _family(module), type(module).__name__
    if fam in _BERTLIKE:
        prefix = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra"}[fam]
        if cls in (f"{prefix}SelfOutput", f"{prefix}Output"):
            return "add_layer_norm", fw.output_forward, {}
        if cls == f"{prefix}Intermediate":
            return _with_gelu("bias_gelu", fw.intermediate_forward, module.intermediate_act_fn, module.dense)
        if cls == f"{prefix}Encoder":
            return "packing", fw.encoder_forward, {}
    elif fam == "albert":
        if cls == "AlbertAttention":
            return "add_layer_norm", fw.albert_attention_forward, {}
        if cls == "AlbertLayer":
            if module.chunk_size_feed_forward:
                return "chunk_size_feed_forward is set (chunked feed-forward)"
            return _with_gelu("add_layer_norm+bias_gelu", fw.albert_layer_forward, module.activation,
                              module.ffn)
        if cls == "AlbertTransformer":
            return "packing", fw.encoder_forward, {}
    elif fam == "distilbert":
        if cls == "TransformerBlock":
            return "add_layer_norm", fw.distilbert_block_forward, {}
        if cls == "FFN":
            if module.chunk_size_feed_forward:
                return "chunk_size_feed_forward is set (chunked feed-forward)"
            return _with_gelu("bias_gelu", fw.distilbert_ffn_forward, module.activation, module.lin1)
        if cls == "Transformer":
            return "packing", fw.encoder_forward, {}
    elif fam == "gpt2" and cls == "GPT2MLP":
        return _with_gelu("bias_gelu", fw.gpt2_mlp_forward, module.act, module.c_fc)
    if type(module) is nn.LayerNorm:
        return "layer_norm", fw.layer_norm_forward, {}
    return None


def _with_gelu(kind: str, forward: Callable, act: object, linear: nn.Module) -> tuple[str, Callable, dict] | str:
    """The bias + GELU plan, when ``act`` is a GELU and ``linear`` a plain float layer the fused forward can read the
    weight and bias of (not quantised or adapter-wrapped, no hooks that calling it would run)."""
    approximate = _gelu(act)
    if approximate is None:
        return f"activation {type(act).__name__} is not a GELU engine fuses"
    from transformers.pytorch_utils import Conv1D

    plain = type(linear) in (nn.Linear, Conv1D) and linear.bias is not None and linear.weight.is_floating_point()
    if not plain or linear._forward_hooks or linear._forward_pre_hooks:
        return f"{type(linear).__name__} is not a plain Linear/Conv1D with a bias and no hooks"
    return kind, forward, {"_engine_gelu": approximate}


def _consumed_norms(module: nn.Module, kind: str) -> list[nn.Module]:
    """The LayerNorm modules a fused block computes itself (their own forward no longer runs)."""
    if "add_layer_norm" not in kind:
        return []
    return [m for m in module.children() if type(m) is nn.LayerNorm]


def patch(model: nn.Module, *, attention: bool = True, fused: bool = True, pack: bool | None = None) -> PatchReport:
    """Run ``model`` (a loaded transformers model) on engine's ops, in place; returns what was patched.

    attention: set attn_implementation="engine" (remembered: ``unpatch`` restores the previous one).
    fused: bind the fused forwards (add + LayerNorm, bias + GELU, LayerNorm) listed in this module's docstring.
    pack: padded batches of the known encoders run packed: None (default) on CUDA always and on the CPU when at
    least 1/16 of the tokens are padding (engine's own rule), True / False always / never. Packing applies in eval
    mode without autograd, outside torch.compile, when no per-layer outputs are being collected and attention is
    "engine"; positions where attention_mask == 0 then hold zeros instead of transformers' (unspecified) values.
    Patching twice is harmless; unknown modules are left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model); got {type(model).__name__}")
    if pack is not None and not isinstance(pack, bool):
        raise TypeError(f"pack must be None, True or False; got {pack!r}")
    report = PatchReport()
    if attention:
        _patch_attention(model, report)

    owner_config: dict[int, object] = {}  # id(module) -> the config of its nearest PreTrainedModel ancestor
    consumed: set[int] = set()
    todo = []
    for name, module in model.named_modules():  # parents before children
        cfg = module.config if _is_pretrained(module) else owner_config.get(id(module))
        for child in module.children():
            owner_config.setdefault(id(child), cfg)
        plan = _plan(module)
        if plan is None:
            continue
        if isinstance(plan, str):
            report.skipped[name] = plan
            continue
        kind, forward, settings = plan
        if kind == "packing":
            if cfg is None or getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
                report.skipped[name] = "packing needs an encoder-only config"
                continue
            settings = {"_engine_config": cfg, "_engine_pack": pack}
        elif not fused:
            continue
        consumed.update(id(m) for m in _consumed_norms(module, kind))
        todo.append((name, module, kind, forward, settings))

    for name, module, kind, forward, settings in todo:
        if kind == "layer_norm" and id(module) in consumed:
            continue
        _bind(module, kind, forward, settings)
        for part in kind.split("+"):
            report.add(part, name)
    return report


def _is_pretrained(module: nn.Module) -> bool:
    return hasattr(module, "set_attn_implementation") and hasattr(module, "config")


def _bind(module: nn.Module, kind: str, forward: Callable, settings: dict) -> None:
    for key, value in settings.items():
        object.__setattr__(module, key, value)
    object.__setattr__(module, "forward", forward.__get__(module))
    object.__setattr__(module, _MARK, kind)


def _patch_attention(model: nn.Module, report: PatchReport) -> None:
    if not _is_pretrained(model):
        report.skipped["<model>"] = "attention: not a transformers PreTrainedModel (no set_attn_implementation)"
        return
    current = model.config._attn_implementation
    if current != NAME:
        from engine.hf.attention import register

        register()  # a no-op when `import engine` already registered (it does once transformers is loaded)
        model.set_attn_implementation(NAME)
        if model.config._attn_implementation != NAME:
            report.skipped["<model>"] = (f"attention: {type(model).__name__} does not route attention through "
                                         "transformers' AttentionInterface")
            return
        object.__setattr__(model, _PREVIOUS, current)
    report.attention = NAME
    report.add("attention", "")


def unpatch(model: nn.Module) -> PatchReport:
    """Undo ``patch``: delete every forward it bound and restore the previous attn_implementation."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model); got {type(model).__name__}")
    report = PatchReport()
    for name, module in model.named_modules():
        kind = module.__dict__.pop(_MARK, None)
        if kind is None:
            continue
        module.__dict__.pop("forward", None)
        for key in _EXTRA:
            module.__dict__.pop(key, None)
        for part in kind.split("+"):
            report.add(part, name)
    previous = model.__dict__.pop(_PREVIOUS, None)
    if previous is not None:
        model.set_attn_implementation(previous)
        report.attention = previous
        report.add("attention", "")
    return report
