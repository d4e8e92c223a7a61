"""Gradients of the norm and GELU ops on the Triton backward kernels (engine.ops.grad) against float64 PyTorch.

ENGINE_BACKEND=triton (`triton_backend`): on a CPU the forward and backward kernels run in Triton's interpreter;
each test counts the backward launcher's calls, so a silent fallback to PyTorch fails. ``torch.empty`` is
poisoned (NaN-filled) while the ops run, so every gradient element, and every row of the (programs, N) partial
sums of dweight / dbias, must be written by the kernels. Odd sizes: rows 1, 3, 77; N = 1, 33, 1000 and 9000
(past MAX_BLOCK_N = 8192: the looped LayerNorm path).
"""
import pytest
import torch
import torch.nn.functional as F

from engine import ops
from engine.kernels import gelu as gelu_kernels
from engine.kernels import norm as norm_kernels

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ALL = (F32, F16, BF16)
# Relative to the largest reference gradient: fp32 math with one rounding of each output to the dtype.
TOL = {F32: 2e-5, F16: 4e-3, BF16: 3e-2}

SIZES = [(1, 1, ALL), (3, 33, ALL), (77, 1000, (F32, BF16)), (3, 9000, (F32, F16))]
NORM_PARAMS = [pytest.param(m, n, dt, id=f"{m}x{n}-{str(dt)[6:]}") for m, n, dts in SIZES for dt in dts]
GELU_PARAMS = [p for p in NORM_PARAMS if p.values[1] <= 1000]


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty returns NaN-filled floating tensors while the test runs."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)


