import pytest
import torch

from engine import backend


def test_default_is_auto_and_cpu_goes_to_torch(monkeypatch):
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    assert backend.backend_name() == "auto"
    assert backend.use_triton(torch.randn(3)) is False


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="ENGINE_BACKEND must be one of auto, torch, triton"):
        backend.use_triton(torch.randn(3))


def test_torch_backend_never_uses_triton(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    assert backend.use_triton(torch.randn(3)) is False


def test_forced_triton_on_cpu_uses_the_interpreter(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.use_triton(torch.randn(3), None) is True


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.use_triton(torch.randn(3), op="layer_norm")


def test_forced_triton_without_triton_says_why(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setattr(backend, "triton_import_error", lambda: "ImportError: no module named triton")
    with pytest.raises(RuntimeError, match="Triton cannot be imported"):
        backend.use_triton(torch.randn(3), op="gelu")


def test_grad_and_unsupported_calls_go_to_torch_even_when_forced(monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(3, requires_grad=True)
    assert backend.use_triton(x) is False
    with torch.no_grad():
        assert backend.use_triton(x) is True
    assert backend.use_triton(torch.randn(3), supported=False) is False
