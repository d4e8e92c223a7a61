"""ops.scaled_dot_product_attention takes every argument of the installed torch's F.scaled_dot_product_attention
(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) with the same meaning: random odd shapes of
every rank, broadcast batch/head dims, grouped K/V heads, masks of each accepted dtype, scales of any sign; a call
torch refuses is refused too (ValueError / TypeError naming the argument), a call torch runs gives torch's result.
The few inputs where engine deliberately differs are listed in README ("Where engine's ops differ from PyTorch")
and tested at the end."""
from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ops


def test_signature_is_torchs():
    """torch's parameters in torch's order (positional or keyword), then engine's own extension, keyword-only, so a
    positional call means what it means to torch."""
    params = inspect.signature(ops.scaled_dot_product_attention).parameters
    theirs = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    ours = {n: p for n, p in params.items() if p.kind is not p.KEYWORD_ONLY}
    assert list(ours) == theirs
    assert [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] == ["relative_position_bias"]
    assert params["relative_position_bias"].default is None
    doc = F.scaled_dot_product_attention.__doc__.splitlines()[0] + F.scaled_dot_product_attention.__doc__.splitlines()[1]
    for name in theirs:  # the installed torch documents the same names (its builtin has no inspectable signature)
        assert name in doc
    assert {n: p.default for n, p in ours.items() if p.default is not p.empty} == {
        "attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


@st.composite
def calls(draw):
    """Random arguments, mostly valid, sometimes not (a shape that does not broadcast, heads GQA cannot group,
    a mask of the wrong dtype or rank)."""
    rank = draw(st.integers(2, 5))
    gqa = draw(st.booleans()) and rank >= 3
    n_q, n_k, d = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.sampled_from([3, 8, 13]))
    dv = d if draw(st.booleans()) else draw(st.sampled_from([5, 8]))
    lead = [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    if gqa:
        lead[-1] = draw(st.sampled_from([2, 4, 6]))

    def shrink(dims: list[int], heads: bool) -> list[int]:
        out = [x if draw(st.integers(0, 3)) else 1 for x in dims]  # broadcast: some dims are 1
        if heads and gqa and draw(st.booleans()):
            out[-1] = draw(st.sampled_from([x for x in (1, 2, 3, 4, 6) if lead[-1] % x == 0] + [5]))  # 5: invalid
        if draw(st.integers(0, 9)) == 0 and out:
            out = out[1:]  # a lower-rank key/value (torch broadcasts it)
        return out

    k_lead, v_lead = shrink(lead, True), shrink(lead, True)
    mask = draw(st.sampled_from([None, "bool", "float32", "query", "float64", "int", "rank1", "rank0"]))
    mask_dims = [x if draw(st.booleans()) else 1 for x in lead + [n_q, n_k]]
    mask_dims = mask_dims[draw(st.integers(0, len(mask_dims) - 2)):]
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return dict(q=(*lead, n_q, d), k=(*k_lead, n_k, d), v=(*v_lead, n_k, dv), mask=mask, mask_dims=mask_dims,
                dtype=dtype, is_causal=draw(st.booleans()), enable_gqa=gqa or draw(st.integers(0, 5)) == 0,
                scale=draw(st.sampled_from([None, 0.37, -1.2, 0.0, 1, True])),
                seed=draw(st.integers(0, 2**31 - 1)))


def make(c: dict):
    g = torch.Generator().manual_seed(c["seed"])
    q, k, v = (torch.randn(*c[n], generator=g, dtype=c["dtype"]) for n in "qkv")
    m = None
    dims = c["mask_dims"]
    if c["mask"] == "bool":
        m = torch.rand(*dims, generator=g) > 0.25
    elif c["mask"] in ("rank1", "rank0"):
        m = torch.rand(dims[-1], generator=g) > 0.25
        m = m if c["mask"] == "rank1" else m[0]
    elif c["mask"] is not None:
        dt = {"float32": torch.float32, "query": c["dtype"], "float64": torch.float64, "int": torch.int64}[c["mask"]]
        m = (torch.randn(*dims, generator=g) * 2).to(dt)
    kw = dict(attn_mask=m, is_causal=c["is_causal"], enable_gqa=c["enable_gqa"])
    if c["scale"] is not None:
        kw["scale"] = c["scale"]
    return q, k, v, kw


def torch_result(q, k, v, kw):
    """(torch's output, None) or (None, the exception torch raised).

    attn_mask with is_causal=True: torch 2.13 ANDs them on its fused CPU/CUDA paths but raises "Explicit attn_mask
    should not be set when is_causal=True" on its math path (other ranks, some dtypes); engine ANDs them always
    (README's list of deliberate differences), so there the reference is torch run on the AND-ed mask."""
    scale, m = kw.get("scale"), kw.get("attn_mask")
    if m is not None and m.dtype == torch.float32 and q.dtype == torch.float64:
        # torch 2.13's fused 4-D CPU path misreads a float32 mask beside a float64 query (README's list)
        kw = {**kw, "attn_mask": m.double()}
    if kw.get("is_causal") and scale is not None and not scale > 0 and (m is None or (
            m.dim() >= 2 and (m.dtype == torch.bool or m.dtype in (torch.float32, q.dtype)))):
        # torch 2.13's 4-D fused CPU path returns NaN here (its math path does not): the causal triangle as a mask
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        if m is not None:
            m = m.expand(*m.shape[:-2], *keep.shape)
            keep = m & keep if m.dtype == torch.bool else m.masked_fill(~keep, float("-inf"))
        return torch_result(q, k, v, {**kw, "attn_mask": keep, "is_causal": False})
    try:
        return F.scaled_dot_product_attention(q, k, v, **kw), None
    except (RuntimeError, IndexError, TypeError, ValueError) as exc:
        m = kw.get("attn_mask")
        if isinstance(exc, IndexError) and m is not None and m.dim() < 2 and q.dim() == 4:
            # torch's 4-D path fails to index a 0-d / 1-d mask that its other ranks broadcast (README's list)
            return torch_result(q, k, v, {**kw, "attn_mask": m.reshape((1,) * (2 - m.dim()) + tuple(m.shape))})
        if "should not be set when is_causal" not in str(exc):
            return None, exc
        n_q, n_k = q.shape[-2], k.shape[-2]
        keep = torch.ones(n_q, n_k, dtype=torch.bool).tril()
        m = m.expand(*m.shape[:-2], n_q, n_k)
        m = m & keep if m.dtype == torch.bool else m.masked_fill(~keep, float("-inf"))
        return torch_result(q, k, v, {**kw, "attn_mask": m, "is_causal": False})


# derandomize: CI runs the same examples every time; SDPA_EXAMPLES=5000 SDPA_RANDOM=1 explores (4500 random
# examples passed when this was written)
@settings(max_examples=int(os.environ.get("SDPA_EXAMPLES", 150)), deadline=None, database=None,
          derandomize=not os.environ.get("SDPA_RANDOM"), suppress_health_check=[HealthCheck.too_slow])
@given(c=calls())
def test_same_results_and_same_refusals_as_torch(c):
    """PyTorch backend (CPU): every drawn call either matches torch or is refused by both."""
    q, k, v, kw = make(c)
    want, refused = torch_result(q, k, v, kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "torch")
        if refused is not None:
            with pytest.raises((ValueError, TypeError)) as info:
                ops.scaled_dot_product_attention(q, k, v, **kw)
            assert "\n" not in str(info.value)
            return
        got = ops.scaled_dot_product_attention(q, k, v, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if c["dtype"] == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, equal_nan=True)


@settings(max_examples=int(os.environ.get("SDPA_EXAMPLES", 60)), deadline=None, database=None,
          derandomize=not os.environ.get("SDPA_RANDOM"), suppress_health_check=[HealthCheck.too_slow])
@given(c=calls(), extra=st.integers(0, 3))
def test_relative_position_bias_with_any_rank_gqa_and_broadcasting(c, extra):
    """engine's relative_position_bias beside torch's whole signature: the same as torch's SDPA given the bias block
    (table[h, L - 1 + j - i], one per query head, shared by the batch dims) as a float mask added to attn_mask."""
    q, k, v, kw = make(c)
    plain, refused = torch_result(q, k, v, kw)
    if refused is not None:
        return
    n_q, n_k = q.shape[-2], k.shape[-2]
    heads = plain.shape[-3] if plain.dim() >= 3 else 1
    length = max(n_q, n_k) + extra
    table = torch.randn(heads, 2 * length - 1, generator=torch.Generator().manual_seed(c["seed"] % 1000),
                        dtype=c["dtype"])
    block = table[:, (torch.arange(n_k)[None] - torch.arange(n_q)[:, None]) + length - 1]  # (H, Nq, Nk)
    block = block if plain.dim() >= 3 else block[0]
    m = kw["attn_mask"]
    add = block if m is None else block.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else block + m
    want, refused = torch_result(q, k, v, {**kw, "attn_mask": add.to(q.dtype)})
    assert refused is None, refused
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "torch")
        got = ops.scaled_dot_product_attention(q, k, v, **kw, relative_position_bias=table)
    tol = 1e-5 if c["dtype"] == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, equal_nan=True)
    with pytest.raises(ValueError, match="relative_position_bias"):  # one head too many: named
        ops.scaled_dot_product_attention(q, k, v, **kw, relative_position_bias=torch.cat([table, table[:1]]))


