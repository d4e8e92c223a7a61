"""engine.kernels.launch: compiled kernels are reused exactly when Triton would reuse them, and only then.

No GPU here, so Triton's launch is replaced by a recorder at its edges: ``jit.run`` (Triton's own path, which
compiles) returns a stand-in compiled kernel whose ``run`` (the generated launcher) records its arguments. In
between everything is Triton's: the JITFunction, its argument binder built for an sm_90 target (the real
specialisation of every argument: dtypes, 16-byte alignment, integers equal to 1), the autotuner's key and
configurations. The GPU tests (tests/ops, gpu marker) run the real launches.
"""
from __future__ import annotations

import types

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from engine.kernels import launch as L  # noqa: E402


def _source(X, Y, n, stride, BLOCK: "tl.constexpr", FLAG: "tl.constexpr" = False):  # noqa: F821
    pass


class Recorder:
    def __init__(self):
        self.slow, self.fast = [], []

    def compiled(self, tag):
        def run(*a):
            self.fast.append((tag, a))
        return types.SimpleNamespace(run=run, function=f"fn-{tag}", packed_metadata=f"md-{tag}")


@pytest.fixture
def setup(monkeypatch):
    """A real JITFunction with Triton's sm_90 binder on device 0; Triton's path and the launcher recorded."""
    jit = JITFunction(_source)
    binder = create_function_from_signature(jit.signature, jit.params, make_backend(GPUTarget("cuda", 90, 32)))
    monkeypatch.setattr(jit, "device_caches", {0: ({}, {}, None, None, binder)}, raising=False)
    rec = Recorder()

    def triton_path(*args, grid, warmup, **kwargs):
        rec.slow.append((grid, args, kwargs))
        return rec.compiled(len(rec.slow))

    monkeypatch.setattr(jit, "run", triton_path, raising=False)
    knobs = types.SimpleNamespace(launch_enter_hook=types.SimpleNamespace(calls=[]),
                                  launch_exit_hook=types.SimpleNamespace(calls=[]))
    monkeypatch.setattr(L, "_DRIVER", [lambda: 0, lambda device: 1234, knobs])
    monkeypatch.setattr(L, "_interpreting", lambda: False)
    monkeypatch.setattr(L, "ENABLED", True)
    monkeypatch.setattr(L, "_COMPILED", {})
    return jit, rec, knobs


def _tensors(offset=0):
    buf = torch.zeros(64)
    return buf[offset:offset + 32], torch.zeros(32)


def test_reuse_follows_triton_specialisation(setup):
    jit, rec, _ = setup
    x, y = _tensors()
    L.launch(jit, (3,), x, y, 32, 64, BLOCK=128, num_warps=4)  # first: Triton's path (compiles)
    L.launch(jit, (3,), x, y, 32, 64, BLOCK=128, num_warps=4)  # same specialisation: the kept kernel
    assert len(rec.slow) == 1 and len(rec.fast) == 1
    tag, a = rec.fast[0]
    assert tag == 1 and a[:9] == (3, 1, 1, 1234, "fn-1", "md-1", None, None, None)
    assert a[9:] == (x, y, 32, 64, 128, False)  # every argument in order, constexprs and defaults included

    for args, kw in [((*_tensors(1), 32, 64), {}),    # X no longer 16-byte aligned
                     ((x, y, 33, 64), {}),            # n no longer a multiple of 16
                     ((x, y, 32, 1), {}),             # stride == 1: Triton makes it a constant
                     ((x.half(), y, 32, 64), {}),     # another dtype
                     ((x, y, 32, 64), {"FLAG": True}),  # another constexpr
                     ((x, y, 32, 64), {"num_warps": 8})]:  # another launch option
        before = len(rec.slow)
        L.launch(jit, (3,), *args, **{"BLOCK": 128, "num_warps": 4, **kw})
        assert len(rec.slow) == before + 1, (args, kw)
    L.launch(jit, (3,), x, y, 48, 80, BLOCK=128, num_warps=4)  # other values, same specialisation: reused
    assert rec.fast[-1][0] == 1 and rec.fast[-1][1][11:13] == (48, 80)