def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _rand(shape, dtype, device, gen, *, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).to(device)


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _assert_grads(got, ref, dtype):
    for name, a, r in zip(("x", "residual", "weight", "bias"), got, ref):
        if r is None:
            assert a is None, name
            continue
        assert a is not None and a.dtype == dtype and a.shape == r.shape, name
        scale = max(float(r.abs().max()), 1.0)
        torch.testing.assert_close(a.double().cpu(), r.cpu(), atol=TOL[dtype] * scale, rtol=TOL[dtype],
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("m, n, dtype", NORM_PARAMS)
@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm", "rms_norm", "add_rms_norm"])
def test_norm_grads_match_float64(triton_backend, poisoned_empty, monkeypatch, device, op, m, n, dtype):
    calls = _count(monkeypatch, norm_kernels, "norm_bwd")
    gen = torch.Generator().manual_seed(m * 31 + n)
    rms, add = op.startswith("rms") or op == "add_rms_norm", op.startswith("add")
    x, r = _rand((m, n), dtype, device, gen, scale=2.0, shift=0.7), _rand((m, n), dtype, device, gen)
    w, b = _rand((n,), dtype, device, gen), _rand((n,), dtype, device, gen)
    dy, ds = _rand((m, n), dtype, device, gen), _rand((m, n), dtype, device, gen)
    leaves = [_leaf(x), _leaf(r) if add else None, _leaf(w), None if rms else _leaf(b)]
    refs = [None if t is None else t.detach().double().requires_grad_() for t in leaves]

    def run(xx, rr, ww, bb, fn_add, fn_norm):
        if add:
            y, s = fn_add(xx, rr, ww, bb)
            return (y * dy.to(y.dtype)).sum() + (s * ds.to(s.dtype)).sum()
        return (fn_norm(xx, ww, bb) * dy.to(xx.dtype)).sum()

    eps = 1e-5
    if rms:
        got = run(*leaves, lambda a, c, ww, _: ops.add_rms_norm(a, c, ww, eps),
                  lambda a, ww, _: ops.rms_norm(a, (n,), ww, eps))
        ref = run(*refs, lambda a, c, ww, _: (F.rms_norm(a + c, (n,), ww, eps), a + c),
                  lambda a, ww, _: F.rms_norm(a, (n,), ww, eps))
    else:
        got = run(*leaves, lambda a, c, ww, bb: ops.add_layer_norm(a, c, ww, bb, eps),
                  lambda a, ww, bb: ops.layer_norm(a, (n,), ww, bb, eps))
        ref = run(*refs, lambda a, c, ww, bb: (F.layer_norm(a + c, (n,), ww, bb, eps), a + c),
                  lambda a, ww, bb: F.layer_norm(a, (n,), ww, bb, eps))
    got.backward()
    ref.backward()
    assert calls, "the backward kernel did not run"
    _assert_grads([None if t is None else t.grad for t in leaves], [None if t is None else t.grad for t in refs],
                  dtype)


def test_norm_grads_without_affine_and_unused_outputs(triton_backend, poisoned_empty, monkeypatch, device):
    """No weight / bias; a 2-D normalized_shape; add + norm whose x + residual is not used (ds absent) or whose
    normalised output is not used (dy absent)."""
    calls = _count(monkeypatch, norm_kernels, "norm_bwd")
    gen = torch.Generator().manual_seed(5)
    x = _rand((3, 4, 9), F32, device, gen, shift=1.0)
    dy = _rand((3, 4, 9), F32, device, gen)
    a, ad = _leaf(x), x.double().requires_grad_()
    (ops.layer_norm(a, (4, 9)) * dy).sum().backward()
    (F.layer_norm(ad, (4, 9)) * dy.double()).sum().backward()
    torch.testing.assert_close(a.grad.double(), ad.grad, atol=1e-5, rtol=1e-5)
    w = _rand((9,), F32, device, gen)
    for use in ("y", "s"):
        a, r, wl = _leaf(x), _leaf(x * 0.5), _leaf(w)
        ad, rd, wd = (t.detach().double().requires_grad_() for t in (a, r, wl))
        y, s = ops.add_layer_norm(a, r, wl, None)
        ((y if use == "y" else s) * dy).sum().backward()
        sd = ad + rd
        ((F.layer_norm(sd, (9,), wd) if use == "y" else sd) * dy.double()).sum().backward()
        for t, ref in ((a, ad), (r, rd)):
            torch.testing.assert_close(t.grad.double(), ref.grad, atol=1e-5, rtol=1e-5)
        if use == "y":
            torch.testing.assert_close(wl.grad.double(), wd.grad, atol=1e-5, rtol=1e-5)
    assert len(calls) >= 2


def test_norm_bwd_partial_sums_over_many_programs(device):
    """The two-stage reduction does not depend on the grid: 1, 3 and 7 programs give one dweight / dbias."""
    gen = torch.Generator().manual_seed(9)
    v, dy = _rand((23, 70), F32, device, gen), _rand((23, 70), F32, device, gen)
    w = _rand((70,), F32, device, gen)
    outs = [norm_kernels.norm_bwd(v, dy, w, 1e-5, rms=False, programs=p) for p in (1, 3, 7)]
    for dv, dw, db in outs[1:]:
        torch.testing.assert_close(dv, outs[0][0])
        torch.testing.assert_close(dw, outs[0][1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(db, outs[0][2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m, n, dtype", GELU_PARAMS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("op", ["gelu", "bias_gelu", "gelu_and_mul"])
def test_gelu_grads_match_float64(triton_backend, poisoned_empty, monkeypatch, device, op, approximate, m, n, dtype):
    calls = _count(monkeypatch, gelu_kernels, "gelu_bwd")
    gen = torch.Generator().manual_seed(m * 17 + n)
    width = 2 * n if op == "gelu_and_mul" else n
    x = _rand((m, width), dtype, device, gen, scale=2.5)
    b = _rand((n,), dtype, device, gen) if op == "bias_gelu" else None
    dy = _rand((m, n), dtype, device, gen)
    xl, bl = _leaf(x), None if b is None else _leaf(b)
    xd, bd = x.double().requires_grad_(), None if b is None else b.double().requires_grad_()
    if op == "gelu":
        y, ref = ops.gelu(xl, approximate), F.gelu(xd, approximate=approximate)
    elif op == "bias_gelu":
        y, ref = ops.bias_gelu(xl, bl, approximate), F.gelu(xd + bd, approximate=approximate)
    else:
        y, ref = ops.gelu_and_mul(xl, approximate), F.gelu(xd[:, :n], approximate=approximate) * xd[:, n:]
    (y * dy).sum().backward()
    (ref * dy.double()).sum().backward()
    assert calls, "the backward kernel did not run"
    _assert_grads([xl.grad, None, None, None if bl is None else bl.grad],
                  [xd.grad, None, None, None if bd is None else bd.grad], dtype)


def test_gelu_grad_of_3d_and_strided_inputs(triton_backend, monkeypatch, device):
    calls = _count(monkeypatch, gelu_kernels, "gelu_bwd")
    gen = torch.Generator().manual_seed(11)
    base = _rand((2, 5, 14), F32, device, gen, scale=2.0)
    x = _leaf(base)[..., 1:12]  # a strided view (not a leaf): its gradient lands in the leaf's slice
    leaf = x._base if x._base is not None else x
    g = _rand((2, 5, 11), F32, device, gen)
    (ops.bias_gelu(x, torch.ones(11, device=device), "tanh") * g).sum().backward()
    xd = base.double().requires_grad_()
    (F.gelu(xd[..., 1:12] + 1.0, approximate="tanh") * g.double()).sum().backward()
    torch.testing.assert_close(leaf.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)
    assert calls


@pytest.mark.parametrize("dtype", [F32, torch.float64])
def test_pytorch_backward_formulas_match_float64(torch_backend, dtype):
    """engine.ops.grad's PyTorch path (what engine::norm_backward / gelu_backward run off the kernels, e.g. in a
    compiled CPU graph) against float64 autograd of the reference ops."""
    from engine.ops import grad

    gen = torch.Generator().manual_seed(13)
    v, dy, ds = (_rand((5, 37), dtype, "cpu", gen, scale=2.0, shift=0.5) for _ in range(3))
    w = _rand((37,), dtype, "cpu", gen)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else dict(atol=1e-12, rtol=1e-12)
    for rms in (False, True):
        vd, wd = v.double().clone().requires_grad_(), w.double().clone().requires_grad_()
        bd = torch.zeros(37, dtype=torch.float64, requires_grad=True)
        y = F.rms_norm(vd, (37,), wd, 1e-5) if rms else F.layer_norm(vd, (37,), wd, bd, 1e-5)
        y.backward(dy.double())
        dv, dw, db = grad.norm_backward(dy, ds, v, w, 1e-5, rms=rms)
        torch.testing.assert_close(dv.double(), vd.grad + ds.double(), **tol)
        torch.testing.assert_close(dw.double(), wd.grad, **tol)
        if not rms:
            torch.testing.assert_close(db.double(), bd.grad, **tol)
    x2 = _rand((5, 74), dtype, "cpu", gen, scale=2.5)
    b = _rand((37,), dtype, "cpu", gen)
    for approximate in ("none", "tanh"):
        for gated in (False, True):
            x = x2 if gated else x2[:, :37].contiguous()
            xd = x.double().clone().requires_grad_()
            ref = (F.gelu(xd[:, :37], approximate=approximate) * xd[:, 37:] if gated
                   else F.gelu(xd + b.double(), approximate=approximate))
            ref.backward(dy.double())
            dx = grad.gelu_backward(dy, x, None if gated else b, approximate, gated=gated)
            torch.testing.assert_close(dx.double(), xd.grad, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [768, 1024, 4096, 8192, 8193])
@pytest.mark.parametrize("dtype", ALL)
def test_full_size_grads_on_gpu(triton_backend, n, dtype):
    """add_layer_norm / add_rms_norm and bias_gelu backward at model sizes (many programs' partial sums)."""
    gen = torch.Generator().manual_seed(n)
    m = 4099
    x, r, dy, ds = (_rand((m, n), dtype, "cuda", gen, shift=1.0) for _ in range(4))
    w, b = _rand((n,), dtype, "cuda", gen), _rand((n,), dtype, "cuda", gen)
    for rms in (False, True):
        leaves = [_leaf(x), _leaf(r), _leaf(w), None if rms else _leaf(b)]
        refs = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
        y, s = (ops.add_rms_norm(*leaves[:3], 1e-6) if rms else ops.add_layer_norm(*leaves, 1e-6))
        ((y * dy).float().sum() + (s * ds).float().sum()).backward()
        sd = refs[0] + refs[1]
        yd = F.rms_norm(sd, (n,), refs[2], 1e-6) if rms else F.layer_norm(sd, (n,), refs[2], refs[3], 1e-6)
        ((yd * dy.double()).sum() + (sd * ds.double()).sum()).backward()
        _assert_grads([None if t is None else t.grad for t in leaves], [None if t is None else t.grad for t in refs],
                      dtype)
    xl, bl = _leaf(x), _leaf(b)
    (ops.bias_gelu(xl, bl, "tanh") * dy).float().sum().backward()
    xd, bd = x.double().requires_grad_(), b.double().requires_grad_()
    (F.gelu(xd + bd, approximate="tanh") * dy.double()).sum().backward()
    _assert_grads([xl.grad, None, None, bl.grad], [xd.grad, None, None, bd.grad], dtype)
