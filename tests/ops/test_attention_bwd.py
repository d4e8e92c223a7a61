"""Backward of ops.scaled_dot_product_attention / ops.varlen_attention on the kernels (interpreter on CPU), and
attention dropout in the kernel.

dq, dk, dv against float64 autograd of the reference math (tests/ops/test_attention.py's and test_varlen.py's
references), with the output gradient random; a spy checks the backward kernels ran (a silent PyTorch fallback would
pass the numbers). Under the interpreter the dK/dV kernel tiles with (BLOCK_M, BLOCK_N) = (16, 32) and the dQ kernel
with (32, 16) (engine.kernels.attention.bwd), so N = 17 and 31 / 33 sit on block boundaries +/- 1 of both, and 40
crosses more than two blocks of 16. Gradient tolerances are relative to the largest reference gradient.
"""
import sys

import pytest
import torch

import engine.kernels.attention as kattn
from engine import ops
from engine.kernels.attention import bwd as kbwd
from engine.kernels.attention import fwd as kfwd
from tests.ops.test_attention import _masks, reference
from tests.ops.test_varlen import cu_of
from tests.ops.test_varlen import reference as varlen_reference

# max |ours - float64| / (largest float64 grad of dq, dk, dv) per dtype.
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def spy(monkeypatch):
    """Counts the backward kernel launches (dense, varlen) made through engine.kernels.attention."""
    calls = {"dense": 0, "varlen": 0}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(kattn, "attention_bwd", wrap("dense", kattn.attention_bwd))
    monkeypatch.setattr(kattn, "varlen_bwd", wrap("varlen", kattn.varlen_bwd))
    return calls


def _leaves(shapes, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype).requires_grad_() for s in shapes]


def _assert_grads(ours, refs, dtype):
    """Each gradient within GRAD_TOL of its float64 reference, relative to the largest of the three (a gradient
    can be exactly zero, e.g. dq when every row sees one key)."""
    scale = max(r.abs().max().item() for r in refs)
    for name, a, r in zip(("dq", "dk", "dv"), ours, refs):
        assert a is not None and a.dtype == dtype and a.shape == r.shape, name
        assert torch.isfinite(a).all(), name
        err = (a.detach().cpu().double() - r).abs().max().item()
        assert err <= GRAD_TOL[dtype] * scale, (name, err, scale)


def _ref_grads(fn, tensors, grad):
    leaves = [t.detach().cpu().double().requires_grad_() for t in tensors]
    fn(*leaves).backward(grad.detach().cpu().double())
    return [t.grad for t in leaves]


CASES = [  # (n_q, n_k, head_dim, causal, dtype)
    (17, 17, 16, True, torch.float32),
    (1, 1, 16, False, torch.float32),
    (33, 31, 80, True, torch.float16),   # Nq > Nk, padded head dim
    (31, 33, 16, False, torch.bfloat16),
    (40, 17, 16, True, torch.float32),   # top-left causal with Nq > Nk
]


@pytest.mark.parametrize("n_q,n_k,d,causal,dtype", CASES)
def test_sdpa_grads_match_float64(triton_backend, device, spy, n_q, n_k, d, causal, dtype):
    q, k, v, do = _leaves([(1, 2, n_q, d), (1, 2, n_k, d), (1, 2, n_k, d), (1, 2, n_q, d)], dtype, device, n_q + d)
    out = ops.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out.backward(do)
    assert spy["dense"] == 1
    refs = _ref_grads(lambda a, b, c: reference(a, b, c, causal=causal), (q, k, v), do)
    _assert_grads((q.grad, k.grad, v.grad), refs, dtype)


@pytest.mark.parametrize("kind,causal,dtype", [
    ("bool4d", True, torch.float32),        # rows that see no key, a row of one key
    ("additive4d", False, torch.float32),   # -inf rows, most-negative finite rows
    ("bool_keypad", False, torch.float16),
    ("additive_keypad", True, torch.bfloat16),
])
def test_sdpa_mask_grads(triton_backend, device, spy, kind, causal, dtype):
    b, h, n = 2, 2, 33
    mask = _masks(kind, b, h, n, n, device)
    q, k, v, do = _leaves([(b, h, n, 16)] * 4, dtype, device, 3)
    ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).backward(do)
    assert spy["dense"] == 1
    refs = _ref_grads(lambda a, c, e: reference(a, c, e, mask.cpu(), causal), (q, k, v), do)
    _assert_grads((q.grad, k.grad, v.grad), refs, dtype)
    if kind == "bool4d":  # rows that see no key: zero gradient, as on the PyTorch path
        assert (q.grad[0, 0, 3] == 0).all() and (q.grad[0, 1, 5].abs().sum() > 0 or causal)


