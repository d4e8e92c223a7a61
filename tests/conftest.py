"""Test set-up shared by the whole suite.

On a machine without CUDA the Triton kernels run in Triton's interpreter: TRITON_INTERPRET=1 is set here, before
any kernel module is imported (Triton reads it when a kernel is decorated). Tests that exercise a kernel ask for
the `triton_backend` fixture (ENGINE_BACKEND=triton for that test), so a silent fallback to PyTorch would be an
error, not a pass. Tests marked `gpu` run only where CUDA is available.
"""
import os
import warnings

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _hypothesis_profiles() -> None:
    """Property tests under Triton's interpreter report a failure in seconds, not minutes.

    Hypothesis shrinks a failing example for up to 5 minutes (an internal limit, not a setting); under the
    interpreter every shrink step re-runs a kernel, so a real bug made the suite look hung (issue 19). The
    "interpreter" profile (the default without CUDA) drops the shrink phase and stops at the first failure: that
    example is reported as drawn, and ``@reproduce_failure`` / the printed blob reproduces it. Example counts stay as each test sets
    them (10 where a test sets none), deadlines off (the interpreter's speed varies with load). The "gpu" profile
    (default with CUDA: compiled kernels are fast) keeps shrinking. HYPOTHESIS_PROFILE=name overrides. Loaded here,
    before the test modules are imported: a test's @settings inherits from the profile active when it is decorated.
    """
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:
        return
    common = dict(deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("interpreter", max_examples=10, report_multiple_bugs=False,
                              phases=(Phase.explicit, Phase.reuse, Phase.generate), **common)
    settings.register_profile("gpu", max_examples=25, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("gpu" if HAS_CUDA else "interpreter"))


_hypothesis_profiles()


def _interpreter_loop_probe() -> str | None:
    """None when Triton's interpreter runs a loop with a runtime bound, else why it cannot.

    Triton 3.6's interpreter converts a scalar tensor to a loop bound with ``int()`` of a shape-(1,) numpy array,
    which numpy >= 2.4 rejects (triton-lang/triton#9171; Triton 3.9's interpreter squeezes first). Every kernel
    whose loop bound is an argument (attention, decode, looped layer norm) then fails with an opaque
    InterpreterError. Compiled kernels on a GPU are not affected; this is a CPU test-environment problem.
    """
    import triton
    import triton.language as tl

    @triton.jit
    def _count(X, n):
        acc = 0
        for _ in range(0, n):
            acc += 1
        tl.store(X, acc)

    x = torch.zeros(1, dtype=torch.int32)
    try:
        with warnings.catch_warnings():  # numpy 1.25 - 2.3 warn about the same conversion: not news here
            warnings.simplefilter("ignore", DeprecationWarning)
            _count[(1,)](x, 3)
    except Exception as exc:  # noqa: BLE001 - report any failure of the probe as the reason
        return f"{type(exc).__name__}: {exc}"
    return None if int(x[0]) == 3 else f"the probe loop counted {int(x[0])}, not 3"


def pytest_configure(config):
    from engine.backend import interpreting

    if HAS_CUDA or not interpreting():
        return
    try:
        import numpy
        import triton
    except ImportError:
        return  # no Triton: the kernel tests say so themselves
    why = _interpreter_loop_probe()
    if why is not None:
        raise pytest.UsageError(
            f"Triton {triton.__version__}'s interpreter cannot run our kernels with numpy {numpy.__version__} "
            f"({why}). Triton 3.6's interpreter needs numpy < 2.4 (triton-lang/triton#9171): "
            "pip install 'numpy<2.4', or use a newer Triton."
        )


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where kernel tests put their tensors: CUDA when present, else the CPU (interpreter)."""
    return DEVICE


@pytest.fixture
def triton_backend(monkeypatch):
    """Force the Triton kernels for this test (interpreter on CPU)."""
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    yield


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread avoids OpenMP hand-off costs on a small shared machine (speed only).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
