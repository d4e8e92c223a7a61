"""The attention ops' ``relative_position_bias`` argument (a (H, 2L - 1) table by distance) against float64 references
that add the bias explicitly to every score.

Every call runs with ENGINE_BACKEND=triton too: calls with a bias in a kernel dtype must then reach the kernels that
gather the table (spied: called, with the table), float64 ones the PyTorch path. The kernels' own coverage (odd sizes,
every mask kind, poisoned outputs) is in test_position_bias_kernels.py.
"""
import math

import pytest
import torch

from engine import ops

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {torch.float64: 1e-10, F32: 2e-5, F16: 3e-3, BF16: 2.5e-2}


def _rand(*shape, dtype=F32, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _table(H, L, gen, dtype=F32):
    return _rand(H, 2 * L - 1, dtype=dtype, gen=gen, scale=2.0)


def _reference(q, k, v, table, q_pos, keep, scale):
    """float64 attention with score(i, j) += table[h, L - 1 + j - q_pos[i]]; keep (…, Nq, Nk) bool; dead rows 0.
    q (B, H, Nq, D), k/v (B, H, Nk, D); q_pos (B or 1, Nq)."""
    L = (table.shape[1] + 1) // 2
    n_k = k.shape[2]
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    idx = torch.arange(n_k)[None, None, :] - q_pos[:, :, None] + L - 1  # (B, Nq, Nk)
    bias = table.double()[:, idx.clamp(0, 2 * L - 2)].permute(1, 0, 2, 3)  # (B, H, Nq, Nk)
    s = (s + bias).masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v.double())


class Backend:
    """The backend setting of a test, and (under "triton") the kernel calls made with a table."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []

    def expect(self, dtype: torch.dtype, n: int) -> None:
        """Under "triton", exactly ``n`` kernel calls (each with the table) for a kernel dtype, none for float64."""
        if self.name == "triton":
            assert len(self.calls) == (0 if dtype == torch.float64 else n), self.calls
        self.calls.clear()


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Both backend settings; under "triton" the kernels are spied on (each call must pass the table)."""
    monkeypatch.setenv("ENGINE_BACKEND", request.param)
    b = Backend(request.param)
    if request.param == "triton":
        pytest.importorskip("triton")
        import engine.kernels.attention as attn_k
        import engine.kernels.attention.decode as dec_k

        def spy(mod, name):
            real = getattr(mod, name)

            def call(*a, **k):
                assert k.get("relative_position_bias") is not None, f"{name} called without the table"
                b.calls.append(name)
                return real(*a, **k)
            monkeypatch.setattr(mod, name, call)

        for mod, name in ((attn_k, "attention_fwd"), (attn_k, "varlen_fwd"), (dec_k, "decode_attention_fwd")):
            spy(mod, name)
    return b


@pytest.mark.parametrize("dtype", [F32, F16, BF16, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", ["none", "bool-padding", "float"])
def test_sdpa_with_bias(backend, dtype, causal, mask):
    gen = torch.Generator().manual_seed(3)
    B, H, N, D = 2, 3, 13, 8
    q, k, v = (_rand(B, H, N, D, dtype=dtype, gen=gen) for _ in range(3))
    L = N + 4  # a longer table than needed: only the block of this call is read
    table = _table(H, L, gen, dtype=F32 if dtype != torch.float64 else torch.float64)
    keep = torch.ones(B, 1, N, N, dtype=torch.bool)
    attn_mask = None
    if mask == "bool-padding":
        attn_mask = torch.ones(B, 1, 1, N, dtype=torch.bool)
        attn_mask[1, ..., 9:] = False
        attn_mask[0, ..., :2] = False  # with causal: the first two query rows of sequence 0 see no key (zeros)
        keep = keep & attn_mask
    elif mask == "float":
        fm = _rand(B, H, N, N, gen=gen)
        fm[0, :, :, 2] = float("-inf")
        attn_mask = fm.to(dtype)
    if causal:
        keep = keep & torch.ones(N, N, dtype=torch.bool).tril()
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=1.0,
                                           relative_position_bias=table)
    ref_table = table.double()
    if mask == "float":  # a float mask adds to the scores: fold it into the reference as part of the bias
        ref = _reference(q, k, v, ref_table, torch.arange(N)[None], keep & (attn_mask != float("-inf")), 1.0)
        s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double())
        Lr = (ref_table.shape[1] + 1) // 2
        idx = torch.arange(N)[None, :] - torch.arange(N)[:, None] + Lr - 1
        s = s + ref_table[:, idx] + attn_mask.double()
        s = s.masked_fill(~keep, float("-inf"))
        ref = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(s, -1), v.double())
    else:
        ref = _reference(q, k, v, ref_table, torch.arange(N)[None], keep, 1.0)
    assert out.dtype == dtype and out.shape == (B, H, N, D)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    backend.expect(dtype, 1)