def test_sdpa_pytorch_path_gives_the_same_grads(monkeypatch, device):
    """The kernel backward and engine's PyTorch path agree, fully masked rows included."""
    mask = _masks("bool4d", 2, 2, 20, 20, device)
    grads = []
    for backend in ("triton", "torch"):
        monkeypatch.setenv("ENGINE_BACKEND", backend)
        q, k, v, do = _leaves([(2, 2, 20, 16)] * 4, torch.float32, device, 5)
        ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True).backward(do)
        grads.append([t.grad for t in (q, k, v)])
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5)


def test_kernels_write_every_gradient_element(device):
    """Poisoned (NaN) dq, dk, dv and lse buffers: the kernels overwrite every element (odd sizes, padded D)."""
    b, h, n_q, n_k, d = 2, 2, 19, 35, 24
    g = torch.Generator().manual_seed(7)
    q, do = (torch.randn(b, h, n_q, d, generator=g).to(device) for _ in range(2))
    k, v = (torch.randn(b, h, n_k, d, generator=g).to(device) for _ in range(2))
    mask = torch.rand(b, 1, n_q, n_k, generator=g).to(device) > 0.3
    mask[0, 0, 4] = False
    out = torch.full_like(q, float("nan"))
    lse = torch.full((2, b, h, n_q), float("nan"), device=device)
    kfwd.attention_fwd(q, k, v, out, mask=mask.expand(b, h, n_q, n_k), causal=False, scale=d ** -0.5, lse=lse)
    assert not lse.isnan().any() and (lse[0, 0, :, 4] == float("inf")).all()
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
    kbwd.attention_bwd(do, q, k, v, out, lse, dq, dk, dv, mask=mask.expand(b, h, n_q, n_k), causal=False,
                       scale=d ** -0.5)
    refs = _ref_grads(lambda a, c, e: reference(a, c, e, mask.cpu()), (q, k, v), do)
    _assert_grads((dq, dk, dv), refs, torch.float32)


@pytest.mark.parametrize("dkdv_config,dq_config", [((32, 16, 4, 1), None), (None, (16, 32, 4, 1)),
                                                   ((16, 16, 4, 1), (32, 32, 4, 1))])
def test_explicit_tile_configs(device, dkdv_config, dq_config):
    """attention_bwd's dkdv_config / dq_config each alone (the other kernel keeps its table's tiles) and both, with
    tiles the interpreter's defaults do not use (the dK/dV kernel's BLOCK_M > BLOCK_N, square tiles): the same
    gradients. 37 queries and 29 keys cross every tile size here; causal with Nq > Nk."""
    b, h, n_q, n_k, d = 1, 2, 37, 29, 16
    g = torch.Generator().manual_seed(47)
    q, do = (torch.randn(b, h, n_q, d, generator=g).to(device) for _ in range(2))
    k, v = (torch.randn(b, h, n_k, d, generator=g).to(device) for _ in range(2))
    out, lse = torch.empty_like(q), torch.empty(2, b, h, n_q, device=device)
    kfwd.attention_fwd(q, k, v, out, mask=None, causal=True, scale=d ** -0.5, lse=lse)
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))
    kbwd.attention_bwd(do, q, k, v, out, lse, dq, dk, dv, mask=None, causal=True, scale=d ** -0.5,
                       dkdv_config=dkdv_config, dq_config=dq_config)
    refs = _ref_grads(lambda a, c, e: reference(a, c, e, causal=True), (q, k, v), do)
    _assert_grads((dq, dk, dv), refs, torch.float32)


