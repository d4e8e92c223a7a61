"""The explicit norm / GELU backward formulas (engine.ops.grad) against float64 autograd, and the fake
implementations of the ops only training graphs call.

What a compiled training graph runs off the kernels: ``grad.norm_backward`` / ``grad.gelu_backward`` /
``grad.bias_grad`` (the PyTorch path) and the registered norm / GELU ops' autograd formulas are held to float64
autograd of torch's own ops (F.layer_norm, F.rms_norm, F.gelu). Then, on the Triton kernels (the interpreter on a
CPU, tiny sizes): the autograd Functions' strided inputs; and opcheck of every backward and *_lse op. The attention
formulas are in test_attention_grad_formulas.py. Odd sizes throughout; the file runs in a few seconds.
"""
import pytest
import torch
import torch.nn.functional as F
from grad_util import BF16, F32, F64, TOL, close, randn, spy

from engine import ops
from engine.ops import grad


# ---- norms -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_ds", [True, False])
@pytest.mark.parametrize("rms", [False, True])
def test_norm_backward_matches_autograd(torch_backend, rms, with_ds, affine, dtype):
    """dv, dweight, dbias of LayerNorm / RMSNorm rows (5 x 37, mean far from 0, eps large enough to matter), the
    add + norm's ds added to dv; dweight / dbias are returned even without an affine weight."""
    gen = torch.Generator().manual_seed(3 + 2 * rms + with_ds)
    m, n, eps = 5, 37, 3e-2
    v = randn(m, n, gen=gen, scale=0.6, shift=0.9)
    dy, ds = randn(m, n, gen=gen), randn(m, n, gen=gen)
    w = randn(n, gen=gen, shift=0.5) if affine else torch.ones(n, dtype=F64)
    b = randn(n, gen=gen)
    leaves = [t.clone().requires_grad_() for t in (v, w, b)]
    y = (F.rms_norm(leaves[0], (n,), leaves[1], eps) if rms
         else F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], eps))
    y.backward(dy)
    want_dv = leaves[0].grad + (ds if with_ds else 0.0)
    dv, dw, db = grad.norm_backward(dy.to(dtype), ds.to(dtype) if with_ds else None, v.to(dtype),
                                    w.to(dtype) if affine else None, eps, rms=rms)
    close(dv, want_dv, dtype, "dv")
    close(dw, leaves[1].grad, dtype, "dweight")
    if rms:
        assert db is None
    else:
        close(db, leaves[2].grad, dtype, "dbias")


def test_norm_backward_of_half_inputs_computes_in_fp32(torch_backend):
    """bfloat16 rows: the gradients come back in bfloat16, one rounding away from the float64 values."""
    gen = torch.Generator().manual_seed(8)
    v, dy = randn(3, 41, gen=gen, shift=1.0, dtype=BF16), randn(3, 41, gen=gen, dtype=BF16)
    w = randn(41, gen=gen, dtype=BF16)
    vd, wd = v.double().requires_grad_(), w.double().requires_grad_()
    F.layer_norm(vd, (41,), wd, None, 1e-5).backward(dy.double())
    dv, dw, db = grad.norm_backward(dy, None, v, w, 1e-5, rms=False)
    for got, want in ((dv, vd.grad), (dw, wd.grad), (db, dy.double().sum(0))):
        assert got.dtype == BF16
        torch.testing.assert_close(got.double(), want, atol=1e-2 * float(want.abs().max()), rtol=1e-2)


