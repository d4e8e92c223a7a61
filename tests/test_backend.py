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


def test_engine_imports_and_runs_without_triton():
    """Where Triton is missing (not Linux x86_64), engine imports and runs on PyTorch; forcing Triton says why."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        class NoTriton:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton is not installed (blocked by the test)")
        sys.meta_path.insert(0, NoTriton())
        import os, torch, engine
        from engine import ops
        x = torch.randn(3, 33)
        y = ops.layer_norm(x, (33,))
        assert torch.allclose(y, torch.nn.functional.layer_norm(x, (33,)), atol=1e-6)
        os.environ["ENGINE_BACKEND"] = "triton"
        try:
            ops.gelu(x)
        except RuntimeError as exc:
            assert "Triton cannot be imported" in str(exc), exc
            print("ok")
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ENGINE_BACKEND", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_route_caches_but_follows_the_environment(monkeypatch):
    """backend.Route (what the ops call): the cached decision changes when ENGINE_BACKEND / TRITON_INTERPRET do,
    the op's verdict comes from its key, grad and forced-Triton errors behave as in use_triton."""
    seen = []
    route = backend.Route("op_x", lambda key: seen.append(key) or key == "ok")
    x = torch.randn(3)
    monkeypatch.delenv("ENGINE_BACKEND", raising=False)
    assert route(x, "ok") is False and route(x, "ok") is False  # auto on a CPU: PyTorch
    assert route.pytorch_only(x.is_cuda) and not route.pytorch_only(True)  # auto on CUDA: may run the kernel
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not route.pytorch_only(x.is_cuda)
    assert route(x, "ok") is True and route(x, "no") is False
    n = len(seen)
    assert route(x, "ok") is True and len(seen) == n  # cached: the verdict is not asked again
    assert route(torch.randn(3, requires_grad=True), "ok") is False  # grad: PyTorch
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="op_x.*TRITON_INTERPRET=1"):
        route(x, "ok")
    assert route(torch.randn(3, requires_grad=True), "ok") is False  # grad comes before the error, as in use_triton
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    assert route(x, "ok") is False and route.pytorch_only(x.is_cuda)
    monkeypatch.setenv("ENGINE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="ENGINE_BACKEND must be one of"):
        route(x, "ok")
    with pytest.raises(ValueError, match="ENGINE_BACKEND must be one of"):
        route.pytorch_only(x.is_cuda)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forced_triton_runs_every_op_on_its_kernel(monkeypatch, dtype):
    # Every kernel dtype takes the kernel path when Triton is forced: a call that silently fell back to PyTorch
    # (a dtype dropped from the kernel list, an inverted dispatch test) would still give right answers, so the op
    # tests cannot see it. The PyTorch functions the fallbacks use raise here. (issue 19: paths no test reaches)
    pytest.importorskip("triton")
    import torch.nn.functional as F

    from engine import ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not backend.interpreting():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    monkeypatch.setenv("ENGINE_BACKEND", "triton")

    def fallback(*args, **kwargs):
        raise AssertionError(f"{dtype} fell back to PyTorch with ENGINE_BACKEND=triton")

    for name in ("layer_norm", "rms_norm", "gelu", "scaled_dot_product_attention"):
        monkeypatch.setattr(F, name, fallback)
    for name in ("layer_norm", "rms_norm"):  # what the norms' PyTorch paths call (F's wrappers skipped)
        monkeypatch.setattr(torch, name, fallback)
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(device, dtype) for s in ((3, 40), (40,), (40,)))
    ops.layer_norm(x, 40, w, b)
    ops.add_layer_norm(x, x, w, b)
    ops.rms_norm(x, 40, w)
    ops.add_rms_norm(x, x, w)
    ops.gelu(x)
    ops.bias_gelu(x, b, "tanh")
    ops.gelu_and_mul(x, "tanh")
    q = torch.randn(1, 2, 5, 16, generator=g).to(device, dtype)
    ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool, device=device))
    packed = q[0].transpose(0, 1).contiguous()  # (5, H, D)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    ops.varlen_attention(packed, packed, packed, cu, cu, 3, 3, causal=True)
    ops.decode_attention(q[:, :, :1], q, q, torch.tensor([4], dtype=torch.int32, device=device))


def test_differentiable_route_keeps_grad_on_the_kernels(monkeypatch):
    """Route(differentiable=True) (ops with backward kernels: attention) skips rule 3; the verdict still decides."""
    route = backend.Route("op_grad", lambda key: key == "ok", differentiable=True)
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(3, requires_grad=True)
    assert route(x, "ok") is True and route(x, "no") is False
    with torch.no_grad():
        assert route(x, "ok") is True