VARLEN_CASES = [  # (lens_q, lens_k (None = same), head_dim, causal, dtype)
    ([1, 17, 40], None, 16, True, torch.float32),
    ([33, 2, 31], None, 80, False, torch.float16),
    ([5, 20, 0], [12, 3, 7], 16, True, torch.bfloat16),  # bottom-right causal both ways, an empty query sequence
    ([9, 4], [0, 6], 32, False, torch.float32),          # an empty key sequence: zero grads for its queries
    ([20, 7], [45, 40], 16, True, torch.float32),        # keys ahead by 25 / 33: key tile 32 seen from query 7 / 0
    ([5, 20], [19, 34], 16, True, torch.float32),        # keys ahead by 14: query 0 sees 15 keys of the first 16
]


@pytest.mark.parametrize("lens_q,lens_k,d,causal,dtype", VARLEN_CASES)
def test_varlen_grads_match_float64(triton_backend, device, spy, lens_q, lens_k, d, causal, dtype):
    lens_k = lens_q if lens_k is None else lens_k
    h = 2
    q, k, v, do = _leaves([(sum(lens_q), h, d), (sum(lens_k), h, d), (sum(lens_k), h, d), (sum(lens_q), h, d)],
                          dtype, device, sum(lens_q) + d)
    out = ops.varlen_attention(q, k, v, cu_of(lens_q, device), cu_of(lens_k, device), max(lens_q), max(lens_k),
                               causal=causal)
    out.backward(do)
    assert spy["varlen"] == 1
    refs = _ref_grads(lambda a, b, c: varlen_reference(a, b, c, lens_q, lens_k, causal), (q, k, v), do)
    _assert_grads((q.grad, k.grad, v.grad), refs, dtype)


def test_mask_that_requires_grad_takes_pytorch(triton_backend, device, spy):
    """Masks get no gradient from the kernels: a mask that requires grad runs PyTorch, which gives it one."""
    q, k, v, mask = _leaves([(1, 2, 9, 16)] * 3 + [(1, 1, 9, 9)], torch.float32, device, 11)
    ops.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    assert spy["dense"] == 0 and mask.grad is not None and q.grad is not None


# ---- dropout ------------------------------------------------------------------------------------------------

def _kept(q, k, p, seed, **kwargs):
    """The kernel's keep mask for a call's (q, k) at ``seed``: run it with V = identity (one column per key), so
    out[i, j] = P[i, j] * Z[i, j] / (1 - p), nonzero exactly where key j is kept for query i. The kernel needs
    V's head dim = q's: q and k are padded with zero columns to Nk (same scores at the original scale), and the
    mask does not depend on the head dim. Needs Nk >= D."""
    n_k, d = k.shape[2], q.shape[3]
    pad = lambda t: torch.nn.functional.pad(t, (0, n_k - d))  # noqa: E731
    eye = torch.eye(n_k, dtype=q.dtype, device=q.device).expand(*k.shape[:2], n_k, n_k)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = ops.scaled_dot_product_attention(pad(q), pad(k), eye, dropout_p=p, scale=d ** -0.5, **kwargs)
    return out != 0


def test_dropout_same_seed_same_mask_and_keep_rate(triton_backend, device):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 2, 48, 48, generator=g).to(device) for _ in range(2))
    p = 0.3
    z1, z2, z3 = _kept(q, k, p, 123), _kept(q, k, p, 123), _kept(q, k, p, 124)
    assert torch.equal(z1, z2)  # same seed -> same mask
    assert not torch.equal(z1, z3)
    rate, n = z1.float().mean().item(), z1.numel()
    sigma = ((1 - p) * p / n) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma, (rate, 1 - p, sigma)
    # heads and rows draw independently: no two heads, no two rows share a mask
    assert not torch.equal(z1[0, 0], z1[0, 1]) and not torch.equal(z1[0, 0, 0], z1[0, 0, 1])
    # and the output itself is reproducible
    v = torch.randn(2, 2, 48, 48, generator=g).to(device)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(ops.scaled_dot_product_attention(q, k, v, dropout_p=p))
    assert torch.equal(*outs)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_backward_matches_the_forward_mask(triton_backend, device, spy, causal):
    """Grads with dropout equal float64 autograd of softmax * Z / (1 - p) @ V with the kernel's own mask Z."""
    n, d, p, seed = 33, 16, 0.25, 99
    q, k, v, do = _leaves([(1, 2, n, d)] * 4, torch.float32, device, 13)
    z = _kept(q.detach(), k.detach(), p, seed, is_causal=causal).cpu()
    torch.manual_seed(seed)
    out = ops.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
    out.backward(do)
    assert spy["dense"] == 1

    def ref(a, b, c):
        s = (a @ b.transpose(-1, -2)) * d ** -0.5
        if causal:
            s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return (torch.softmax(s, -1) * z / (1 - p)) @ c

    with torch.no_grad():
        torch.testing.assert_close(out.cpu().double(), ref(q.cpu().double(), k.cpu().double(), v.cpu().double()),
                                   atol=2e-5, rtol=2e-5)
    _assert_grads((q.grad, k.grad, v.grad), _ref_grads(ref, (q, k, v), do), torch.float32)


