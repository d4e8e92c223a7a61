"""engine inside Hugging Face transformers.

    import engine                                   # registers attn_implementation="engine" once transformers loads
    model = AutoModel.from_pretrained(path, attn_implementation="engine")  # or .set_attn_implementation("engine")
    report = engine.patch(model)                    # attention + fused LayerNorm / add + LayerNorm / bias + GELU
    print(report); engine.unpatch(model)            # back to plain transformers

Pieces: ``attention`` (the attention and mask functions registered as "engine"), ``forwards`` (the fused module
forwards), ``patching`` (patch / unpatch / PatchReport), ``_hook`` (registration when transformers is imported, without
importing it: ``import engine`` stays as fast as before). This package imports transformers only when one of the
names below is used.
"""
from __future__ import annotations

__all__ = ["NAME", "PatchReport", "attention_forward", "attention_mask", "patch", "register", "unpatch"]

_WHERE = {"NAME": "attention", "attention_forward": "attention", "attention_mask": "attention",
          "register": "attention", "patch": "patching", "unpatch": "patching", "PatchReport": "patching"}


def __getattr__(name: str):
    import importlib

    if name in ("attention", "forwards", "patching"):  # submodules, imported on first use
        return importlib.import_module(f"engine.hf.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'engine.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.hf.{_WHERE[name]}"), name)
