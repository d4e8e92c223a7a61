"""The explicit backward formulas (engine.ops.grad, engine.ops.attention_grad) against float64 autograd.

What a compiled training graph runs off the kernels: ``grad.norm_backward`` / ``grad.gelu_backward`` /
``grad.bias_grad`` (the PyTorch path) and the registered differentiable attention ops
``torch.ops.engine.scaled_dot_product_attention_lse`` / ``varlen_attention_lse`` (ENGINE_BACKEND=torch: PyTorch
forward, ``attention_grads_torch`` backward) are held to float64 autograd of torch's own ops, written here
independently of engine (F.layer_norm, F.rms_norm, F.gelu, softmax attention with top-left / bottom-right causal
masks). Then, on the Triton kernels (the interpreter on a CPU, tiny sizes): the same registered attention ops' kernel
backward, the autograd Functions' strided inputs, and the attention dropout seeds (drawn from torch's default
generator only when dropout is on). Odd sizes throughout; the whole file runs in a few seconds.
"""
import pytest
import torch
import torch.nn.functional as F

from engine import ops
from engine.ops import grad
from engine.ops.attention_grad import dropout_seed

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: dict(atol=1e-12, rtol=1e-12), F32: dict(atol=2e-5, rtol=2e-5)}


def _randn(*shape, gen, dtype=F64, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale + shift).to(dtype)


def _close(got, want, dtype, what):
    assert got.dtype == dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.shape)
    torch.testing.assert_close(got.double(), want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


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
    v = _randn(m, n, gen=gen, scale=0.6, shift=0.9)
    dy, ds = _randn(m, n, gen=gen), _randn(m, n, gen=gen)
    w = _randn(n, gen=gen, shift=0.5) if affine else torch.ones(n, dtype=F64)
    b = _randn(n, gen=gen)
    leaves = [t.clone().requires_grad_() for t in (v, w, b)]
    y = (F.rms_norm(leaves[0], (n,), leaves[1], eps) if rms
         else F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], eps))
    y.backward(dy)
    want_dv = leaves[0].grad + (ds if with_ds else 0.0)
    dv, dw, db = grad.norm_backward(dy.to(dtype), ds.to(dtype) if with_ds else None, v.to(dtype),
                                    w.to(dtype) if affine else None, eps, rms=rms)
    _close(dv, want_dv, dtype, "dv")
    _close(dw, leaves[1].grad, dtype, "dweight")
    if rms:
        assert db is None
    else:
        _close(db, leaves[2].grad, dtype, "dbias")


def test_norm_backward_of_half_inputs_computes_in_fp32(torch_backend):
    """bfloat16 rows: the gradients come back in bfloat16, one rounding away from the float64 values."""
    gen = torch.Generator().manual_seed(8)
    v, dy = _randn(3, 41, gen=gen, shift=1.0, dtype=BF16), _randn(3, 41, gen=gen, dtype=BF16)
    w = _randn(41, gen=gen, dtype=BF16)
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
    x = _randn(m, 2 * n if kind == "gated" else n, gen=gen, scale=2.7)
    bias = _randn(n, gen=gen, shift=-0.3) if kind == "bias" else None
    dy = _randn(m, n, gen=gen)
    xd = x.clone().requires_grad_()
    bd = None if bias is None else bias.clone().requires_grad_()
    if kind == "gated":
        y = F.gelu(xd[:, :n], approximate=approximate) * xd[:, n:]
    else:
        y = F.gelu(xd if bd is None else xd + bd, approximate=approximate)
    y.backward(dy)
    dx = grad.gelu_backward(dy.to(dtype), x.to(dtype), None if bias is None else bias.to(dtype), approximate,
                            gated=kind == "gated")
    _close(dx, xd.grad, dtype, "dx")
    if bias is not None:
        db = grad.bias_grad(dx, bias.to(dtype))
        _close(db, bd.grad, dtype, "dbias")


def test_bias_grad_sums_every_leading_dim():
    gen = torch.Generator().manual_seed(4)
    dx, bias = _randn(2, 3, 5, gen=gen, dtype=F32), torch.zeros(5, dtype=BF16)
    db = grad.bias_grad(dx, bias)
    assert db.dtype == BF16
    torch.testing.assert_close(db.double(), dx.double().sum((0, 1)).to(BF16).double())