def test_varlen_dropout_backward_is_consistent(triton_backend, device, spy):
    """Packed dropout: same seed -> same output; grads equal the dense kernel's on the same single sequence (the
    mask depends only on (seed, batch, head, row, key), not on the layout)."""
    n, h, d, p = 21, 2, 16, 0.2
    q, k, v, do = _leaves([(n, h, d)] * 4, torch.float32, device, 17)
    cu = cu_of([n], device)
    torch.manual_seed(3)
    out = ops.varlen_attention(q, k, v, cu, cu, n, n, causal=True, dropout_p=p)
    out.backward(do)
    assert spy["varlen"] == 1
    dense = [t.detach().transpose(0, 1).unsqueeze(0).requires_grad_() for t in (q, k, v)]
    torch.manual_seed(3)
    out_d = ops.scaled_dot_product_attention(*dense, is_causal=True, dropout_p=p)
    out_d.backward(do.transpose(0, 1).unsqueeze(0))
    torch.testing.assert_close(out, out_d.squeeze(0).transpose(0, 1), atol=1e-6, rtol=1e-6)
    for a, r in zip((q.grad, k.grad, v.grad), dense):
        torch.testing.assert_close(a, r.grad.squeeze(0).transpose(0, 1), atol=1e-6, rtol=1e-6)


def test_dropout_rejects_bad_probability(triton_backend, device):
    q = torch.randn(3, 2, 16, device=device)
    cu = cu_of([3], device)
    with pytest.raises(ValueError, match="dropout_p must be a number in"):
        ops.varlen_attention(q, q, q, cu, cu, 3, 3, dropout_p=1.0)


# ---- GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_grads_gpu_real_sizes(d, causal):
    """bf16 at a real size: our grads' error vs an fp32 reference at most ~2x PyTorch's own bf16 error."""
    q, k, v, do = _leaves([(2, 4, 1000, d)] * 4, torch.bfloat16, "cuda", d)
    ops.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)
    ours = [t.grad.float() for t in (q, k, v)]
    ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    torch.nn.functional.scaled_dot_product_attention(*ref_leaves, is_causal=causal).backward(do.float())
    theirs_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    torch.nn.functional.scaled_dot_product_attention(*theirs_leaves, is_causal=causal).backward(do)
    for a, r, t in zip(ours, ref_leaves, theirs_leaves):
        ours_err = (a - r.grad).abs().max().item()
        torch_err = (t.grad.float() - r.grad).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-2, (ours_err, torch_err)


def test_fp32_head_dims_above_64_with_grad_take_pytorch(triton_backend, device, spy):
    """fp32 backward kernels cover head dims <= 64 (register pressure of the three-TF32 split above that); larger
    fp32 calls that record grad run PyTorch, and their grads are still right."""
    q, k, v, do = _leaves([(1, 2, 9, 80)] * 4, torch.float32, device, 19)
    ops.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do)
    assert spy["dense"] == 0
    refs = _ref_grads(lambda a, b, c: reference(a, b, c, causal=True), (q, k, v), do)
    _assert_grads((q.grad, k.grad, v.grad), refs, torch.float32)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "keypad", "additive", "empty_row"])