def test_sdpa_bias_rectangular_and_scaled(backend):
    """Nq != Nk (top-left positions), a softmax scale (the bias is added after it), a row with no visible key."""
    gen = torch.Generator().manual_seed(5)
    B, H, Nq, Nk, D = 1, 2, 5, 11, 16
    q, k, v = _rand(B, H, Nq, D, gen=gen), _rand(B, H, Nk, D, gen=gen), _rand(B, H, Nk, D, gen=gen)
    table = _table(H, Nk, gen)
    keep = torch.ones(B, 1, Nq, Nk, dtype=torch.bool)
    keep[..., 3, :] = False
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.3, relative_position_bias=table)
    ref = _reference(q, k, v, table, torch.arange(Nq)[None], keep, 0.3)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    assert (out[..., 3, :] == 0).all()
    backend.expect(F32, 1)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_with_bias(backend, causal):
    """Packed sequences: the bias of each sequence is aligned bottom-right, like its causal mask."""
    gen = torch.Generator().manual_seed(7)
    H, D = 2, 8
    lq, lk = [3, 7, 1], [5, 7, 4]
    q = _rand(sum(lq), H, D, gen=gen)
    k, v = _rand(sum(lk), H, D, gen=gen), _rand(sum(lk), H, D, gen=gen)
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32)
    table = _table(H, 9, gen)
    out = ops.varlen_attention(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, scale=1.0,
                               relative_position_bias=table)
    for b in range(3):
        qs, ks = int(cu_q[b]), int(cu_k[b])
        qb = q[qs:qs + lq[b]].transpose(0, 1)[None]
        kb, vb = (t[ks:ks + lk[b]].transpose(0, 1)[None] for t in (k, v))
        q_pos = torch.arange(lq[b])[None] + lk[b] - lq[b]
        keep = torch.ones(1, 1, lq[b], lk[b], dtype=torch.bool)
        if causal:
            keep = keep & (torch.arange(lk[b])[None, :] <= q_pos[0][:, None])
        ref = _reference(qb, kb, vb, table, q_pos, keep, 1.0)[0].transpose(0, 1)
        torch.testing.assert_close(out[qs:qs + lq[b]].double(), ref, atol=2e-5, rtol=2e-5)
    backend.expect(F32, 1)


@pytest.mark.parametrize("Tq", [1, 3])
@pytest.mark.parametrize("dtype", [F32, BF16, torch.float64])
def test_decode_with_bias(backend, Tq, dtype):
    """New tokens against a cache: query i of row b sits at cache_seqlens[b] - Tq + i; equal and unequal lengths;
    the table contiguous, and as a transposed view into a NaN-filled store (strides and storage offset must be
    honoured: the equal-lengths path views the table's slice in place)."""
    gen = torch.Generator().manual_seed(11)
    B, H, Tmax, D = 3, 2, 12, 16
    q = _rand(B, H, Tq, D, dtype=dtype, gen=gen)
    kc, vc = _rand(B, H, Tmax, D, dtype=dtype, gen=gen), _rand(B, H, Tmax, D, dtype=dtype, gen=gen)
    table = _table(H, Tmax, gen)
    store = torch.full((2 * Tmax - 1 + 3, H + 2), float("nan"))
    store[3:, 1:1 + H] = table.t()
    for lens, table in (([7, 12, 4], table), ([6, 6, 6], table), ([6, 6, 6], store[3:, 1:1 + H].t())):
        seqlens = torch.tensor(lens, dtype=torch.int32)
        out = ops.decode_attention(q, kc, vc, seqlens, scale=1.0, relative_position_bias=table)
        q_pos = seqlens[:, None].long() - Tq + torch.arange(Tq)[None]
        keep = (torch.arange(Tmax)[None, None, :] <= q_pos[:, :, None])[:, None]
        ref = _reference(q, kc, vc, table, q_pos, keep, 1.0)
        torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
        backend.expect(dtype, 1)


def test_decode_bias_beyond_half_range(backend):
    """fp16 queries with a table entry past fp16's range (1e6 at distance 0: each query's own key), unequal lengths:
    the PyTorch path narrows the bias block without overflowing to inf (else softmax gives NaN), the kernel adds it
    in fp32; both return that key's value on every row, as float64 does."""
    gen = torch.Generator().manual_seed(5)
    B, H, Tq, Tmax, D = 2, 2, 2, 9, 16
    q = _rand(B, H, Tq, D, dtype=F16, gen=gen)
    kc, vc = _rand(B, H, Tmax, D, dtype=F16, gen=gen), _rand(B, H, Tmax, D, dtype=F16, gen=gen)
    table = _table(H, Tmax, gen)
    table[:, Tmax - 1] = 1e6
    seqlens = torch.tensor([5, 9], dtype=torch.int32)
    out = ops.decode_attention(q, kc, vc, seqlens, scale=1.0, relative_position_bias=table)
    q_pos = seqlens[:, None].long() - Tq + torch.arange(Tq)[None]
    keep = (torch.arange(Tmax)[None, None, :] <= q_pos[:, :, None])[:, None]
    ref = _reference(q, kc, vc, table, q_pos, keep, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=TOL[F16], rtol=TOL[F16])
    backend.expect(F16, 1)