# ---- GELU ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", ["plain", "bias", "gated"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_matches_autograd(torch_backend, approximate, kind, dtype):
    """dx of gelu(x), gelu(x + bias) and gelu(x[:, :N]) * x[:, N:] (N = 23, inputs up to ~+-8: both tails and the
    middle), and the bias gradient (dx summed over rows)."""
    gen = torch.Generator().manual_seed(17 + len(kind))
    m, n = 7, 23
    x = randn(m, 2 * n if kind == "gated" else n, gen=gen, scale=2.7)
    bias = randn(n, gen=gen, shift=-0.3) if kind == "bias" else None
    dy = randn(m, n, gen=gen)
    xd = x.clone().requires_grad_()
    bd = None if bias is None else bias.clone().requires_grad_()
    if kind == "gated":
        y = F.gelu(xd[:, :n], approximate=approximate) * xd[:, n:]
    else:
        y = F.gelu(xd if bd is None else xd + bd, approximate=approximate)
    y.backward(dy)
    dx = grad.gelu_backward(dy.to(dtype), x.to(dtype), None if bias is None else bias.to(dtype), approximate,
                            gated=kind == "gated")
    close(dx, xd.grad, dtype, "dx")
    if bias is not None:
        db = grad.bias_grad(dx, bias.to(dtype))
        close(db, bd.grad, dtype, "dbias")


def test_bias_grad_sums_every_leading_dim():
    gen = torch.Generator().manual_seed(4)
    dx, bias = randn(2, 3, 5, gen=gen, dtype=F32), torch.zeros(5, dtype=BF16)
    db = grad.bias_grad(dx, bias)
    assert db.dtype == BF16
    torch.testing.assert_close(db.double(), dx.double().sum((0, 1)).to(BF16).double())


# ---- the registered norm / GELU ops' autograd formulas (engine.ops.library_norm_gelu) ------------------------------
def _norm_cases(gen):
    """(name, args of torch.ops.engine.<name>, the float64 reference of its outputs): 3-D inputs, a 2-D
    normalized_shape (weight / bias (4, 7)), no weight, bias without weight."""
    x, r = randn(2, 4, 7, gen=gen, scale=1.3, shift=0.6), randn(2, 4, 7, gen=gen)
    w2, b2 = randn(4, 7, gen=gen, shift=0.4), randn(4, 7, gen=gen)
    w, b = randn(7, gen=gen, shift=0.4), randn(7, gen=gen)
    eps = 2e-2
    return [
        ("layer_norm", (x, [4, 7], w2, b2, eps), lambda x, _, w, b, e: F.layer_norm(x, (4, 7), w, b, e)),
        ("layer_norm", (x, [7], None, b, eps), lambda x, _, w, b, e: F.layer_norm(x, (7,), w, b, e)),
        ("rms_norm", (x, [4, 7], w2, eps), lambda x, _, w, e: F.rms_norm(x, (4, 7), w, e)),
        ("rms_norm", (x, [7], None, eps), lambda x, _, w, e: F.rms_norm(x, (7,), w, e)),
        ("add_layer_norm", (x, r, w, b, eps), lambda x, r, w, b, e: (F.layer_norm(x + r, (7,), w, b, e), x + r)),
        ("add_layer_norm", (x, r, None, None, eps), lambda x, r, w, b, e: (F.layer_norm(x + r, (7,), w, b, e), x + r)),
        ("add_rms_norm", (x, r, w, eps), lambda x, r, w, e: (F.rms_norm(x + r, (7,), w, e), x + r)),
        ("gelu", (x, "tanh"), lambda x, a: F.gelu(x, approximate=a)),
        ("gelu", (x[0, 0, 3], "none"), lambda x, a: F.gelu(x, approximate=a)),  # a 0-d input
        ("bias_gelu", (x, b, "none"), lambda x, b, a: F.gelu(x + b, approximate=a)),
        ("gelu_and_mul", (x[..., :6], "tanh"), lambda x, a: F.gelu(x[..., :3], approximate=a) * x[..., 3:]),
    ]