@settings(max_examples=10, deadline=None, database=None, derandomize=not os.environ.get("SDPA_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow])
@given(c=calls())
def test_kernel_agrees_with_torch_on_the_new_arguments(c):
    """The same calls with ENGINE_BACKEND=triton (the kernel, in Triton's interpreter on a CPU) in float32:
    broadcast dims, GQA (repeated K/V heads), masks and lower/higher ranks reach the kernel unchanged."""
    c = {**c, "dtype": torch.float32, "mask": "bool" if c["mask"] == "query" else c["mask"]}
    q, k, v, kw = make(c)
    want, refused = torch_result(q, k, v, kw)
    if refused is not None:
        return  # refusals are the torch-backend test's business
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = q.to(device), k.to(device), v.to(device)
    if kw["attn_mask"] is not None:
        kw["attn_mask"] = kw["attn_mask"].to(device)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "triton")
        got = ops.scaled_dot_product_attention(q, k, v, **kw)
    torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=2e-5, equal_nan=True)


GQA = [  # (q heads, k heads, v heads, enable_gqa) -> torch's verdict is the reference
    (6, 3, 3, True), (6, 2, 3, True), (6, 1, 1, True), (6, 6, 6, True), (6, 4, 4, True), (6, 12, 12, True),
    (6, 3, 3, False), (6, 1, 1, False), (6, 6, 6, False), (6, 3, 6, True), (6, 6, 3, True), (4, 0, 0, True),
]