# ---- the registered norm / GELU ops' autograd formulas (engine.ops.library_norm_gelu) ------------------------------
def _norm_cases(gen):
    """(name, args of torch.ops.engine.<name>, the float64 reference of its outputs): 3-D inputs, a 2-D
    normalized_shape (weight / bias (4, 7)), no weight, bias without weight."""
    x, r = _randn(2, 4, 7, gen=gen, scale=1.3, shift=0.6), _randn(2, 4, 7, gen=gen)
    w2, b2 = _randn(4, 7, gen=gen, shift=0.4), _randn(4, 7, gen=gen)
    w, b = _randn(7, gen=gen, shift=0.4), _randn(7, gen=gen)
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
        weights = [_randn(*t.shape, gen=g) if t.dim() else torch.tensor(1.7, dtype=F64) for t in want]
        sum(((o * wt).sum() for o, wt in zip(got, weights)), torch.zeros((), dtype=F64)).backward()
        sum(((o * wt).sum() for o, wt in zip(want, weights)), torch.zeros((), dtype=F64)).backward()
        for i, (a, r) in enumerate(zip(leaves, refs)):
            if isinstance(a, torch.Tensor):
                assert a.grad is not None, (name, use, i)
                torch.testing.assert_close(a.grad, r.grad, **TOL[F64], msg=lambda m, i=i: f"{name} arg {i}: {m}")


# ---- attention: the registered differentiable ops on the PyTorch path --------------------------------------------
def _attention64(q, k, v, keep, scale):
    """softmax(q k^T * scale) v over the allowed keys (``keep`` bool, broadcast), rows without keys -> zeros."""
    s = (q @ k.transpose(-1, -2)) * scale
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def _causal(n_q, n_k, bottom_right):
    i = torch.arange(n_q)[:, None] + (n_k - n_q if bottom_right else 0)
    return torch.arange(n_k)[None, :] <= i


@pytest.mark.parametrize("mask_kind, causal, scale", [
    (None, False, None), (None, True, 0.41), ("bool", True, None), ("additive", False, 1.3)])