def test_without_bias_the_kernels_still_run(monkeypatch, device):
    """The routing is per call: without a bias, ENGINE_BACKEND=triton still reaches the kernel."""
    pytest.importorskip("triton")
    import engine.kernels.attention as attn_k

    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    called = []
    real = attn_k.attention_fwd
    monkeypatch.setattr(attn_k, "attention_fwd", lambda *a, **k: called.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(13)
    q = _rand(1, 1, 4, 16, gen=gen).to(device)
    out = ops.scaled_dot_product_attention(q, q, q)
    assert called and out.shape == q.shape


def test_a_table_that_requires_grad_runs_pytorch(backend):
    """The kernels have no backward: a learned table being trained takes the PyTorch path (any backend), and its
    gradient is the float64 reference's."""
    gen = torch.Generator().manual_seed(31)
    H, N, D = 2, 6, 8
    q, k, v = (_rand(1, H, N, D, gen=gen) for _ in range(3))
    table = _table(H, N, gen).requires_grad_()
    out = ops.scaled_dot_product_attention(q, k, v, scale=1.0, relative_position_bias=table)
    backend.expect(F32, 0)  # no kernel call on either backend
    out.sum().backward()
    t64 = table.detach().double().requires_grad_()
    _reference(q, k, v, t64, torch.arange(N)[None], torch.ones(1, 1, N, N, dtype=torch.bool), 1.0).sum().backward()
    torch.testing.assert_close(table.grad.double(), t64.grad, atol=1e-4, rtol=1e-4)


def _bad_calls():
    q = torch.randn(1, 2, 5, 8)
    seq = torch.tensor([5], dtype=torch.int32)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    qv = torch.randn(5, 2, 8)
    return [
        ("even width", lambda: ops.scaled_dot_product_attention(q, q, q, relative_position_bias=torch.randn(2, 10)),
         ValueError, r"\(H, 2 \* L - 1\)"),
        ("heads", lambda: ops.scaled_dot_product_attention(q, q, q, relative_position_bias=torch.randn(3, 9)),
         ValueError, "relative_position_bias"),
        ("1-d", lambda: ops.scaled_dot_product_attention(q, q, q, relative_position_bias=torch.randn(9)),
         ValueError, "relative_position_bias"),
        ("too short", lambda: ops.scaled_dot_product_attention(q, q, q, relative_position_bias=torch.randn(2, 7)),
         ValueError, "L >= 5"),
        ("int", lambda: ops.scaled_dot_product_attention(q, q, q, relative_position_bias=torch.ones(2, 9).long()),
         TypeError, "relative_position_bias"),
        ("device", lambda: ops.scaled_dot_product_attention(
            q, q, q, relative_position_bias=torch.randn(2, 9, device="meta")), ValueError, "device"),
        ("varlen short", lambda: ops.varlen_attention(qv, qv, qv, cu, cu, 5, 5,
                                                      relative_position_bias=torch.randn(2, 7)), ValueError, "L >= 5"),
        ("decode short", lambda: ops.decode_attention(q, torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8), seq,
                                                      relative_position_bias=torch.randn(2, 15)),
         ValueError, "L >= 9"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_bias_is_a_clear_error(case):
    _, call, exc, word = case
    with pytest.raises(exc, match=word):
        call()


def test_the_bias_changes_the_result():
    """A sanity check that the argument is not ignored: a non-constant table changes the output."""
    gen = torch.Generator().manual_seed(17)
    q = _rand(1, 2, 6, 8, gen=gen)
    plain = ops.scaled_dot_product_attention(q, q, q, scale=1.0)
    biased = ops.scaled_dot_product_attention(q, q, q, scale=1.0, relative_position_bias=_table(2, 6, gen))
    assert (plain - biased).abs().max() > 1e-2
    flat = ops.scaled_dot_product_attention(q, q, q, scale=1.0, relative_position_bias=torch.full((2, 11), 3.0))
    torch.testing.assert_close(flat, plain, atol=1e-6, rtol=1e-6)  # a constant bias cancels in the softmax
    assert math.isfinite(float(biased.sum()))


def test_the_pre_check_implies_the_full_check():
    """relative_position_bias_ok (the ops' O(1) test) accepts only tables check_relative_position_bias accepts, and
    every float table of a usual dtype on the query's device that the full check accepts."""
    from engine.ops.position_bias import check_relative_position_bias, relative_position_bias_ok

    lead = torch.randn(1)
    tables = [torch.randn(h, w, dtype=dt) for h in (1, 2, 3) for w in (1, 6, 7, 9, 10, 11)
              for dt in (F32, F16, BF16, torch.float64)]
    tables += [torch.randn(2, 9).long(), torch.randn(9), torch.randn(2, 9, 1), torch.randn(2, 9, device="meta"),
               torch.randn(2, 18)[:, ::2]]  # a strided view
    accepted = 0
    for t in tables:
        for heads, min_length in ((2, 5), (3, 4), (1, 1), (2, 0)):
            try:
                check_relative_position_bias(t, heads=heads, min_length=min_length, device=lead.device)
                full = True
            except (TypeError, ValueError):
                full = False
            fast = relative_position_bias_ok(t, lead, heads, min_length)
            assert fast == full, (tuple(t.shape), t.dtype, t.device, heads, min_length)
            accepted += fast
    assert accepted > 20


@pytest.mark.parametrize("cached", [True, False], ids=["cached-index", "windows"])
def test_bias_block_equals_the_gather(cached, monkeypatch):
    """bias_block (windows of the table, for consecutive query positions; small CPU blocks through a cached index)
    gives bias_scores' block bit for bit, also where distances fall outside the table (clamped) and for empty
    blocks; the cached index is not changed by the calls."""
    from engine.ops import position_bias
    from engine.ops.position_bias import bias_block, bias_scores

    monkeypatch.setattr(position_bias, "CACHED_INDEX_MAX", 1 << 14 if cached else 0)
    position_bias._block_index.cache_clear()
    gen = torch.Generator().manual_seed(19)
    for L in (1, 2, 5, 9):
        table = _table(3, L, gen, dtype=torch.float64)
        if L == 5:  # strided: the (2L - 1, H) transpose of a table (torch.take reads it in logical order)
            table = table.t().contiguous().t()
        for n_q in range(0, 11, 2):
            for n_k in range(0, 11, 3):
                for off in range(-9, 10, 3):
                    got = bias_block(table, off, n_q, n_k, dtype=torch.float64)
                    want = bias_scores(table, torch.arange(n_q) + off, n_k, dtype=torch.float64)[None]
                    assert got.shape == want.shape and torch.equal(got, want), (L, n_q, n_k, off)
                    if n_q * n_k:
                        got.fill_(7.0)  # a caller's in-place change reaches no cache
                        assert torch.equal(bias_block(table, off, n_q, n_k, dtype=torch.float64), want)
    assert (position_bias._block_index.cache_info().currsize > 0) == cached
    t32 = _table(2, 6, gen)
    assert torch.equal(bias_block(t32, 0, 6, 6), bias_scores(t32, torch.arange(6), 6)[None])  # fp32 -> fp32
    assert bias_block(t32.half(), 0, 6, 6).dtype == torch.float32
    assert torch.equal(bias_block(t32.half(), 2, 3, 5), bias_scores(t32.half(), torch.arange(3) + 2, 5)[None])
    for heads in (1, 5):  # the cached index depends on the head count: one table's index must not serve another's
        t = _table(heads, 6, gen)
        assert torch.equal(bias_block(t, 1, 4, 6), bias_scores(t, torch.arange(4) + 1, 6)[None]), heads


def test_bias_block_from_many_threads():
    """Threads sharing the cached index, over more (L, offset, Nq, Nk) keys than the cache holds (entries are evicted
    and rebuilt while other threads read theirs): every call gives bias_scores' block bit for bit."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from engine.ops import position_bias
    from engine.ops.position_bias import bias_block, bias_scores

    gen = torch.Generator().manual_seed(23)
    tables = {L: _table(2, L, gen, dtype=torch.float64) for L in (3, 8)}
    keys = [(L, off, n_q, n_k) for L in tables for off in (-2, 0, 3) for n_q in (1, 4, 7) for n_k in (2, 5, 8)]
    assert len(keys) > position_bias._block_index.cache_info().maxsize
    want = {key: bias_scores(tables[key[0]], torch.arange(key[2]) + key[1], key[3], dtype=torch.float64)
            for key in keys}
    position_bias._block_index.cache_clear()

    def work(seed: int) -> list[tuple[int, int, int, int]]:
        rng, wrong = random.Random(seed), []
        for _ in range(200):
            L, off, n_q, n_k = key = rng.choice(keys)
            if not torch.equal(bias_block(tables[L], off, n_q, n_k, dtype=torch.float64)[0], want[key]):
                wrong.append(key)
        return wrong

    with ThreadPoolExecutor(8) as pool:
        wrong = [key for found in pool.map(work, range(8)) for key in found]
    assert not wrong, wrong[:5]
    assert position_bias._block_index.cache_info().misses > len(keys)  # the cache was used, and evicted