def test_route_with_a_backward_kernel_keeps_the_kernel_under_grad(monkeypatch):
    """Route(differentiable=True) as the norms and GELUs use it: a tensor that requires grad keeps rules 4 and 5, i.e. the
    kernel where it can run, PyTorch where auto says so, and forced Triton's error where it cannot run."""
    route = backend.Route("op_bwd", lambda key: key == "ok", differentiable=True)
    g = torch.randn(3, requires_grad=True)
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert route(g, "ok") is True and route(g, "no") is False
    monkeypatch.delenv("ENGINE_BACKEND")
    assert route(g, "ok") is False  # auto on a CPU: PyTorch
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="op_bwd.*TRITON_INTERPRET=1"):
        route(g, "ok")


def _decisions(route, x):
    return backend.backend_name(), backend.interpreting(), backend.use_triton(x), route(x, "ok"), route.pytorch_only(x.is_cuda)


def test_a_replaced_os_environ_is_what_decides(monkeypatch):
    """Code that rebinds os.environ to another mapping (not the process's environment object) is read through that
    mapping, by every entry point: the fast path through the environment's raw bytes applies only to the original."""
    import os

    route = backend.Route("op_env", lambda key: key == "ok")
    x = torch.randn(3)
    monkeypatch.setenv("ENGINE_BACKEND", "torch")  # what the original environment says: never the answer here
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(os, "environ", {"ENGINE_BACKEND": "triton", "TRITON_INTERPRET": "1"})
    assert _decisions(route, x) == ("triton", True, True, True, False)
    os.environ["ENGINE_BACKEND"] = "torch"
    assert _decisions(route, x) == ("torch", True, False, False, True)
    os.environ["ENGINE_BACKEND"] = "gpu"
    with pytest.raises(ValueError, match="ENGINE_BACKEND must be one of"):
        route.pytorch_only(x.is_cuda)


def test_without_the_raw_environment_os_environ_decides(monkeypatch):
    """Where os.environ has no raw bytes dict (not POSIX: backend._ENV_DATA is None) every entry point reads
    os.environ itself and follows it."""
    monkeypatch.setattr(backend, "_ENV_DATA", None)
    route = backend.Route("op_env", lambda key: key == "ok")
    x = torch.randn(3)
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _decisions(route, x) == ("triton", True, True, True, False)
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    assert _decisions(route, x) == ("torch", True, False, False, True)
    monkeypatch.delenv("ENGINE_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert _decisions(route, x) == ("auto", False, False, False, True)


def test_interpreting_reads_triton_interpret_alone(monkeypatch):
    """TRITON_INTERPRET decides interpreting(): unset, empty, 0 and false are off, anything else on; ENGINE_BACKEND
    (set to a value that would read as "on") plays no part."""
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    for value, on in (("0", False), ("", False), ("false", False), ("False", False), (" 0 ", False), ("1", True),
                      ("true", True)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert backend.interpreting() is on, value
    monkeypatch.delenv("TRITON_INTERPRET")
    assert backend.interpreting() is False


def test_forced_triton_refuses_tensors_neither_on_cuda_nor_on_the_cpu(monkeypatch):
    """Rule 5 runs the interpreter for CPU tensors only: meta tensors, or a CPU and a meta tensor together, are an
    error that names their devices, from use_triton and from a Route (whose device kind is its lead tensor's)."""
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    meta, cpu = torch.empty(3, device="meta"), torch.randn(3)
    with pytest.raises(RuntimeError, match="op_m, but its tensors are on meta:"):
        backend.use_triton(meta, op="op_m")
    with pytest.raises(RuntimeError, match="its tensors are on cpu, meta:"):
        backend.use_triton(cpu, None, meta)
    route = backend.Route("op_m", lambda key: True)
    with pytest.raises(RuntimeError, match="op_m, but its tensors are on meta:"):
        route(meta, "k")
    assert route(cpu, "k") is True


def test_route_error_names_the_devices_of_every_given_tensor(monkeypatch):
    """A Route call's others may hold None (an absent mask): the forced-Triton error names the devices of the lead
    and of every tensor given."""
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    route = backend.Route("op_n", lambda key: True)
    with pytest.raises(RuntimeError, match="op_n, but its tensors are on cpu, meta:"):
        route(torch.randn(3), "k", None, torch.empty(3, device="meta"))


def test_resolve_device(monkeypatch):
    """resolve_device: cpu, cuda and cuda:N as torch.device; a TypeError for what is not a device name (a bool, an
    int index, None), a ValueError naming the argument for other device types, CUDA where there is none, and an
    index past the last GPU (checked here with CUDA's answers stood in: two devices)."""
    assert backend.resolve_device("cpu") == torch.device("cpu")
    assert backend.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in (True, 0, None, 1.0):
        with pytest.raises(TypeError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            backend.resolve_device(bad)
    for bad in ("tpu", "meta", "cuda:x"):
        with pytest.raises(ValueError, match=f"--dev must be 'cpu', 'cuda' or 'cuda:N'; got '{bad}'"):
            backend.resolve_device(bad, name="--dev")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA, which is not available"):
        backend.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert backend.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert backend.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:2': this machine has 2 CUDA device"):
        backend.resolve_device("cuda:2")