def test_pytorch_path_gradients_by_formula_equal_autograd(causal, mask_kind):
    """The registered ops' PyTorch-path backward (explicit formulas: autograd does not record inside a registered
    op's backward) equals float64 autograd of the PyTorch path, incl. rows that see no key (zero gradients)."""
    from engine.ops.attention import _sdpa_torch
    from engine.ops.attention_grad import attention_grads_torch

    g = torch.Generator().manual_seed(31)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64, requires_grad=True) for n in (7, 9, 9))
    mask = None
    if mask_kind == "keypad":
        mask = torch.rand(2, 1, 1, 9, generator=g) > 0.3
    elif mask_kind == "additive":
        mask = torch.randn(2, 1, 7, 9, generator=g, dtype=torch.float64)
    elif mask_kind == "empty_row":
        mask = torch.ones(2, 1, 7, 9, dtype=torch.bool)
        mask[:, :, 2] = False
    out = _sdpa_torch(q, k, v, mask, 0.0, causal, 0.37)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(out, (q, k, v), grad)
    got = attention_grads_torch(grad, q.detach(), k.detach(), v.detach(), mask, causal, 0.37)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# ---- memory: nothing read or written outside the tensors, 64-bit offsets ------------------------------------

def _guarded(t, rows, cols):
    """``t`` (..., N, D) as a view into a NaN buffer with ``rows`` more rows and ``cols`` more columns per matrix: a
    kernel that reads a padding element (a loosened row or column mask) gets NaN, and one that writes there leaves
    a number (``_pads_untouched``)."""
    buf = torch.full((*t.shape[:-2], t.shape[-2] + rows, t.shape[-1] + cols), float("nan"), dtype=t.dtype,
                     device=t.device)
    view = buf[..., :t.shape[-2], :t.shape[-1]]
    view.copy_(t)
    return view


def _pads_untouched(view):
    buf = view._base
    inside = torch.zeros(buf.shape, dtype=torch.bool, device=buf.device)
    inside[..., :view.shape[-2], :view.shape[-1]] = True
    return bool(buf[~inside].isnan().all())