@pytest.mark.parametrize("hq,hk,hv,gqa", GQA)
def test_every_gqa_combination(hq, hk, hv, gqa):
    g = torch.Generator().manual_seed(hq * 100 + hk * 10 + hv)
    q, k, v = (torch.randn(2, h, n, 8, generator=g) for h, n in ((hq, 5), (hk, 7), (hv, 7)))
    if hk == 0:  # torch 2.13 returns a tensor of garbage for zero key heads with enable_gqa; we refuse
        with pytest.raises(ValueError, match="enable_gqa: the key heads"):
            ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        return
    want, refused = torch_result(q, k, v, dict(enable_gqa=gqa))
    if refused is not None:
        with pytest.raises(ValueError, match="heads|broadcast"):
            ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    else:
        torch.testing.assert_close(ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa), want)


@pytest.mark.parametrize("name,value,ok", [
    ("dropout_p", 1.0, True), ("dropout_p", 1, True), ("dropout_p", torch.tensor(0.0), True), ("dropout_p", True, True),
    ("dropout_p", 1.5, False), ("dropout_p", -0.1, False), ("dropout_p", float("nan"), False), ("dropout_p", None, False),
    ("dropout_p", "x", False), ("scale", float("inf"), True), ("scale", float("nan"), True), ("scale", -2, True),
    ("scale", torch.tensor(0.5), True), ("scale", "x", False), ("is_causal", 1, False), ("is_causal", None, False),
    ("enable_gqa", 1, False), ("enable_gqa", None, False)])
def test_scalar_arguments_like_torch(name, value, ok):
    q = torch.randn(2, 3, 5, 8)
    want, refused = torch_result(q, q, q, {name: value})
    assert (refused is None) == ok  # the table states torch 2.13's verdicts
    if ok:
        torch.manual_seed(0)
        want = F.scaled_dot_product_attention(q, q, q, **{name: value})
        torch.manual_seed(0)
        torch.testing.assert_close(ops.scaled_dot_product_attention(q, q, q, **{name: value}), want, equal_nan=True)
    else:
        with pytest.raises((TypeError, ValueError), match=name):
            ops.scaled_dot_product_attention(q, q, q, **{name: value})


