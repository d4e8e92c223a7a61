"""The ops' cheap path: the calls models make are accepted by a few attribute reads and never run the full argument
checks (the ``_check_*`` functions of engine/ops), which still run, with the same results, for every other call.
The errors those checks raise are tested in each op's bad-input test.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ops
from engine.ops import activation, attention, decode, norm, varlen

FULL_CHECKS = [(norm, "_check_norm"), (norm, "_check_add_norm"), (activation, "_check_bias_gelu"),
               (activation, "_check_gelu_and_mul"), (attention, "_check_sdpa"), (varlen, "_check_varlen"),
               (varlen, "check_relative_position_bias"), (decode, "_check_args"),
               (decode, "check_relative_position_bias")]


def _rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 1.3 + 0.2).to(dtype)


def _model_calls():
    """(name, call) as the BERT-family and T5 layers make them (T5: scale 1.0, a bias table, RMSNorm, GeGLU)."""
    x, r, w, b = _rand(2, 5, 24), _rand(2, 5, 24, seed=1), _rand(24, seed=2), _rand(24, seed=3)
    q, k, v = (_rand(2, 5, 3, 8, seed=s).transpose(1, 2) for s in (4, 5, 6))  # (B, H, N, D) views, as models make
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[1, ..., 3:] = False
    table = _rand(3, 9, seed=7)  # (H, 2L - 1), L = 5
    pq, pk, pv = (_rand(8, 3, 8, seed=s) for s in (8, 9, 10))
    cu = torch.tensor([0, 5, 8], dtype=torch.int32)
    dq, kc, vc = _rand(2, 3, 1, 8, seed=11), _rand(2, 3, 6, 8, seed=12), _rand(2, 3, 6, 8, seed=13)
    lens = torch.tensor([4, 6], dtype=torch.int32)
    table6 = _rand(3, 11, seed=14)
    return [
        ("layer_norm", lambda: ops.layer_norm(x, (24,), w, b, 1e-12)),
        ("add_layer_norm", lambda: ops.add_layer_norm(x, r, w, b, 1e-12)),
        ("rms_norm", lambda: ops.rms_norm(x, (24,), w, 1e-6)),
        ("rms_norm eps=None", lambda: ops.rms_norm(x, (24,), w)),
        ("add_rms_norm", lambda: ops.add_rms_norm(x, r, w, 1e-6)),
        ("add_rms_norm eps=None", lambda: ops.add_rms_norm(x, r, None)),
        ("bias_gelu", lambda: ops.bias_gelu(x, b, "tanh")),
        ("gelu_and_mul", lambda: ops.gelu_and_mul(x, "tanh")),
        ("sdpa", lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.3)),
        ("sdpa + bias", lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1.0,
                                                                  relative_position_bias=table)),
        ("sdpa + bias, causal", lambda: ops.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0,
                                                                          relative_position_bias=table)),
        ("varlen + bias", lambda: ops.varlen_attention(pq, pk, pv, cu, cu, 5, 5, scale=1.0, validate=False,
                                                       relative_position_bias=table)),
        ("decode + bias", lambda: ops.decode_attention(dq, kc, vc, lens, 1.0, relative_position_bias=table6)),
    ]


CALLS = _model_calls()


@pytest.fixture
def count_full_checks(monkeypatch):
    """{name: calls} of every full check (each still runs its real body)."""
    counts = {}
    for mod, name in FULL_CHECKS:
        real = getattr(mod, name)

        def spy(*a, real=real, key=f"{mod.__name__}.{name}", **kw):
            counts[key] = counts.get(key, 0) + 1
            return real(*a, **kw)

        monkeypatch.setattr(mod, name, spy)
    return counts


@pytest.mark.parametrize("index", range(len(CALLS)), ids=[c[0] for c in CALLS])
def test_model_calls_skip_the_full_checks(count_full_checks, index):
    out = CALLS[index][1]()
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
    assert count_full_checks == {}


def _valid_uncommon_calls():
    """(name, the call through the full checks, the same computation through the cheap path)."""
    x, w = _rand(4, 10), _rand(10, seed=1)
    q, k, v = (_rand(1, 2, 4, 8, seed=s) for s in (2, 3, 4))
    table = _rand(2, 7, seed=5)
    dq, kc = _rand(1, 2, 1, 8, seed=6), _rand(1, 2, 4, 8, seed=7)
    lens = torch.tensor([3], dtype=torch.int32)
    return [
        ("rms_norm numpy eps", lambda: ops.rms_norm(x, 10, w, np.float64(1e-6)),
         lambda: ops.rms_norm(x, (10,), w, 1e-6)),
        ("add_rms_norm into out", lambda: ops.add_rms_norm(x, x, w, 1e-6, out=torch.empty_like(x))[0],
         lambda: ops.add_rms_norm(x, x, w, 1e-6)[0]),
        ("gelu_and_mul into out", lambda: ops.gelu_and_mul(x, out=torch.empty(4, 5)), lambda: ops.gelu_and_mul(x)),
        ("sdpa int scale, float64 table", lambda: ops.scaled_dot_product_attention(
            q, k, v, relative_position_bias=table.to(torch.float64), scale=1),  # int scale: the full checks
         lambda: ops.scaled_dot_product_attention(q, k, v, relative_position_bias=table.to(torch.float64), scale=1.0)),
        ("decode numpy scale", lambda: ops.decode_attention(dq, kc, kc, lens, np.float32(0.5),
                                                            relative_position_bias=table),
         lambda: ops.decode_attention(dq, kc, kc, lens, 0.5, relative_position_bias=table)),
    ]


UNCOMMON = _valid_uncommon_calls()


@pytest.mark.parametrize("index", range(len(UNCOMMON)), ids=[c[0] for c in UNCOMMON])
def test_other_valid_calls_run_the_full_checks_with_the_same_result(count_full_checks, index):
    _, full, cheap = UNCOMMON[index]
    got = full()
    assert count_full_checks, "expected the full checks to run"
    count_full_checks.clear()
    ref = cheap()
    assert count_full_checks == {}
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@st.composite
def _near_cheap_sdpa_calls(draw):
    """4-D SDPA calls around the cheap path's edge: each argument now and then just outside what it accepts (a mask
    dtype torch refuses, dropout_p 1 or 1.5, a non-finite or int scale, non-bool flags, grouped or broadcast heads,
    key and value sizes unlike the query's or each other's, a bias table too short, even-width, of other heads or
    dtype)."""
    def pick(usual, *odd):  # the usual value 8 times in 9
        return draw(st.sampled_from([usual] * (8 * len(odd)) + list(odd)))

    b, h, n_q, n_k, d = (draw(st.integers(1, 3)) for _ in range(5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    k_bh = [pick(x, 1) for x in (b, h)]
    v_bh = [pick(x, 1, x + 1) for x in k_bh]  # value's batch / heads: k's, or not
    d_k, d_v = pick(d, d + 1), pick(d, d + 1, 1)  # key head dim: q's or not; value head dim (Dv): any
    mask_kind = pick(draw(st.sampled_from([None, torch.bool, torch.float32, "query"])), torch.float64, torch.float16,
                     torch.int64)
    mask_dims = [pick(draw(st.sampled_from([1, x])), x + 1) for x in (b, h, n_q, n_k)]
    mask_dims = mask_dims[pick(0, 0, 1, 2):]
    length = max(n_q, n_k) + pick(0, 2, -1)
    bias = pick(draw(st.sampled_from([None, "ok"])), "heads", "even", "f64")
    return dict(b=b, h=h, n_q=n_q, n_k=n_k, d=d, d_k=d_k, d_v=d_v, dtype=dtype, k_bh=k_bh, v_bh=v_bh, mask=mask_kind,
                mask_dims=mask_dims,
                length=max(length, 1), bias=bias, dropout_p=pick(0.0, 1.0, 1.5, 0),
                scale=draw(st.sampled_from([None, 0.4, 1.0, -1.0, 0.0, math.inf, math.nan, 1])),
                is_causal=pick(draw(st.booleans()), 1), enable_gqa=pick(draw(st.booleans()), 0))


def _make_sdpa_call(c):
    g = torch.Generator().manual_seed(c["b"] * 7 + c["n_q"])
    rand = lambda *s, dt=c["dtype"]: torch.randn(*s, generator=g).to(dt)  # noqa: E731
    q = rand(c["b"], c["h"], c["n_q"], c["d"])
    k, v = rand(*c["k_bh"], c["n_k"], c["d_k"]), rand(*c["v_bh"], c["n_k"], c["d_v"])
    m = None
    if c["mask"] is torch.bool:
        m = torch.rand(*c["mask_dims"], generator=g) > 0.3
    elif c["mask"] is not None:
        m = rand(*c["mask_dims"], dt=c["dtype"] if c["mask"] == "query" else c["mask"])
    t = None
    if c["bias"] is not None:
        heads = c["h"] + (c["bias"] == "heads")
        width = 2 * c["length"] - 1 + (c["bias"] == "even")
        t = rand(heads, width, dt=torch.float64 if c["bias"] == "f64" else torch.float32)
    return (q, k, v), dict(attn_mask=m, dropout_p=c["dropout_p"], is_causal=c["is_causal"], scale=c["scale"],
                           enable_gqa=c["enable_gqa"], relative_position_bias=t)


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(c=_near_cheap_sdpa_calls())
def test_sdpa_cheap_path_implies_the_full_checks(c):
    """Whenever scaled_dot_product_attention takes its cheap path (its full checks not called), the full checks
    accept the same call and see nothing to reshape (out_shape is the 4-D result's), and the result is the one the
    full-check path gives (the same call with a 0-d tensor scale, which only the full checks accept)."""
    args, kw = _make_sdpa_call(c)
    calls = []
    real = attention._check_sdpa
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "torch")
        mp.setattr(attention, "_check_sdpa", lambda *a, **k: calls.append(1) or real(*a, **k))
        try:
            torch.manual_seed(0)
            out = ops.scaled_dot_product_attention(*args, **kw)
        except (TypeError, ValueError):
            assert calls, "the cheap path accepted a call that then failed"
            return
        if calls:
            return  # the full checks ran: nothing to show
        checked = real(*args, *(kw[n] for n in ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                                                "relative_position_bias")))
        assert tuple(checked[-1]) == tuple(out.shape)
        if kw["scale"] is not None and math.isfinite(kw["scale"]):
            torch.manual_seed(0)
            exact = torch.tensor(kw["scale"], dtype=torch.float64)  # float() of it is the same Python float
            full = ops.scaled_dot_product_attention(*args, **{**kw, "scale": exact})
            assert calls  # the tensor scale went through the full checks
            torch.testing.assert_close(out, full, rtol=0, atol=0, equal_nan=True)


def test_compiling_is_torch_is_compiling(monkeypatch):
    """engine.ops._checks.compiling (every op asks it once per call) answers as torch.compiler.is_compiling: False
    in eager code, True under the flag torch.compile's session and torch.export set, and True inside a dynamo trace,
    where it must fold to a constant (no guard on the flag: a second call does not recompile)."""
    from engine.ops._checks import compiling

    assert compiling() is False and torch.compiler.is_compiling() is False
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "_is_compiling_flag", True)
        assert compiling() is True and torch.compiler.is_compiling() is True

    @torch.compile(backend="eager", fullgraph=True)
    def f(x):
        return x + 1 if compiling() else x - 1

    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            assert torch.equal(f(torch.zeros(3)), torch.ones(3))
    assert compiling() is False


_Q = (2, 3, 5, 4)  # (B, H, Nq, D)


@pytest.mark.parametrize("k_shape, v_shape, path", [
    (_Q, _Q, "cheap"),  # self-attention: k and v have q's sizes
    ((2, 3, 7, 4), (2, 3, 7, 4), "cheap"),  # cross-attention, Nk != Nq
    (_Q, (2, 3, 5, 6), "cheap"),  # Dv != D
    ((2, 3, 7, 4), (2, 3, 7, 6), "cheap"),
    ((1, 3, 5, 4), (1, 3, 5, 4), "full"),  # a broadcast batch or head dim: the full checks (torch broadcasts it)
    (_Q, (1, 3, 5, 4), "full"),
    (_Q, (2, 1, 5, 4), "full"),
    ((2, 1, 7, 4), (2, 3, 7, 4), "full"),
    ((2, 3, 5, 6), (2, 3, 5, 6), "error"),  # key head dim != query's
    ((2, 3, 7, 4), (2, 3, 5, 4), "error"),  # value length != key's
    ((2, 4, 5, 4), (2, 4, 5, 4), "error"),  # 4 key heads for 3 query heads, no GQA
    ((2, 3, 5, 4, 1), _Q, "error"),  # 5-D key
    (_Q, (2, 3, 5), "error"),  # 3-D value
])
def test_sdpa_key_and_value_sizes(count_full_checks, k_shape, v_shape, path):
    """Which (q, k, v) sizes the cheap path takes (k and v equal to q's sizes in one comparison, or matched size by
    size), which go through the full checks, and that those refuse the same calls torch refuses (with engine's
    message); every accepted call gives torch's SDPA result."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*s, generator=g, dtype=torch.float64) for s in (_Q, k_shape, v_shape))
    if path == "error":
        with pytest.raises((ValueError, TypeError), match="key|value"):
            ops.scaled_dot_product_attention(q, k, v)
        assert count_full_checks == {f"{attention.__name__}._check_sdpa": 1}
        if len(k_shape) == 4:  # torch's math kernel refuses these too (a 5-D key it broadcasts against q; its
            # fused CPU kernel in torch 2.13 even runs a value shorter than the key, reading rows v does not have)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH), pytest.raises(RuntimeError):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return
    out = ops.scaled_dot_product_attention(q, k, v)
    assert count_full_checks == ({} if path == "cheap" else {f"{attention.__name__}._check_sdpa": 1})
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k_total, v_total, d_k, d_v, cu_k, path", [
    (7, 7, 4, 4, "same", "cheap"),  # self-attention: k as q, one cu_seqlens object
    (7, 7, 4, 4, "copy", "cheap"),  # an equal cu_seqlens_k of its own
    (9, 9, 4, 4, "other", "cheap"),  # cross-attention: other key lengths
    (7, 7, 5, 5, "same", "error"),  # key head dim != query's
    (7, 7, 4, 5, "same", "error"),  # value head dim != key's (varlen: Dv == D)
    (9, 7, 4, 4, "other", "error"),  # value tokens != key tokens
    (7, 7, 4, 4, "int64", "error"),  # cu_seqlens_k not int32
    (7, 7, 4, 4, "short", "error"),  # cu_seqlens_k of another length
    (7, 7, 4, 4, "meta", "error"),  # cu_seqlens_k on another device
])
def test_varlen_key_value_and_cu_seqlens(count_full_checks, k_total, v_total, d_k, d_v, cu_k, path):
    """varlen_attention's cheap path vs its full checks for the key / value sizes and cu_seqlens_k (skipped when it
    is cu_seqlens_q itself): accepted calls give per-sequence torch SDPA, refusals name the argument."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    k = torch.randn(k_total, 3, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(v_total, 3, d_v, generator=g, dtype=torch.float64)
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = {"same": cu_q, "copy": cu_q.clone(), "other": torch.tensor([0, 4, 9], dtype=torch.int32),
            "int64": cu_q.long(), "short": torch.tensor([0, 7], dtype=torch.int32), "meta": cu_q.to("meta")}[cu_k]
    max_k = 5 if cu_k.is_meta else int((cu_k[1:] - cu_k[:-1]).max())
    if path == "error":
        with pytest.raises((ValueError, TypeError), match="k |v |k and v|cu_seqlens"):
            ops.varlen_attention(q, k, v, cu_q, cu_k, 4, max_k)
        assert count_full_checks == {f"{varlen.__name__}._check_varlen": 1}
        return
    out = ops.varlen_attention(q, k, v, cu_q, cu_k, 4, max_k)
    assert count_full_checks == {}
    for (qs, qe), (ks, ke) in zip(zip(cu_q[:-1].tolist(), cu_q[1:].tolist()), zip(cu_k[:-1].tolist(), cu_k[1:].tolist())):
        want = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(0, 1) for t in (q[qs:qe], k[ks:ke], v[ks:ke]))).transpose(0, 1)
        torch.testing.assert_close(out[qs:qe], want, rtol=1e-12, atol=1e-12)
