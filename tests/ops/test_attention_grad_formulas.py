"""The attention backward formulas (engine.ops.attention_grad) against float64 autograd.

The registered differentiable attention ops ``torch.ops.engine.scaled_dot_product_attention_lse`` /
``varlen_attention_lse`` (what a compiled training graph calls) on the PyTorch path (ENGINE_BACKEND=torch: PyTorch
forward, ``attention_grads_torch`` backward) are held to float64 autograd of softmax attention written here
independently of engine (top-left / bottom-right causal masks); then the same ops' kernel backward on the Triton
kernels (the interpreter on a CPU, tiny sizes), the attention dropout seeds (drawn from torch's default generator
only when dropout is on), and the registered ops' refusals. Odd sizes throughout; the file runs in a few seconds.
"""
import pytest
import torch
from grad_util import F32, F64, TOL, randn, ref_leaves, spy

from engine import ops
from engine.ops.attention_grad import dropout_seed


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
    q, k, v = randn(b, h, n_q, d, gen=gen), randn(b, h, n_k, d, gen=gen), randn(b, h, n_k, d, gen=gen)
    keep, mask = None, None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, n_q, n_k, generator=gen) > 0.35
        mask[1, 0, 4] = False  # no key at all
        keep = mask
    elif mask_kind == "additive":
        mask = randn(b, h, n_q, n_k, gen=gen, scale=1.5)
    if causal:
        tri = _causal(n_q, n_k, bottom_right=False)
        keep = tri if keep is None else keep & tri
    sc = d ** -0.5 if scale is None else scale
    do = randn(b, h, n_q, d, gen=gen)
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
    q, do = randn(sum(lens_q), h, d, gen=gen), randn(sum(lens_q), h, d, gen=gen)
    k, v = randn(sum(lens_k), h, d, gen=gen), randn(sum(lens_k), h, d, gen=gen)
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
    q = randn(7, 3, 5, gen=gen)
    bad = torch.tensor([0, 3, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens"):
        torch.ops.engine.varlen_attention_lse(q, q, q, bad, bad, 3, 3, False, None, True)
    good = torch.tensor([0, 3, 7], dtype=torch.int32)
    out, _ = torch.ops.engine.varlen_attention_lse(q, q, q, good, good, 4, 4, False, None, True)
    torch.testing.assert_close(out, _varlen64(q, q, q, [3, 4], [3, 4], False, 5 ** -0.5), **TOL[F64])


@pytest.mark.parametrize("causal", [False, True])
def test_registered_attention_ops_on_the_kernels(triton_backend, device, monkeypatch, causal):
    """The registered differentiable ops on the Triton kernels (forward with lse, backward kernels): fp32 grads
    within 1e-5 of float64 autograd, dense (Nq = 9, Nk = 11) and packed (sequences 4 + 7 / 6 + 2)."""
    import engine.kernels.attention as kattn

    calls = spy(monkeypatch, (kattn, "attention_bwd"), (kattn, "varlen_bwd"))
    gen = torch.Generator().manual_seed(31)
    b, h, d = 1, 2, 16
    q, do = randn(b, h, 9, d, gen=gen, dtype=F32), randn(b, h, 9, d, gen=gen, dtype=F32)
    k, v = randn(b, h, 11, d, gen=gen, dtype=F32), randn(b, h, 11, d, gen=gen, dtype=F32)
    refs = ref_leaves(q, k, v)
    want = _attention64(*refs, _causal(9, 11, False) if causal else None, 0.3)
    want.backward(do.double())
    leaves = [t.to(device).requires_grad_() for t in (q, k, v)]
    out, _ = torch.ops.engine.scaled_dot_product_attention_lse(*leaves, None, causal, 0.3)
    out.backward(do.to(device))
    for a, r in zip([out, *(t.grad for t in leaves)], [want.detach(), *(t.grad for t in refs)]):
        torch.testing.assert_close(a.double().cpu(), r, atol=1e-5 * float(r.abs().max()), rtol=1e-5)

    lens_q, lens_k = [4, 7], [6, 2]
    pq, pdo = randn(11, h, d, gen=gen, dtype=F32), randn(11, h, d, gen=gen, dtype=F32)
    pk, pv = randn(8, h, d, gen=gen, dtype=F32), randn(8, h, d, gen=gen, dtype=F32)
    refs = ref_leaves(pq, pk, pv)
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
    q, k, v, do = (randn(1, 2, n, 80, gen=gen, dtype=F32).to(device) for n in (5, 6, 6, 5))
    out, lse = torch.ops.engine.scaled_dot_product_attention_lse(q, k, v, None, True, None)
    got = torch.ops.engine.scaled_dot_product_attention_backward(do, q, k, v, out, lse, None, True, None)
    refs = ref_leaves(q, k, v)
    _attention64(*refs, _causal(5, 6, False), 80 ** -0.5).backward(do.double().cpu())
    for a, r in zip(got, refs):
        torch.testing.assert_close(a.double().cpu(), r.grad, atol=1e-5 * float(r.grad.abs().max()), rtol=1e-5)
    pq, pdo = (randn(7, 2, 80, gen=gen, dtype=F32).to(device) for _ in range(2))
    pk, pv = (randn(6, 2, 80, gen=gen, dtype=F32).to(device) for _ in range(2))
    cq, ck = _cu([3, 4]).to(device), _cu([2, 4]).to(device)
    out, lse = torch.ops.engine.varlen_attention_lse(pq, pk, pv, cq, ck, 4, 4, True, 0.2, True)
    got = torch.ops.engine.varlen_attention_backward(pdo, pq, pk, pv, out, lse, cq, ck, 4, 4, True, 0.2)
    refs = ref_leaves(pq, pk, pv)
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
    q, do = randn(sum(lens_q), h, d, gen=gen, dtype=F32), randn(sum(lens_q), h, d, gen=gen, dtype=F32)
    k, v = randn(sum(lens_k), h, d, gen=gen, dtype=F32), randn(sum(lens_k), h, d, gen=gen, dtype=F32)
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
    q = randn(1, 2, 5, 16, gen=gen, dtype=F32).to(device)
    pq = randn(5, 2, 16, gen=gen, dtype=F32).to(device)
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