def test_deliberate_differences_from_torch():
    """Each entry of README's list: torch 2.13 accepts these and returns values that mean nothing; engine refuses."""
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="value must have as many positions as key"):
        ops.scaled_dot_product_attention(q, torch.randn(1, 2, 7, 8), torch.randn(1, 2, 6, 8))
    assert F.scaled_dot_product_attention(q, torch.randn(1, 2, 7, 8), torch.randn(1, 2, 6, 8)).shape == (1, 2, 5, 8)
    meta = torch.zeros(5, 5, device="meta")
    with pytest.raises(ValueError, match="attn_mask must be on the query's device"):
        ops.scaled_dot_product_attention(q, q, q, attn_mask=meta)
    # torch reads memory the meta mask never had: only the shape of its answer is stable (values may be NaN)
    assert F.scaled_dot_product_attention(q, q, q, attn_mask=meta).shape == q.shape
    # where engine accepts more, with the meaning torch's other paths give it:
    keep = torch.ones(5, 5, dtype=torch.bool).tril()
    want = F.scaled_dot_product_attention(q, q, q, attn_mask=keep, scale=-0.7)
    assert F.scaled_dot_product_attention(q, q, q, is_causal=True, scale=-0.7).isnan().any()  # torch's 4-D CPU path
    torch.testing.assert_close(ops.scaled_dot_product_attention(q, q, q, is_causal=True, scale=-0.7), want)
    key_mask = torch.tensor([True, False, True, True, False])
    with pytest.raises(IndexError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=key_mask)  # rank 4 only; other ranks broadcast it
    torch.testing.assert_close(ops.scaled_dot_product_attention(q, q, q, attn_mask=key_mask),
                               F.scaled_dot_product_attention(q[0], q[0], q[0], attn_mask=key_mask)[None])
    m = torch.rand(5, 5) > 0.3
    with pytest.raises(RuntimeError, match="should not be set when is_causal"):
        F.scaled_dot_product_attention(q[0], q[0], q[0], attn_mask=m, is_causal=True)  # its 4-D path ANDs them
    torch.testing.assert_close(ops.scaled_dot_product_attention(q[0], q[0], q[0], attn_mask=m, is_causal=True),
                               F.scaled_dot_product_attention(q, q, q, attn_mask=m, is_causal=True)[0])
    g = torch.Generator().manual_seed(0)
    # 33 keys: with 8, torch's AVX-512 kernels read the mask right (its AVX2 and scalar ones misread it at 8 too)
    q1, k8, v8 = (torch.randn(1, 1, n, 3, generator=g, dtype=torch.float64) for n in (1, 33, 33))
    bias = torch.randn(1, 1, 1, 33, generator=g)  # float32 beside float64
    want = F.scaled_dot_product_attention(q1[0], k8[0], v8[0], attn_mask=bias[0])[None]  # its 3-D path
    assert not torch.allclose(F.scaled_dot_product_attention(q1, k8, v8, attn_mask=bias), want)  # 4-D misreads
    torch.testing.assert_close(F.scaled_dot_product_attention(q1, k8, v8, attn_mask=bias.double()), want)
    torch.testing.assert_close(ops.scaled_dot_product_attention(q1, k8, v8, attn_mask=bias), want)


@pytest.mark.parametrize("n_q,n_k", [(7, 4), (4, 7)])
@pytest.mark.parametrize("shapes", ["3-D", "5-D", "gqa"])
def test_relative_position_bias_must_cover_the_longer_side(n_q, n_k, shapes):
    """The table (H, 2L - 1) needs L >= max(Nq, Nk) (distances up to Nk - 1 and Nq - 1): one short is refused by
    name, on the full argument check's paths (other ranks, GQA); exactly long enough runs."""
    g = torch.Generator().manual_seed(n_q)
    lead_q, lead_k, gqa = {"3-D": ((2,), (2,), False), "5-D": ((2, 1, 2), (1, 3, 2), False),
                           "gqa": ((1, 4), (1, 2), True)}[shapes]
    q = torch.randn(*lead_q, n_q, 8, generator=g)
    k, v = (torch.randn(*lead_k, n_k, 8, generator=g) for _ in range(2))
    heads = lead_q[-1]
    longer = max(n_q, n_k)
    with pytest.raises(ValueError, match="relative_position_bias"):
        ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa,
                                         relative_position_bias=torch.randn(heads, 2 * longer - 3, generator=g))
    out = ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa,
                                           relative_position_bias=torch.randn(heads, 2 * longer - 1, generator=g))
    assert out.shape == F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa).shape



