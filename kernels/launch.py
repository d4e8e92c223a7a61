"""Kernel launches through the cheapest entry the installed Triton offers for an already compiled configuration.

    launch(kernel, grid, *args, **kwargs)      # same meaning as kernel[grid](*args, **kwargs)

``kernel[grid](...)`` pays, on every call, for Triton's general path: option parsing with environment reads,
a cache key built by formatting the options as a string, a check of the kernel's global variables, launch
metadata for profiler hooks, and for autotuned kernels the autotuner's argument dictionaries. Once a
configuration has been compiled and launched that way, ``launch`` keeps its compiled kernel and later calls with
the same specialisation go straight to its launcher (``CompiledKernel.run``, the entry point the generated
launch code exposes in Triton 3.6 and 3.9):

  1. autotuned kernels: the configuration the autotuner chose for this call's key (its own cache; the same key:
     the tuning arguments' values and every tensor's dtype) -> its constexprs and launch options;
  2. ``binder(*args, **kwargs)``: the kernel's own argument binder, i.e. Triton's specialisation of every
     argument (dtype, 16-byte alignment of pointers and integers, integers equal to 1), so the compiled kernel is
     reused exactly when Triton would reuse it;
  3. (specialisation, options, device) -> the compiled kernel's launcher, function handle and metadata;
  4. ``run(grid, stream, function, metadata, None, None, None, *arguments)``.

Everything else goes through ``kernel[grid](...)``: the first call of a specialisation (it compiles, autotunes),
the interpreter (TRITON_INTERPRET=1), launch hooks (a profiler attached through ``triton.knobs``), autotuner
configurations with pre-hooks, and any Triton whose objects lack these attributes. If the direct launch raises
a TypeError or AttributeError (a Triton whose launcher changed), it is switched off for the process with a
warning and the call is repeated through ``kernel[grid](...)``. ``ENGINE_FAST_LAUNCH=0`` (read at import) or
``launch.ENABLED = False`` switches it off.
"""
from __future__ import annotations

import os
import warnings

import triton

__all__ = ["ENABLED", "launch"]

ENABLED = os.environ.get("ENGINE_FAST_LAUNCH", "1").strip() not in ("0", "false", "False")
_COMPILED: dict[tuple, tuple] = {}  # (jit fn, device, specialisation, options) -> (run, function, metadata)
_DRIVER: list = []  # [get_current_device, get_current_stream, runtime knobs], bound on first use


def _driver() -> list:
    if not _DRIVER:
        from triton import knobs

        active = triton.runtime.driver.active
        _DRIVER.extend((active.get_current_device, active.get_current_stream, knobs.runtime))
    return _DRIVER


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.jit`` or ``triton.autotune`` kernel (see the module doc)."""
    global ENABLED
    if not ENABLED or _interpreting():
        kernel[grid](*args, **kwargs)
        return
    try:
        if _fast(kernel, grid, args, kwargs):
            return
    except (TypeError, AttributeError) as exc:
        ENABLED = False
        warnings.warn(f"engine: direct Triton launches switched off ({type(exc).__name__}: {exc}); "
                      f"using kernel[grid](...) from now on", RuntimeWarning, stacklevel=2)
    kernel[grid](*args, **kwargs)


def _fast(kernel, grid, args: tuple, kwargs: dict) -> bool:
    """Launch through a kept compiled kernel; False when this call must take Triton's own path (it then records
    the compiled kernel that path produces, for the next call)."""
    get_device, get_stream, knobs = _driver()
    if knobs.launch_enter_hook.calls or knobs.launch_exit_hook.calls:
        return False
    jit = kernel
    tuner = None
    if isinstance(kernel, triton.runtime.Autotuner):
        tuner, jit = kernel, kernel.fn
        config = _tuned_config(tuner, args, kwargs)
        if config is None:  # not tuned yet for this key (or a pre-hook): the autotuner's own path
            _record(jit, get_device(), None, kernel[grid](*args, **kwargs), tuner, args, kwargs)
            return True
        kwargs = {**kwargs, **config.all_kwargs()}
    if not isinstance(jit, triton.runtime.JITFunction):
        return False
    device = get_device()
    caches = jit.device_caches.get(device)
    if caches is None:
        return False
    bound, spec, options = caches[-1](*args, **kwargs)
    key = (jit, device, tuple(spec), tuple(options.items()))
    hit = _COMPILED.get(key)
    if hit is None:
        _record(jit, device, key, jit[grid](*args, **kwargs), None, args, kwargs)  # (tuned: its config's kwargs)
        return True
    run, function, metadata = hit
    if callable(grid):
        grid = grid(bound)
    n = len(grid)
    run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, get_stream(device), function, metadata,
        None, None, None, *bound.values())
    return True


def _tuned_config(tuner, args: tuple, kwargs: dict):
    """The configuration ``tuner`` chose for this call's key (the autotuner's own key: the values of its key
    arguments, then the dtype of every argument that has one), or None when it must run itself."""
    configs = tuner.configs
    if len(configs) == 1:
        config = configs[0]
    else:
        names = tuner.arg_names
        given = dict(zip(names, args))
        given.update((k, v) for k, v in kwargs.items() if k in names)
        key = [given[k] for k in tuner.keys if k in given]
        key += [str(v.dtype) for v in given.values() if hasattr(v, "dtype")]
        config = tuner.cache.get(tuple(key))
    if config is None or config.pre_hook is not None:
        return None
    return config


def _record(jit, device, key, compiled, tuner, args: tuple, kwargs: dict) -> None:
    """Keep the kernel Triton's own path just compiled (or found) and launched, under this call's key."""
    if compiled is None or not hasattr(compiled, "packed_metadata"):
        return
    if key is None:  # an autotuned call: its key needs the configuration the tuner has now chosen
        config = _tuned_config(tuner, args, kwargs)
        caches = jit.device_caches.get(device)
        if config is None or caches is None:
            return
        _, spec, options = caches[-1](*args, **{**kwargs, **config.all_kwargs()})
        key = (jit, device, tuple(spec), tuple(options.items()))
    if len(_COMPILED) > 4096:  # a bound on pathological shape churn
        _COMPILED.clear()
    _COMPILED[key] = (compiled.run, compiled.function, compiled.packed_metadata)