@pytest.mark.parametrize("index", range(11))
def test_registered_norm_gelu_ops_grads_on_pytorch(torch_backend, index):
    """Each registered norm / GELU op called eagerly with inputs that require grad: its register_autograd formula
    (engine::norm_backward / gelu_backward, the bias gradient) gives float64 autograd's gradients for every tensor
    argument; the add + norm ops both with both outputs used and with only the normalised one."""
    gen = torch.Generator().manual_seed(47)
    name, args, ref = _norm_cases(gen)[index]
    uses = ("both", "y") if name.startswith("add") else ("both",)
    for use in uses:
        leaves = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        refs = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        got, want = getattr(torch.ops.engine, name)(*leaves), ref(*refs)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        if use == "y":
            got, want = got[:1], want[:1]
        g = torch.Generator().manual_seed(5)
        weights = [randn(*t.shape, gen=g) if t.dim() else torch.tensor(1.7, dtype=F64) for t in want]
        sum(((o * wt).sum() for o, wt in zip(got, weights)), torch.zeros((), dtype=F64)).backward()
        sum(((o * wt).sum() for o, wt in zip(want, weights)), torch.zeros((), dtype=F64)).backward()
        for i, (a, r) in enumerate(zip(leaves, refs)):
            if isinstance(a, torch.Tensor):
                assert a.grad is not None, (name, use, i)
                torch.testing.assert_close(a.grad, r.grad, **TOL[F64], msg=lambda m, i=i: f"{name} arg {i}: {m}")


