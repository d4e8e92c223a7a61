"""Register engine's attention with transformers the moment transformers loads, without importing it ourselves.

``import engine`` calls ``install()``. Importing transformers' modeling code costs seconds (measured: ``import
transformers.modeling_utils`` adds ~3.5 s to the ~8 s ``import engine`` on the 2-core CI box), so engine never
imports it; instead:

* a transformers module that is already loaded gets its entry now;
* otherwise a finder on ``sys.meta_path`` waits for ``transformers.modeling_utils`` (home of AttentionInterface)
  and ``transformers.masking_utils`` (home of AttentionMaskInterface): it lets the normal finders locate each,
  wraps the loader so that the module executes unchanged, then registers "engine" on it. The finder removes itself
  once both are done. A failure to register is reported as a warning; it never breaks importing transformers.

This module imports nothing from transformers and nothing heavy from engine; the callbacks live in
``engine.hf.attention`` (torch and engine only).
"""
from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

MODELING = "transformers.modeling_utils"
MASKING = "transformers.masking_utils"


def _register_attention(module: ModuleType) -> None:
    from engine.hf.attention import NAME, attention_forward

    module.AttentionInterface.register(NAME, attention_forward)


def _register_mask(module: ModuleType) -> None:
    from engine.hf.attention import NAME, attention_mask

    module.AttentionMaskInterface.register(NAME, attention_mask)


_CALLBACKS: dict[str, Callable[[ModuleType], None]] = {MODELING: _register_attention, MASKING: _register_mask}


def _run(name: str, module: ModuleType) -> None:
    try:
        _CALLBACKS[name](module)
    except Exception as exc:  # noqa: BLE001 - never break the user's import of transformers
        warnings.warn(f"engine could not register its attention with {name} ({type(exc).__name__}: {exc}); "
                      'attn_implementation="engine" is unavailable. Call engine.hf.register() to see the error.',
                      RuntimeWarning, stacklevel=2)


class _Loader(importlib.abc.Loader):
    """The real loader, plus the registration once the module has executed. Everything else is delegated."""

    def __init__(self, loader: importlib.abc.Loader, name: str, finder: _Finder) -> None:
        self._loader, self._name, self._finder = loader, name, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._finder.done(self._name)
        _run(self._name, module)

    def __getattr__(self, attr: str):  # get_source, get_filename, is_package, get_resource_reader, ...
        return getattr(self._loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self._waiting = set(names)

    def done(self, name: str) -> None:
        self._waiting.discard(name)
        if not self._waiting and self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._waiting:
            return None
        spec = None
        for finder in sys.meta_path:  # the finders after us would have found it: ask them, in order
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname, self)
        return spec


def install() -> None:
    """Register now with the transformers modules already loaded; wait for the others (idempotent)."""
    waiting = set()
    for name in (MODELING, MASKING):
        module = sys.modules.get(name)
        if module is not None:
            _run(name, module)
        else:
            waiting.add(name)
    if waiting and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(waiting))