def test_hooks_disabled_and_interpreter_take_tritons_path(setup, monkeypatch):
    jit, rec, knobs = setup
    x, y = _tensors()
    L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    knobs.launch_enter_hook.calls.append(print)  # a profiler is listening: Triton must see every launch
    L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    knobs.launch_enter_hook.calls.clear()
    monkeypatch.setattr(L, "ENABLED", False)
    L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    monkeypatch.setattr(L, "ENABLED", True)
    monkeypatch.setattr(L, "_interpreting", lambda: True)
    L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    assert len(rec.slow) == 4 and not rec.fast


def test_a_changed_launcher_switches_direct_launches_off(setup, monkeypatch):
    jit, rec, _ = setup
    x, y = _tensors()
    L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    key = next(iter(L._COMPILED))

    def broken(*a):
        raise TypeError("launcher takes 12 arguments")

    L._COMPILED[key] = (broken, "f", "m")
    with pytest.warns(RuntimeWarning, match="direct Triton launches switched off"):
        L.launch(jit, (1,), x, y, 32, 64, BLOCK=128)
    assert L.ENABLED is False and len(rec.slow) == 2  # the call still ran, through Triton


def test_autotuned_kernel_uses_the_tuners_choice(setup, monkeypatch):
    jit, rec, _ = setup
    configs = [triton.Config({"BLOCK": 64}, num_warps=4), triton.Config({"BLOCK": 256}, num_warps=8)]
    tuner = triton.autotune(configs=configs, key=["n"])(jit)
    tuned = []

    def tuner_path(*args, grid, warmup, **kwargs):  # Autotuner.run after benchmarking: cache the winner, launch it
        key = (args[2], *[str(a.dtype) for a in args if hasattr(a, "dtype")])
        tuner.cache[key] = configs[1]
        tuned.append(key)
        return jit.run(*args, grid=grid, warmup=warmup, **kwargs, **configs[1].all_kwargs())

    monkeypatch.setattr(tuner, "run", tuner_path, raising=False)
    x, y = _tensors()
    grid = lambda meta: (64 // meta["BLOCK"],)  # noqa: E731
    L.launch(tuner, grid, x, y, 32, 64)
    L.launch(tuner, grid, x, y, 32, 64)
    assert len(tuned) == 1 and len(rec.slow) == 1 and len(rec.fast) == 1
    a = rec.fast[0][1]
    assert a[0] == 64 // 256 and a[-2:] == (256, False)  # grid and constexpr from the chosen config
    L.launch(tuner, grid, x, y, 48, 64)  # a new tuning key: the autotuner runs again
    assert len(tuned) == 2


@pytest.mark.gpu
def test_direct_launches_on_cuda_give_tritons_results():
    """Every launcher on a GPU: the third call of each op launches directly and matches Triton's own launch."""
    import warnings

    from engine import ops

    assert L.ENABLED, "ENGINE_FAST_LAUNCH is off in this environment"
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    x, res, w, b = r(33, 768), r(33, 768), r(768), r(768)
    q, k, v = r(2, 12, 77, 64), r(2, 12, 77, 64), r(2, 12, 77, 64)
    pq = r(50, 4, 64)
    cu = torch.tensor([0, 20, 50], dtype=torch.int32, device="cuda")
    dq, kc = r(3, 4, 1, 64), r(3, 4, 300, 64)
    lens = torch.tensor([300, 17, 150], dtype=torch.int32, device="cuda")
    calls = [lambda: ops.layer_norm(x, (768,), w, b), lambda: ops.add_layer_norm(x, res, w, b)[0],
             lambda: ops.bias_gelu(x, b, approximate="tanh"), lambda: ops.gelu(x),
             lambda: ops.scaled_dot_product_attention(q, k, v, is_causal=True),
             lambda: ops.scaled_dot_product_attention(q.float(), k.float(), v.float()),
             lambda: ops.varlen_attention(pq, pq, pq, cu, cu, 30, 30, causal=True),
             lambda: ops.decode_attention(dq, kc, kc, lens)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a launcher Triton changed would warn here
        for fn in calls:
            L.ENABLED = False
            try:
                ref = fn()
            finally:
                L.ENABLED = True
            before = len(L._COMPILED)
            outs = [fn() for _ in range(3)]
            assert len(L._COMPILED) >= before
            for out in outs:
                assert torch.equal(out, ref)
    assert L.ENABLED and L._COMPILED