@pytest.mark.parametrize("shapes", [
    ((2, 3, 2, 5, 8), (2, 3, 2, 7, 8), (2, 3, 2, 7, 4), False),  # 5-D, the first two dims alike (not a 4-D call)
    ((2, 2, 2, 5, 8), (2, 2, 2, 7, 8), (2, 2, 7, 4), False),  # 5-D q / k, a 4-D value that broadcasts
    ((3, 4, 5, 8), (3, 1, 7, 8), (3, 1, 7, 8), False),  # key / value heads broadcast, the batch alike
    ((1, 4, 5, 8), (3, 4, 7, 8), (3, 4, 7, 8), False),  # the query batch broadcast
    ((4, 4, 5, 8), (4, 2, 7, 8), (4, 1, 7, 8), True),  # GQA with B == Hq (the repeat decided by the heads dim)
    ((4, 6, 5, 8), (4, 3, 7, 8), (4, 2, 7, 8), True),  # GQA, a batch that does not divide the heads
    ((6, 5, 8), (3, 7, 8), (2, 7, 8), True),  # 3-D GQA
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), False),  # plain 4-D (the full check's own shortcut)
])
def test_full_check_brings_every_call_to_matching_4d_views(shapes):
    """_check_sdpa's contract, the form every path below it takes: q, k, v 4-D with one (B, H) for the three (the
    broadcast leading dims flattened, GQA's key / value heads repeated as torch's repeat_interleave), holding
    exactly the broadcast inputs; a 2-D or 3-D mask made 4-D and broadcastable to (B, H, Nq, Nk) with the same
    values; the output shape (..., Hq, Nq, Dv); and the op's result equals torch's."""
    from engine.ops.sdpa_args import _check_sdpa

    sq, sk, sv, gqa = shapes
    g = torch.Generator().manual_seed(len(sq) + sq[-3])
    query, key, value = (torch.randn(*s, generator=g, dtype=torch.float64) for s in (sq, sk, sv))
    key_r, value_r = key, value
    if gqa:  # torch's meaning of enable_gqa: key / value head j serves query heads j * r .. j * r + r - 1
        key_r = key.repeat_interleave(sq[-3] // sk[-3], -3)
        value_r = value.repeat_interleave(sq[-3] // sv[-3], -3)
    lead = torch.broadcast_shapes(sq[:-2], key_r.shape[:-2], value_r.shape[:-2])
    b, h, n_q, n_k = math.prod(lead[:-1]), lead[-1], sq[-2], sk[-2]
    q, k, v, mask, *_, out_shape = _check_sdpa(query, key, value, None, 0.0, False, None, gqa)
    assert mask is None and tuple(out_shape) == (*lead, n_q, sv[-1])
    assert q.dim() == k.dim() == v.dim() == 4 and q.shape[:2] == k.shape[:2] == v.shape[:2] == (b, h)
    for got, t in ((q, query), (k, key_r), (v, value_r)):
        assert torch.equal(got, t.expand(*lead, *t.shape[-2:]).reshape(b, h, *t.shape[-2:]))
    for m in (torch.rand(n_q, n_k, generator=g) > 0.3, torch.randn(1, n_q, n_k, generator=g, dtype=torch.float64)):
        got = _check_sdpa(query, key, value, m, 0.0, False, None, gqa)[3]
        assert got.dim() == 4 and torch.equal(got.expand(b, h, n_q, n_k),
                                              m.expand(*lead, n_q, n_k).reshape(b, h, n_q, n_k)), m.shape
    torch.testing.assert_close(ops.scaled_dot_product_attention(query, key, value, enable_gqa=gqa),
                               F.scaled_dot_product_attention(query, key, value, enable_gqa=gqa))


def test_full_check_refusals_name_the_argument():
    """Refusals of the full check torch also makes, by name: a 1-D query; a scale that is a 1-element 1-D tensor
    (torch's parser takes 0-d tensors only); zero key heads with enable_gqa."""
    q = torch.randn(2, 3, 5, 8)
    with pytest.raises(ValueError, match="query must have at least 2 dims"):
        ops.scaled_dot_product_attention(torch.randn(8), q[0, 0], q[0, 0])
    with pytest.raises(TypeError, match="scale must be a float"):
        ops.scaled_dot_product_attention(q, q, q, scale=torch.tensor([0.5]))
    with pytest.raises(TypeError):
        F.scaled_dot_product_attention(q, q, q, scale=torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"enable_gqa: the key heads \(dim -3: 0\) must divide the query heads \(3\)"):
        ops.scaled_dot_product_attention(q, q[:, :0], q[:, :0], enable_gqa=True)
    kv, ok = torch.randn(3, 1, 5, 8), torch.randn(2, 1, 5, 8)  # batch 3 against the query's 2: no broadcast
    for k, v in ((kv, kv), (kv, ok), (ok, kv)):  # grouped heads or not; the key's or the value's batch alone
        for gqa in (True, False):
            with pytest.raises(ValueError, match="batch/head dims must broadcast"):
                ops.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    from engine.ops.sdpa_args import _check_sdpa

    with pytest.raises(ValueError, match="batch/head dims must broadcast"):  # enable_gqa's default is False
        _check_sdpa(torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), None, 0.0, False, None)
    with pytest.raises(ValueError, match="attn_mask must be broadcastable"):  # a 3-D call: the full check's mask test
        ops.scaled_dot_product_attention(q[0], q[0], q[0], attn_mask=torch.ones(5, 4, dtype=torch.bool))