def _nan_tail(t, extra=64):
    """A contiguous copy of ``t`` followed by ``extra`` NaN elements in its buffer (what lies past its end)."""
    buf = torch.full((t.numel() + extra,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[:t.numel()].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("mask_kind,causal", [("additive", True), ("keypad", False), (None, True)])
def test_backward_reads_and_writes_only_its_tensors(device, monkeypatch, mask_kind, causal):
    """Every input (q, k, v, dO, O, the mask) in NaN-padded rows and columns, lse and Delta followed by NaN, the
    gradients written into NaN-padded buffers: the gradients equal float64 and every pad stays NaN. A loosened
    load mask (a head-dim column past D, a query row past Nq, a mask row past Nq, statistics past the last row)
    reads a NaN that reaches a stored gradient; a loosened store mask writes a pad. Odd sizes, D=24 (padded to 32)."""
    b, h, n_q, n_k, d = 2, 2, 19, 35, 24
    g = torch.Generator().manual_seed(41)
    q, do = (torch.randn(b, h, n_q, d, generator=g).to(device) for _ in range(2))
    k, v = (torch.randn(b, h, n_k, d, generator=g).to(device) for _ in range(2))
    mask = None
    if mask_kind == "additive":
        mask = torch.randn(b, 1, n_q, n_k, generator=g).to(device)
        mask[0, 0, 3, :] = float("-inf")  # a row that sees no key
    elif mask_kind == "keypad":
        mask = torch.where(torch.rand(b, 1, 1, n_k, generator=g) > 0.3, 0.0, float("-inf")).to(device)
    scale = d ** -0.5
    out = torch.empty_like(q)
    lse = torch.empty(2, b, h, n_q, device=device)
    full = None if mask is None else mask.expand(b, h, n_q, n_k)
    kfwd.attention_fwd(q, k, v, out, mask=full, causal=causal, scale=scale, lse=lse)
    gq, gk, gv, gdo, go = (_guarded(t, 5, 9) for t in (q, k, v, do, out))
    gmask = None if mask is None else _guarded(mask, 5, 9).expand(b, h, n_q, n_k)
    lbuf = torch.full((2, b * h * n_q + 40), float("nan"), device=device)  # each plane followed by NaN
    lbuf[:, :b * h * n_q] = lse.flatten(1)
    glse = lbuf[:, :b * h * n_q].view(2, b, h, n_q)
    dq, dk, dv = (_guarded(torch.full_like(t, float("nan")), 5, 9) for t in (q, k, v))
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: _nan_tail(real_empty_like(t, **kw)))  # Delta
    kbwd.attention_bwd(gdo, gq, gk, gv, go, glse, dq, dk, dv, mask=gmask, causal=causal, scale=scale)
    monkeypatch.undo()
    ref_mask = None if mask is None else mask.cpu()
    refs = _ref_grads(lambda a, c, e: reference(a, c, e, ref_mask, causal), (q, k, v), do)
    _assert_grads((dq, dk, dv), refs, torch.float32)
    assert all(_pads_untouched(t) for t in (dq, dk, dv))


@pytest.mark.parametrize("layout", ["batch", "head", "rows", "rows_q", "rows_do", "rows_k", "rows_v", "mask", "keypad",
                                    "varlen"])
def test_backward_offsets_past_2_31_elements(device, layout):
    """Element offsets past 2**31 from strides that fit in int32 (views into one uninitialised fp16 buffer: only the
    touched pages are backed), each in one place: the third batch entry (batch stride 2**30 + 64), the third head,
    query / key rows from 16 on (row stride 2**27 + 64), a per-row boolean mask's rows and columns from 16 on, a
    key-padding mask's columns from 16 on, a packed second sequence starting at token 128. q, k, v, dO, O, dQ,
    dK, dV share the buffer (interleaved), so every load and store of both kernels and the preprocess needs its
    offset in 64 bits there; rows_q / _do / _k / _v: that tensor alone has the long rows (the launcher's choice of
    64-bit loop steps must look at each). O and lse come from the forward on the same strided views (and mask), so
    its offsets are exercised too. (issue 19)"""
    from ops_util import TWO_31, strided_views

    d, f16 = 16, torch.float16
    names = ("q", "k", "v", "do", "o", "dq", "dk", "dv")
    if layout == "varlen":
        lens, h = [128, 5], 1
        total, st = sum(lens), TWO_31 // 128 + 64
        t = strided_views(names, (total, h, d), (st, h * d * 8, 1), f16, device)
        cu = cu_of(lens, device)
        lse = torch.empty(2, h, total, device=device)
        kfwd.varlen_fwd(t["q"], t["k"], t["v"], t["o"], cu, cu, 128, causal=True, scale=d ** -0.5, lse=lse)
        kbwd.varlen_bwd(t["do"], t["q"], t["k"], t["v"], t["o"], lse, t["dq"], t["dk"], t["dv"], cu, cu, 128, 128,
                        causal=True, scale=d ** -0.5)
        refs = _ref_grads(lambda a, b_, c: varlen_reference(a, b_, c, lens, lens, True),
                          (t["q"], t["k"], t["v"]), t["do"])
        _assert_grads((t["dq"], t["dk"], t["dv"]), refs, f16)
        return
    b, h, n = {"batch": (3, 1, 20), "head": (1, 3, 20)}.get(layout, (1, 2, 17))
    big = TWO_31 // 2 + 64
    strides = {"batch": (big, n * 8 * d, 8 * d, 1), "head": (3 * big, big, 8 * d, 1)}.get(layout, (h * n * 8 * d,
                                                                                             n * 8 * d, 8 * d, 1))
    if layout.startswith("rows"):
        strides = (8 * d, 8 * d, TWO_31 // 16 + 64, 1)
    t = strided_views(names, (b, h, n, d), strides, f16, device,
                      alone=layout[5:] if layout.startswith("rows_") else None)
    mask = None
    if layout in ("mask", "keypad"):
        rows = n if layout == "mask" else 1
        sm, sn = (TWO_31 // 16 + 64, TWO_31 // 16 + 32) if layout == "mask" else (0, TWO_31 // 16 + 32)
        buf = torch.empty((rows - 1) * sm + (n - 1) * sn + 1, dtype=torch.uint8, device=device)
        mask = buf.as_strided((1, 1, rows, n), (0, 0, sm, sn)).view(torch.bool)
        g = torch.Generator().manual_seed(5)
        mask.copy_(torch.rand(1, 1, rows, n, generator=g) > 0.4)
        mask[..., -1] = True  # every row sees a key
    causal = layout != "keypad"
    full = None if mask is None else mask.expand(b, h, n, n)
    lse = torch.empty(2, b, h, n, device=device)
    kfwd.attention_fwd(t["q"], t["k"], t["v"], t["o"], mask=full, causal=causal, scale=d ** -0.5, lse=lse)
    kbwd.attention_bwd(t["do"], t["q"], t["k"], t["v"], t["o"], lse, t["dq"], t["dk"], t["dv"], mask=full,
                       causal=causal, scale=d ** -0.5)
    ref_mask = None if mask is None else mask.cpu().clone()
    refs = _ref_grads(lambda a, b_, c: reference(a, b_, c, ref_mask, causal), (t["q"], t["k"], t["v"]), t["do"])
    _assert_grads((t["dq"], t["dk"], t["dv"]), refs, f16)


@pytest.mark.skipif(torch.cuda.is_available() or sys.platform == "win32", reason="a CPU page guard (POSIX mmap)")
@pytest.mark.parametrize("kind", ["none", "additive", "keypad", "varlen"])
def test_backward_loads_stay_inside_every_buffer(monkeypatch, kind):
    """q, k, v, dO, O, lse, the mask, Delta and the gradients each end flush against an unreadable page: a load or a
    store past the end of any of them crashes, though a load could not change a stored value (keys past Nk feed
    only unstored rows of dK / dV, queries past Nq only unstored rows of dQ). 19 queries, 35 keys, D=24: ragged last
    tiles in both kernels and a padded head dim."""
    from ops_util import at_page_end

    h, n_q, n_k, d = 2, 19, 35, 24
    g = torch.Generator().manual_seed(43)
    causal = kind != "keypad"
    if kind == "varlen":
        lens_q, lens_k = [7, n_q], [n_k, 5]
        q, do = (torch.randn(sum(lens_q), h, d, generator=g) for _ in range(2))
        k, v = (torch.randn(sum(lens_k), h, d, generator=g) for _ in range(2))
        cu_q, cu_k = cu_of(lens_q, "cpu"), cu_of(lens_k, "cpu")
        out, lse = torch.empty_like(q), torch.empty(2, h, sum(lens_q))
        kfwd.varlen_fwd(q, k, v, out, cu_q, cu_k, n_q, causal=True, scale=d ** -0.5, lse=lse)
        ref_fn = lambda a, b_, c: varlen_reference(a, b_, c, lens_q, lens_k, True)  # noqa: E731
    else:
        q, do = (torch.randn(1, h, n_q, d, generator=g) for _ in range(2))
        k, v = (torch.randn(1, h, n_k, d, generator=g) for _ in range(2))
        mask = None
        if kind == "additive":
            mask = torch.randn(1, 1, n_q, n_k, generator=g)
        elif kind == "keypad":
            mask = torch.where(torch.rand(1, 1, 1, n_k, generator=g) > 0.3, 0.0, float("-inf"))
        out, lse = torch.empty_like(q), torch.empty(2, 1, h, n_q)
        full = None if mask is None else mask.expand(1, h, n_q, n_k)
        kfwd.attention_fwd(q, k, v, out, mask=full, causal=causal, scale=d ** -0.5, lse=lse)
        ref_fn = lambda a, b_, c: reference(a, b_, c, mask, causal)  # noqa: E731
    gq, gk, gv, gdo, go, glse = (at_page_end(t) for t in (q, k, v, do, out, lse))
    dq, dk, dv = (at_page_end(torch.full_like(t, float("nan"))) for t in (q, k, v))
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: at_page_end(real_empty_like(t, **kw)))  # Delta
    if kind == "varlen":
        kbwd.varlen_bwd(gdo, gq, gk, gv, go, glse, dq, dk, dv, cu_q, cu_k, n_q, n_k, causal=True, scale=d ** -0.5)
    else:
        gmask = None if mask is None else at_page_end(mask).expand(1, h, n_q, n_k)
        kbwd.attention_bwd(gdo, gq, gk, gv, go, glse, dq, dk, dv, mask=gmask, causal=causal, scale=d ** -0.5)
    monkeypatch.undo()
    _assert_grads((dq, dk, dv), _ref_grads(ref_fn, (q, k, v), do), torch.float32)