@pytest.mark.parametrize("layout", ["every_other", "transposed"])
@pytest.mark.parametrize("loss", ["weighted", "sum"])
def test_kernel_functions_take_rows_without_unit_column_stride(triton_backend, device, monkeypatch, layout, loss):
    """Inputs whose rows are not contiguous, x[:, ::2] (elements 2 apart) and x.t() (rows 1 apart, elements 3
    apart), and the output gradient of ``.sum()`` (an expanded tensor: stride 0), through the kernel Functions of
    layer_norm and bias_gelu: the kernels read unit-stride rows (grad.rows copies the others), so values and
    gradients equal float64 autograd."""
    from engine.kernels import gelu as gelu_kernels
    from engine.kernels import norm as norm_kernels

    calls = spy(monkeypatch, (norm_kernels, "norm_bwd"), (gelu_kernels, "gelu_bwd"))
    gen = torch.Generator().manual_seed(37)
    base = randn(*((3, 26) if layout == "every_other" else (13, 3)), gen=gen, dtype=F32, shift=0.4)
    view = (lambda t: t[:, ::2]) if layout == "every_other" else (lambda t: t.t())
    w, b = randn(13, gen=gen, dtype=F32), randn(13, gen=gen, dtype=F32)
    dy = randn(3, 13, gen=gen, dtype=F32) if loss == "weighted" else torch.ones(3, 13)
    wd, bd, dyd = w.to(device), b.to(device), dy.to(device)
    for which in ("norm", "gelu"):
        leaf = base.to(device, copy=True).requires_grad_()
        ref = base.double().requires_grad_()
        if which == "norm":
            got = ops.layer_norm(view(leaf), (13,), wd, bd)
            want = F.layer_norm(view(ref), (13,), w.double(), b.double())
        else:
            got = ops.bias_gelu(view(leaf), bd, "none")
            want = F.gelu(view(ref) + b.double())
        (got * dyd if loss == "weighted" else got).sum().backward()
        (want * dy.double()).sum().backward()
        torch.testing.assert_close(got.double().cpu(), want.detach(), atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{which}: {m}")
        torch.testing.assert_close(leaf.grad.double().cpu(), ref.grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{which}: {m}")
    assert calls == ["norm_bwd", "gelu_bwd"]


def test_kernel_bias_gelu_gives_the_bias_its_gradient_when_only_the_bias_requires_it(triton_backend, device,
                                                                                      monkeypatch):
    """bias_gelu on the kernels with a constant input and a trainable bias (e.g. only biases trained): the bias
    still gets dx summed over rows (float64 autograd), and an input that needs no grad gets none."""
    from engine.kernels import gelu as gelu_kernels

    calls = spy(monkeypatch, (gelu_kernels, "gelu_bwd"))
    gen = torch.Generator().manual_seed(43)
    x, dy = randn(2, 3, 19, gen=gen, dtype=F32, scale=2.0), randn(2, 3, 19, gen=gen, dtype=F32)
    bias = randn(19, gen=gen, dtype=F32)
    bd = bias.double().requires_grad_()
    (F.gelu(x.double() + bd, approximate="tanh") * dy.double()).sum().backward()
    x, dy, bias = x.to(device), dy.to(device), bias.to(device).requires_grad_()
    (ops.bias_gelu(x, bias, "tanh") * dy).sum().backward()
    assert calls == ["gelu_bwd"] and x.grad is None
    torch.testing.assert_close(bias.grad.double().cpu(), bd.grad, atol=2e-5 * float(bd.grad.abs().max()), rtol=2e-5)


# ---- the fake implementations of the ops only training graphs call ----------------------------------------------
def _backward_op_cases(device):
    """(op name, args, backend) of the registered ops only training graphs call (their fake implementations are
    what torch.compile traces with): odd sizes, float32 and float64, optional arguments absent. The *_lse ops run
    on the kernels (the interpreter): on the PyTorch path their lse output is an unused, uninitialised
    placeholder, which opcheck's eager-vs-traced comparison would read."""
    gen = torch.Generator().manual_seed(53)
    v, dy, ds = (randn(5, 9, gen=gen, dtype=F32) for _ in range(3))
    w = randn(9, gen=gen, dtype=F32)
    x2, b = randn(5, 18, gen=gen), randn(9, gen=gen)
    q = randn(2, 3, 6, 16, gen=gen, dtype=F32)
    kv = randn(2, 3, 7, 16, gen=gen, dtype=F32)
    keep = torch.rand(2, 1, 6, 7, generator=gen) > 0.3
    pq, pkv = randn(9, 3, 16, gen=gen, dtype=F32), randn(7, 3, 16, gen=gen, dtype=F32)
    cq, ck = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 5, 7], dtype=torch.int32)
    on = lambda *ts: [t.to(device) for t in ts]  # noqa: E731  (the kernel cases: the device's tensors)
    lse4, lse3 = torch.zeros(2, 2, 3, 6), torch.zeros(2, 3, 9)
    return [
        ("norm_backward", (dy, ds, v, w, 1e-5, False), "torch"),
        ("norm_backward", (dy, None, v, None, 1e-3, True), "torch"),
        ("gelu_backward", (dy.double(), x2[:, :9], b, "tanh", False), "torch"),
        ("gelu_backward", (dy.double(), x2, None, "none", True), "torch"),
        ("scaled_dot_product_attention_lse", (*on(q, kv, kv, keep), True, None), "triton"),
        ("scaled_dot_product_attention_backward", (q, q, kv, kv, q, lse4, None, False, 0.5), "torch"),
        ("varlen_attention_lse", (*on(pq, pkv, pkv, cq, ck), 5, 5, True, None, True), "triton"),
        ("varlen_attention_backward", (pq, pq, pkv, pkv, pq, lse3, cq, ck, 5, 5, False, 0.7), "torch"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_backward_ops_pass_opcheck(monkeypatch, device, index):
    """torch.library.opcheck of the registered backward and *_lse ops: the fake implementation's shapes, dtypes
    and strides equal the real op's (static and dynamic shapes, AOT dispatch on the PyTorch cases, the autograd
    registration)."""
    name, args, backend_name = _backward_op_cases(device)[index]
    if args[0].requires_grad is False and name.endswith("_lse"):  # the autograd formula's path too
        args = (args[0].detach().requires_grad_(), *args[1:])
    monkeypatch.setenv("ENGINE_BACKEND", backend_name)
    # (the kernel cases skip the AOT-dispatch test, the slowest in the interpreter: tests/test_compile.py traces
    # these ops with grad through AOT autograd on the kernels)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") if backend_name == "triton" else None
    torch.library.opcheck(getattr(torch.ops.engine, name).default, args,
                          **({} if utils is None else {"test_utils": utils}))
