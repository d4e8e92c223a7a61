"""engine.ops.library: every op registered as torch.ops.engine.<name>, checked with torch.library.opcheck.

opcheck runs each op for real and under fake tensors (static and dynamic shapes, AOT dispatch) and compares the
outputs' metadata, strides included. Both backends run: PyTorch, and the Triton kernels (the interpreter on a CPU).
Also: the registered op gives the eager op's values, its fake implementation raises the eager checks' errors, and
eager calls never go through the registered op (they stay on the cheap path).
"""
import pytest
import torch

from engine import ops
from engine.ops import library

BACKENDS = ["torch", "triton"]


def _rand(*shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 1.5 + 0.3).to(device=device, dtype=dtype)


def cases(device):
    """(op name, args) for each registered op: odd sizes, transposed views, masks, several sequences, T5's relative
    position bias tables (exactly as long as the call needs, and wider)."""
    x = _rand(3, 5, 33, device=device)
    r = _rand(3, 5, 33, seed=1, device=device)
    w, b = _rand(33, seed=2, device=device), _rand(33, seed=3, device=device)
    q, k, v = (_rand(2, 7, 3, 16, seed=s, device=device).transpose(1, 2) for s in (4, 5, 6))  # (B, H, N, D) views
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool, device=device)
    keep[1, ..., 4:] = False
    add = _rand(2, 3, 7, 7, seed=7, device=device)
    pq, pk, pv = (_rand(9, 3, 16, seed=s, device=device) for s in (8, 9, 10))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=device)
    dq = _rand(2, 3, 1, 16, seed=11, device=device)
    kc, vc = _rand(2, 3, 12, 16, seed=12, device=device), _rand(2, 3, 12, 16, seed=13, device=device)
    lens = torch.tensor([5, 12], dtype=torch.int32, device=device)
    ids = torch.randint(0, 50, (2, 7), device=device)
    mask = torch.ones(2, 7, dtype=torch.long, device=device)
    gu = _rand(3, 5, 34, seed=14, device=device)  # [gate | up], 17 each
    bias7, bias9 = _rand(3, 13, seed=15, device=device), _rand(3, 17, seed=16, device=device)  # L = 7, 9
    bias12 = _rand(3, 23, seed=17, device=device)  # L = 12, the decode cache
    return [
        ("layer_norm", (x, [33], w, b, 1e-5)),
        ("layer_norm", (x.transpose(0, 1), [33], None, b, 1e-3)),
        ("add_layer_norm", (x, r, w, b, 1e-5)),
        ("rms_norm", (x, [33], w, 1e-6)),
        ("rms_norm", (x.transpose(0, 1), [3, 33], None, 1e-3)),
        ("add_rms_norm", (x, r, w, 1e-6)),
        ("gelu", (x.transpose(1, 2), "none")),
        ("gelu", (x, "tanh")),
        ("bias_gelu", (x, b, "tanh")),
        ("gelu_and_mul", (gu, "tanh")),
        ("gelu_and_mul", (gu.transpose(0, 1), "none")),
        ("scaled_dot_product_attention", (q, k, v, None, 0.0, True, None)),
        ("scaled_dot_product_attention", (q.contiguous(), k, v, keep, 0.0, False, 0.3)),
        ("scaled_dot_product_attention", (q, k, v, add, 0.0, False, None)),
        ("scaled_dot_product_attention", (q, k, v, keep, 0.0, False, 1.0, False, bias7)),
        ("scaled_dot_product_attention", (q, k, v, None, 0.0, True, None, False, bias9)),
        # torch's whole signature: grouped K/V heads, broadcast batch / heads, 3-D and 5-D calls, a 1-D mask
        ("scaled_dot_product_attention", (q, k[:, :1], v[:, :1], keep, 0.0, True, None, True)),
        ("scaled_dot_product_attention", (q, k[:1], v[:1], None, 0.0, False, 0.3, False)),
        ("scaled_dot_product_attention", (q[0], k[0], v[0], keep[0, 0, 0], 0.0, False, None, False, bias7)),
        ("scaled_dot_product_attention", (q[None], k[None, :1], v[None, :1], add, 0.0, False, None, True)),
        ("varlen_attention", (pq, pk, pv, cu, cu, 5, 5, True, None, True)),
        ("varlen_attention", (pq, pk, pv, cu, cu, 5, 5, False, 1.0, True, bias7)),
        ("decode_attention", (dq, kc, vc, lens, None, None)),
        ("decode_attention", (dq, kc, vc, lens, 1.0, None, bias12)),
        ("decode_attention", (dq, kc, vc, torch.full_like(lens, 9), None, None, bias12)),  # one slice of the table
        ("check_range", (ids, [mask], [50, 2], ["input_ids", "attention_mask"], ["be small", "be 0 or 1"])),
    ]


CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(cases("cpu"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_opcheck(backend, index, monkeypatch, device):
    monkeypatch.setenv("ENGINE_BACKEND", backend)
    name, args = cases(device)[index]
    torch.library.opcheck(getattr(torch.ops.engine, name).default, args)


def test_every_public_op_is_registered():
    public = {"layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm", "gelu", "bias_gelu", "gelu_and_mul",
              "scaled_dot_product_attention", "varlen_attention", "decode_attention"}
    assert public == set(ops.__all__) - {"pad_input", "unpad_input"}  # a new public op must be registered too
    assert public <= set(library.OPS)
    for name in library.OPS:
        assert hasattr(torch.ops.engine, name)


@pytest.mark.parametrize("index", range(len(CASE_IDS) - 1), ids=CASE_IDS[:-1])
def test_registered_op_equals_eager_op(index, device):
    """Same values (bit for bit) as the public function, and the layout the fake implementation promises."""
    name, args = cases(device)[index]
    registered = getattr(torch.ops.engine, name)(*args)
    fn = getattr(ops, name)
    extra = lambda n: {"relative_position_bias": args[n]} if len(args) > n else {}  # noqa: E731
    if name == "varlen_attention":
        eager = fn(*args[:7], causal=args[7], scale=args[8], validate=args[9], **extra(10))
    elif name == "decode_attention":
        eager = fn(*args[:5], validate=args[5], **extra(6))
    elif name == "scaled_dot_product_attention":
        eager = fn(*args[:8], **extra(8))
    else:
        eager = fn(*args)
    for a, e in zip(registered if isinstance(registered, tuple) else (registered,),
                    eager if isinstance(eager, tuple) else (eager,)):
        assert torch.equal(a, e)
    if name == "scaled_dot_product_attention" and args[0].dim() == 4 and args[0].shape[:2] == registered.shape[:2] \
            and args[0].stride(1) < args[0].stride(2):
        assert registered.transpose(1, 2).is_contiguous()  # (B, N, H, D) storage, like the kernel's output


def test_fake_implementation_raises_the_eager_errors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.randn(4, 8), torch.randn(7)
        with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
            torch.ops.engine.layer_norm(x, [8], w, None, 1e-5)
        with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
            torch.ops.engine.add_rms_norm(x, x, w, 1e-6)
        with pytest.raises(ValueError, match="input must have an even last dimension"):
            torch.ops.engine.gelu_and_mul(torch.randn(4, 7), "tanh")
        q, k = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 8)
        with pytest.raises(ValueError, match="key head dim must equal query head dim 16"):
            torch.ops.engine.scaled_dot_product_attention(q, k, k, None, 0.0, False, None)
        with pytest.raises(ValueError, match=r"relative_position_bias covers distances up to 1 \(L = 2\)"):
            torch.ops.engine.scaled_dot_product_attention(q, q, q, None, 0.0, False, None, False, torch.randn(2, 3))
        with pytest.raises(ValueError, match="enable_gqa: the key heads"):
            kv = torch.randn(1, 4, 3, 8)
            torch.ops.engine.scaled_dot_product_attention(torch.randn(1, 6, 3, 8), kv, kv, None, 0.0, False, None,
                                                          True)
        pq, cu = torch.randn(5, 2, 8), torch.tensor([0, 5], dtype=torch.int32)
        with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\); got 1.0"):
            torch.ops.engine.varlen_attention(pq, pq, pq, cu, cu, 5, 5, False, None, True, None, 1.0)
        # the schema's defaults (no bias, dropout_p 0.0) are accepted when left out
        assert torch.ops.engine.varlen_attention(pq, pq, pq, cu, cu, 5, 5, False, None, True).shape == (5, 2, 8)
        cache, lens = torch.randn(1, 2, 6, 16), torch.full((1,), 4, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"relative_position_bias must be \(H, 2 \* L - 1\)"):
            torch.ops.engine.decode_attention(q[:, :, :1], cache, cache, lens, None, None, torch.randn(3, 11))


def test_lse_placeholder_of_the_pytorch_path_is_zeros(monkeypatch):
    """The differentiable ops' second output on the PyTorch path (the backward there does not read it) is zeros of
    the kernel lse's shape, the same every call: never uninitialised memory."""
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    q = _rand(1, 2, 5, 8)
    out, lse = torch.ops.engine.scaled_dot_product_attention_lse(q, q, q, None, False, None)
    torch.testing.assert_close(out, ops.scaled_dot_product_attention(q, q, q), rtol=0, atol=0)
    assert lse.dtype == torch.float32 and torch.equal(lse, torch.zeros(2, 1, 2, 5))
    pq, cu = _rand(7, 2, 8), torch.tensor([0, 3, 7], dtype=torch.int32)
    out, lse = torch.ops.engine.varlen_attention_lse(pq, pq, pq, cu, cu, 4, 4, True, None, True)
    torch.testing.assert_close(out, ops.varlen_attention(pq, pq, pq, cu, cu, 4, 4, causal=True), rtol=0, atol=0)
    assert lse.dtype == torch.float32 and torch.equal(lse, torch.zeros(2, 2, 7))


def test_check_range_raises_the_model_error():
    ids = torch.tensor([[1, 2, 60]])
    with pytest.raises(ValueError, match=r"input_ids values must lie in \[0, 50\) \(the vocabulary\); got values in "
                                         r"\[1, 60\]"):
        torch.ops.engine.check_range(ids, [], [50], ["input_ids"], ["lie in [0, 50) (the vocabulary)"])


def test_eager_calls_do_not_dispatch_through_the_registered_ops():
    """The cheap path: an eager call runs no torch.ops.engine op (seen by a dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.namespace)
            return func(*args, **(kwargs or {}))

    x, w, b = _rand(4, 8), _rand(8), _rand(8)
    with Record():
        ops.layer_norm(x, (8,), w, b)
        ops.bias_gelu(x, b)
    assert seen and "engine" not in seen
    with Record():
        torch.ops.engine.layer_norm(x, [8], w, b, 1e-5)
    assert "engine" in seen