def test_sdpa_lse_op_grads_on_pytorch(torch_backend, mask_kind, causal, scale):
    """torch.ops.engine.scaled_dot_product_attention_lse (what a compiled training graph calls): its output and,
    through its registered backward, dq / dk / dv equal float64 autograd; Nq = 6 > Nk = 5 (top-left causal leaves
    rows with every key), a row that sees no key (zero output and gradients); lse has the fake implementation's
    shape and dtype."""
    gen = torch.Generator().manual_seed(23)
    b, h, n_q, n_k, d = 2, 3, 6, 5, 7
    q, k, v = _randn(b, h, n_q, d, gen=gen), _randn(b, h, n_k, d, gen=gen), _randn(b, h, n_k, d, gen=gen)
    keep, mask = None, None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, n_q, n_k, generator=gen) > 0.35
        mask[1, 0, 4] = False  # no key at all
        keep = mask
    elif mask_kind == "additive":
        mask = _randn(b, h, n_q, n_k, gen=gen, scale=1.5)
    if causal:
        tri = _causal(n_q, n_k, bottom_right=False)
        keep = tri if keep is None else keep & tri
    sc = d ** -0.5 if scale is None else scale
    do = _randn(b, h, n_q, d, gen=gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = torch.ops.engine.scaled_dot_product_attention_lse(*leaves, mask, causal, scale)
    out.backward(do)
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    if mask_kind == "additive":  # an additive mask is added to the scaled scores
        s = (refs[0] @ refs[1].transpose(-1, -2)) * sc + mask
        if causal:
            s = s.masked_fill(~keep, float("-inf"))
        want = torch.softmax(s, -1) @ refs[2]
    else:
        want = _attention64(*refs, keep, sc)
    want.backward(do)
    assert lse.shape == (2, b, h, n_q) and lse.dtype == F32
    torch.testing.assert_close(out, want, **TOL[F64])
    for name, a, r in zip(("dq", "dk", "dv"), leaves, refs):
        torch.testing.assert_close(a.grad, r.grad, **TOL[F64], msg=lambda m, name=name: f"{name}: {m}")
    if mask_kind == "bool":
        assert (out[1, :, 4] == 0).all() and (leaves[0].grad[1, :, 4] == 0).all()


def _varlen64(q, k, v, lens_q, lens_k, causal, scale):
    """Packed (total, H, D) attention, sequence by sequence, bottom-right causal; no keys -> zero rows."""
    outs, cq, ck = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        qs, ks, vs = (t.transpose(0, 1) for t in (q[cq:cq + lq], k[ck:ck + lk], v[ck:ck + lk]))
        keep = _causal(lq, lk, bottom_right=True) if causal else None
        outs.append(_attention64(qs, ks, vs, keep, scale).transpose(0, 1))
        cq, ck = cq + lq, ck + lk
    return torch.cat(outs)


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("causal, scale", [(True, None), (False, 0.6)])
def test_varlen_lse_op_grads_on_pytorch(torch_backend, causal, scale):
    """torch.ops.engine.varlen_attention_lse through its registered backward (the per-sequence PyTorch formulas):
    sequences with Nq < Nk, Nq > Nk (bottom-right causal: early queries see no key), an empty query sequence and an
    empty key sequence (zero output and gradients); H = 3 and D = 5 differ from every total."""
    gen = torch.Generator().manual_seed(29)
    lens_q, lens_k = [2, 6, 0, 3, 4], [5, 3, 2, 0, 4]
    h, d = 3, 5
    q, do = _randn(sum(lens_q), h, d, gen=gen), _randn(sum(lens_q), h, d, gen=gen)
    k, v = _randn(sum(lens_k), h, d, gen=gen), _randn(sum(lens_k), h, d, gen=gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = torch.ops.engine.varlen_attention_lse(*leaves, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k),
                                                      causal, scale, True)
    out.backward(do)
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    want = _varlen64(*refs, lens_q, lens_k, causal, d ** -0.5 if scale is None else scale)
    want.backward(do)
    assert lse.shape == (2, h, sum(lens_q)) and lse.dtype == F32
    torch.testing.assert_close(out, want, **TOL[F64])
    for name, a, r in zip(("dq", "dk", "dv"), leaves, refs):
        torch.testing.assert_close(a.grad, r.grad, **TOL[F64], msg=lambda m, name=name: f"{name}: {m}")


def test_varlen_lse_op_validates_only_when_asked(torch_backend):
    """validate=True checks cu_seqlens' values against the totals (here they do not end at the total)."""
    gen = torch.Generator().manual_seed(2)
    q = _randn(7, 3, 5, gen=gen)
    bad = torch.tensor([0, 3, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens"):
        torch.ops.engine.varlen_attention_lse(q, q, q, bad, bad, 3, 3, False, None, True)
    good = torch.tensor([0, 3, 7], dtype=torch.int32)
    out, _ = torch.ops.engine.varlen_attention_lse(q, q, q, good, good, 4, 4, False, None, True)
    torch.testing.assert_close(out, _varlen64(q, q, q, [3, 4], [3, 4], False, 5 ** -0.5), **TOL[F64])


# ---- the kernels (interpreter): registered ops, strided rows, dropout seeds ---------------------------------------
def _ref_leaves(*ts):
    """float64 CPU copies of ts that require grad (the references' inputs)."""
    return [t.detach().double().cpu().requires_grad_() for t in ts]


def _spy(monkeypatch, *targets):
    """The names of the calls made to each (module, name) kernel launcher, in order: a silent PyTorch fallback
    would pass the numbers."""
    calls = []
    for module, name in targets:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _f=real, **kw: calls.append(_n) or _f(*a, **kw))
    return calls


@pytest.mark.parametrize("causal", [False, True])
def test_registered_attention_ops_on_the_kernels(triton_backend, device, monkeypatch, causal):
    """The registered differentiable ops on the Triton kernels (forward with lse, backward kernels): fp32 grads
    within 1e-5 of float64 autograd, dense (Nq = 9, Nk = 11) and packed (sequences 4 + 7 / 6 + 2)."""
    import engine.kernels.attention as kattn

    calls = _spy(monkeypatch, (kattn, "attention_bwd"), (kattn, "varlen_bwd"))
    gen = torch.Generator().manual_seed(31)
    b, h, d = 1, 2, 16
    q, do = _randn(b, h, 9, d, gen=gen, dtype=F32), _randn(b, h, 9, d, gen=gen, dtype=F32)
    k, v = _randn(b, h, 11, d, gen=gen, dtype=F32), _randn(b, h, 11, d, gen=gen, dtype=F32)
    refs = _ref_leaves(q, k, v)
    want = _attention64(*refs, _causal(9, 11, False) if causal else None, 0.3)
    want.backward(do.double())
    leaves = [t.to(device).requires_grad_() for t in (q, k, v)]
    out, _ = torch.ops.engine.scaled_dot_product_attention_lse(*leaves, None, causal, 0.3)
    out.backward(do.to(device))
    for a, r in zip([out, *(t.grad for t in leaves)], [want.detach(), *(t.grad for t in refs)]):
        torch.testing.assert_close(a.double().cpu(), r, atol=1e-5 * float(r.abs().max()), rtol=1e-5)

    lens_q, lens_k = [4, 7], [6, 2]
    pq, pdo = _randn(11, h, d, gen=gen, dtype=F32), _randn(11, h, d, gen=gen, dtype=F32)
    pk, pv = _randn(8, h, d, gen=gen, dtype=F32), _randn(8, h, d, gen=gen, dtype=F32)
    refs = _ref_leaves(pq, pk, pv)
    want = _varlen64(*refs, lens_q, lens_k, causal, d ** -0.5)
    want.backward(pdo.double())
    leaves = [t.to(device).requires_grad_() for t in (pq, pk, pv)]
    out, _ = torch.ops.engine.varlen_attention_lse(*leaves, _cu(lens_q).to(device), _cu(lens_k).to(device), 7, 6,
                                                   causal, None, True)
    out.backward(pdo.to(device))
    for a, r in zip([out, *(t.grad for t in leaves)], [want.detach(), *(t.grad for t in refs)]):
        torch.testing.assert_close(a.double().cpu(), r, atol=1e-5 * float(r.abs().max()), rtol=1e-5)
    assert calls == ["attention_bwd", "varlen_bwd"]


def test_registered_forward_and_backward_ops_agree_on_the_path(triton_backend, device):
    """As a compiled graph calls them (plain tensors, no autograd): the *_lse forward, then the *_backward op with
    its out and lse. fp32 with head dim 80 has no backward kernel, so both ops must take PyTorch (the forward's lse
    is then a placeholder the backward does not read); dq / dk / dv equal float64 autograd."""
    gen = torch.Generator().manual_seed(61)
    q, k, v, do = (_randn(1, 2, n, 80, gen=gen, dtype=F32).to(device) for n in (5, 6, 6, 5))
    out, lse = torch.ops.engine.scaled_dot_product_attention_lse(q, k, v, None, True, None)
    got = torch.ops.engine.scaled_dot_product_attention_backward(do, q, k, v, out, lse, None, True, None)
    refs = _ref_leaves(q, k, v)
    _attention64(*refs, _causal(5, 6, False), 80 ** -0.5).backward(do.double().cpu())
    for a, r in zip(got, refs):
        torch.testing.assert_close(a.double().cpu(), r.grad, atol=1e-5 * float(r.grad.abs().max()), rtol=1e-5)
    pq, pdo = (_randn(7, 2, 80, gen=gen, dtype=F32).to(device) for _ in range(2))
    pk, pv = (_randn(6, 2, 80, gen=gen, dtype=F32).to(device) for _ in range(2))
    cq, ck = _cu([3, 4]).to(device), _cu([2, 4]).to(device)
    out, lse = torch.ops.engine.varlen_attention_lse(pq, pk, pv, cq, ck, 4, 4, True, 0.2, True)
    got = torch.ops.engine.varlen_attention_backward(pdo, pq, pk, pv, out, lse, cq, ck, 4, 4, True, 0.2)
    refs = _ref_leaves(pq, pk, pv)
    _varlen64(*refs, [3, 4], [2, 4], True, 0.2).backward(pdo.double().cpu())
    for a, r in zip(got, refs):
        torch.testing.assert_close(a.double().cpu(), r.grad, atol=1e-5 * float(r.grad.abs().max()), rtol=1e-5)


@pytest.mark.parametrize("lens_q, lens_k", [([1], [1]), ([1, 1], [3, 1]), ([0, 0], [2, 3]), ([2, 3], [0, 0])])
def test_varlen_kernel_path_with_single_or_no_queries_or_keys(triton_backend, device, lens_q, lens_k):
    """Packed calls at the edges of the kernel path: one query and one key in all (out = v, dv = dout), queries
    of length 1 (max_seqlen_q = 1), no query at all and no key at all (total 0: zero outputs and gradients, the
    lse of rows without keys, (inf, 0), as the kernel writes it for such rows); values and grads (inference and
    training) vs float64. On a GPU the empty calls also check that no kernel is launched on empty tensors."""
    gen = torch.Generator().manual_seed(59)
    h, d = 2, 16
    q, do = _randn(sum(lens_q), h, d, gen=gen, dtype=F32), _randn(sum(lens_q), h, d, gen=gen, dtype=F32)
    k, v = _randn(sum(lens_k), h, d, gen=gen, dtype=F32), _randn(sum(lens_k), h, d, gen=gen, dtype=F32)
    cq, ck, mq, mk = _cu(lens_q).to(device), _cu(lens_k).to(device), max(lens_q), max(lens_k)
    want_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    want = _varlen64(*want_leaves, lens_q, lens_k, False, 0.25)
    want.backward(do.double())
    q, k, v, do = (t.to(device) for t in (q, k, v, do))
    with torch.no_grad():
        torch.testing.assert_close(ops.varlen_attention(q, k, v, cq, ck, mq, mk, scale=0.25).double().cpu(),
                                   want.detach(), atol=1e-5, rtol=1e-5)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = torch.ops.engine.varlen_attention_lse(*leaves, cq, ck, mq, mk, False, 0.25, True)
    out.backward(do)
    torch.testing.assert_close(out.double().cpu(), want.detach(), atol=1e-5, rtol=1e-5)
    for a, r in zip(leaves, want_leaves):
        torch.testing.assert_close(a.grad.double().cpu(), r.grad, atol=1e-5, rtol=1e-5)
    if sum(lens_k) == 0:
        assert (lse[0] == float("inf")).all() and (lse[1] == 0).all()


@pytest.mark.parametrize("layout", ["every_other", "transposed"])
@pytest.mark.parametrize("loss", ["weighted", "sum"])
def test_kernel_functions_take_rows_without_unit_column_stride(triton_backend, device, monkeypatch, layout, loss):
    """Inputs whose rows are not contiguous, x[:, ::2] (elements 2 apart) and x.t() (rows 1 apart, elements 3
    apart), and the output gradient of ``.sum()`` (an expanded tensor: stride 0), through the kernel Functions of
    layer_norm and bias_gelu: the kernels read unit-stride rows (grad.rows copies the others), so values and
    gradients equal float64 autograd."""
    from engine.kernels import gelu as gelu_kernels
    from engine.kernels import norm as norm_kernels

    calls = _spy(monkeypatch, (norm_kernels, "norm_bwd"), (gelu_kernels, "gelu_bwd"))
    gen = torch.Generator().manual_seed(37)
    base = _randn(*((3, 26) if layout == "every_other" else (13, 3)), gen=gen, dtype=F32, shift=0.4)
    view = (lambda t: t[:, ::2]) if layout == "every_other" else (lambda t: t.t())
    w, b = _randn(13, gen=gen, dtype=F32), _randn(13, gen=gen, dtype=F32)
    dy = _randn(3, 13, gen=gen, dtype=F32) if loss == "weighted" else torch.ones(3, 13)
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

    calls = _spy(monkeypatch, (gelu_kernels, "gelu_bwd"))
    gen = torch.Generator().manual_seed(43)
    x, dy = _randn(2, 3, 19, gen=gen, dtype=F32, scale=2.0), _randn(2, 3, 19, gen=gen, dtype=F32)
    bias = _randn(19, gen=gen, dtype=F32)
    bd = bias.double().requires_grad_()
    (F.gelu(x.double() + bd, approximate="tanh") * dy.double()).sum().backward()
    x, dy, bias = x.to(device), dy.to(device), bias.to(device).requires_grad_()
    (ops.bias_gelu(x, bias, "tanh") * dy).sum().backward()
    assert calls == ["gelu_bwd"] and x.grad is None
    torch.testing.assert_close(bias.grad.double().cpu(), bd.grad, atol=2e-5 * float(bd.grad.abs().max()), rtol=2e-5)


def test_dropout_seed_follows_torch_manual_seed():
    """A seed per call from torch's default generator: reproducible after manual_seed, different call to call,
    a non-negative int64."""
    torch.manual_seed(11)
    first = [dropout_seed() for _ in range(4)]
    torch.manual_seed(11)
    again = [dropout_seed() for _ in range(4)]
    assert first == again and len(set(first)) == 4
    assert all(type(s) is int and 0 <= s < 2 ** 62 for s in first)


def test_attention_without_dropout_leaves_torchs_generator_alone(triton_backend, device):
    """dropout_p = 0 on the kernels (inference, a call that records grad, varlen) draws no seed: torch's default
    generator is where it was (PyTorch's own SDPA does not advance it either)."""
    gen = torch.Generator().manual_seed(41)
    q = _randn(1, 2, 5, 16, gen=gen, dtype=F32).to(device)
    pq = _randn(5, 2, 16, gen=gen, dtype=F32).to(device)
    cu = torch.tensor([0, 5], dtype=torch.int32, device=device)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with torch.no_grad():
        ops.scaled_dot_product_attention(q, q, q, dropout_p=0.0)
        ops.varlen_attention(pq, pq, pq, cu, cu, 5, 5, dropout_p=0.0)
    leaf = q.clone().requires_grad_()
    ops.scaled_dot_product_attention(leaf, leaf, leaf, dropout_p=0.0).sum().backward()
    leaf = pq.clone().requires_grad_()
    ops.varlen_attention(leaf, leaf, leaf, cu, cu, 5, 5, dropout_p=0.0).sum().backward()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    with torch.no_grad():
        ops.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    assert not torch.equal(torch.get_rng_state(), state)  # (dropout does draw: the check above can fail)


# ---- the fake implementations of the ops only training graphs call ----------------------------------------------
def _backward_op_cases(device):
    """(op name, args, backend) of the registered ops only training graphs call (their fake implementations are
    what torch.compile traces with): odd sizes, float32 and float64, optional arguments absent. The *_lse ops run
    on the kernels (the interpreter): on the PyTorch path their lse output is an unused, uninitialised
    placeholder, which opcheck's eager-vs-traced comparison would read."""
    gen = torch.Generator().manual_seed(53)
    v, dy, ds = (_randn(5, 9, gen=gen, dtype=F32) for _ in range(3))
    w = _randn(9, gen=gen, dtype=F32)
    x2, b = _randn(5, 18, gen=gen), _randn(9, gen=gen)
    q = _randn(2, 3, 6, 16, gen=gen, dtype=F32)
    kv = _randn(2, 3, 7, 16, gen=gen, dtype=F32)
    keep = torch.rand(2, 1, 6, 7, generator=gen) > 0.3
    pq, pkv = _randn(9, 3, 16, gen=gen, dtype=F32), _randn(7, 3, 16, gen=gen, dtype=F32)
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


def test_registered_sdpa_without_enable_gqa_refuses_grouped_heads():
    """The registered SDPA called without enable_gqa (its schema default, False, as torch's SDPA): 6 query heads
    over 2 key heads are refused by the op and by its fake implementation alike, naming enable_gqa."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for mode in (None, FakeTensorMode()):
        with mode or torch.no_grad():
            q, kv = torch.randn(1, 6, 3, 8), torch.randn(1, 2, 3, 8)
            with pytest.raises(ValueError, match=r"must broadcast \(enable_gqa=False\)"):
                torch.ops.engine.scaled_dot_product_attention(q, kv, kv, None, 0.0, False, None)


def test_registered_decode_refuses_a_bias_table_shorter_than_the_cache():
    """decode_attention's relative position table must cover the whole cache (L >= its 6 slots), not merely as
    many distances as there are heads: a (2, 5) table (L = 3) is refused by the op and by its fake implementation
    with the same message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for mode in (None, FakeTensorMode()):
        with mode or torch.no_grad():
            q, cache = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 6, 16)
            lens = torch.full((1,), 4, dtype=torch.int32)
            with pytest.raises(ValueError, match=r"covers distances up to 2 \(L = 3\), but this call needs L >= 6"):
                torch.ops.engine.decode_attention(q, cache, cache, lens, None, None, torch.randn(2, 5))
