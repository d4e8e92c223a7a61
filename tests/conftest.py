"""Test set-up shared by the whole suite.

On a machine without CUDA the Triton kernels run in Triton's interpreter: TRITON_INTERPRET=1 is set here, before
any kernel module is imported (Triton reads it when a kernel is decorated). Tests that exercise a kernel ask for
the `triton_backend` fixture (ENGINE_BACKEND=triton for that test), so a silent fallback to PyTorch would be an
error, not a pass. Tests marked `gpu` run only where CUDA is available.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if HAS_CUDA else "cpu"


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
