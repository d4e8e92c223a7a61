"""inf, -inf, NaN and near-overflow values through every op on both backends (the kernels in Triton's interpreter on a
CPU): they agree, except for the differences README lists under "Where engine's ops differ from PyTorch", which are
asserted here exactly as written there."""
from __future__ import annotations

import math

import pytest
import torch

from engine import ops

F32_MIN = torch.finfo(torch.float32).min
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter, on inf / NaN
SPECIAL = [float("inf"), float("-inf"), float("nan"), 3e38, F32_MIN]


def run_both(monkeypatch, fn):
    outs = []
    for name in ("torch", "triton"):
        monkeypatch.setenv("ENGINE_BACKEND", name)
        out = fn()
        outs.append(tuple(o.float().cpu() for o in (out if isinstance(out, tuple) else (out,))))
    return outs


def _kind(t: torch.Tensor) -> torch.Tensor:
    """Per element: 0 finite, 1 NaN, 2 +inf, 3 -inf."""
    return t.isnan() * 1 + t.isposinf() * 2 + t.isneginf() * 3


def assert_agree(a, b, tol, ref=None):
    """a (PyTorch path) and b (kernels) agree: the same NaN / +inf / -inf positions, finite values within tol.

    ref: the PyTorch path run in float64 on the same values. Where PyTorch's own low-precision CPU op departs from
    it on a special value (an artifact of the machine's vectorised code: on AVX-512 CPUs oneDNN's exact GELU gives
    NaN for +inf and overflows 3e38 to inf, in fp32 and bf16), the kernels must give the float64 result there."""
    for i, (x, y) in enumerate(zip(a, b)):
        kx, ky = _kind(x), _kind(y)
        if ref is not None:
            z = ref[i].to(y.dtype)  # float64's answer, rounded as the kernels round theirs
            kz = _kind(z)
            off = (kx != ky) & (kx != kz)  # PyTorch's op is off its float64 result here: judge the kernels by that
            assert torch.equal(ky[off], kz[off])
            fin = off & z.isfinite()
            torch.testing.assert_close(y[fin], z[fin], atol=tol, rtol=tol)
            kx = torch.where(off, kz, kx)
            x = torch.where(off, z, x)
        assert torch.equal(kx, ky)
        fin = x.isfinite()
        torch.testing.assert_close(x[fin], y[fin], atol=tol, rtol=tol)


@pytest.mark.parametrize("val", SPECIAL, ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "fp16", "bf16"])
def test_norms_and_activations_agree(monkeypatch, device, val, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 37, generator=g), torch.randn(3, 37, generator=g)
    w, b = torch.randn(37, generator=g), torch.randn(37, generator=g)
    x[1, 5] = val
    args = tuple(t.to(device, dtype) for t in (x, r, w, b))
    args64 = tuple(t.to(device, dtype).double() for t in (x, r, w, b))  # the same values, computed in float64
    for fn in (lambda x, r, w, b: ops.layer_norm(x, (37,), w, b), lambda x, r, w, b: ops.add_layer_norm(x, r, w, b),
               lambda x, r, w, b: ops.add_layer_norm(r, x, w, b), lambda x, r, w, b: ops.gelu(x),
               lambda x, r, w, b: ops.gelu(x, approximate="tanh"), lambda x, r, w, b: ops.bias_gelu(x, b),
               lambda x, r, w, b: ops.bias_gelu(r, x[1], approximate="tanh"),
               # the T5 family's ops: RMSNorm, add + RMSNorm, GeGLU (the special value in the gate or the up half)
               lambda x, r, w, b: ops.rms_norm(x, (37,), w), lambda x, r, w, b: ops.add_rms_norm(x, r, w),
               lambda x, r, w, b: ops.add_rms_norm(r, x, w), lambda x, r, w, b: ops.gelu_and_mul(x[:, :36]),
               lambda x, r, w, b: ops.gelu_and_mul(x.flip(-1)[:, :36], approximate="tanh")):
        monkeypatch.setenv("ENGINE_BACKEND", "torch")
        ref = fn(*args64)
        ref = tuple(o.cpu() for o in (ref if isinstance(ref, tuple) else (ref,)))
        assert_agree(*run_both(monkeypatch, lambda: fn(*args)), tol, ref)


MASK_BOUND = torch.finfo(torch.float32).max


def qkv(device):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 2, n, 16, generator=g).to(device) for n in (5, 6, 6)]


@pytest.mark.parametrize("val", SPECIAL, ids=str)
def test_attention_agrees_on_special_inputs(monkeypatch, device, val):
    """inf / -inf / huge values in q, k or v, any special value in decode and varlen attention: the same on both."""
    for which in range(3):
        if val != val and which == 0:
            continue  # NaN in q: a listed difference (below)
        t = qkv(device)
        t[which][0, 0, 1, 3] = val
        for causal in (False, True):
            assert_agree(*run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(*t, is_causal=causal)), 1e-4)
        q1 = t[0][:, :, :1]
        for n in (6, 2):  # the special value inside / beyond the valid cache length
            lens = torch.tensor([n], dtype=torch.int32, device=device)
            assert_agree(*run_both(monkeypatch, lambda: ops.decode_attention(q1, t[1], t[2], lens)), 1e-4)
    if val == val:
        m = torch.zeros(5, 6, device=device)
        m[1, 2] = val
        if val < MASK_BOUND * 16 ** -0.5:  # above: a listed difference (head dim 16: scale 1/4)
            m2 = m.clone()
            m2[3] = val  # a whole row
            for mask in (m, m2):
                assert_agree(*run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(
                    *qkv(device), attn_mask=mask)), 1e-4)


def test_listed_attention_differences(monkeypatch, device):
    """README: NaN in a query row; NaN in a float mask; float-mask values above float32's max * min(scale, ln 2)
    in the kernel."""
    q, k, v = qkv(device)
    q[0, 0, 1, 3] = float("nan")
    ref, kern = run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q, k, v))
    assert kern[0][0, 0, 1].isnan().all() and not kern[0][0, 0, [0, 2, 3, 4]].isnan().any()
    if device == "cpu":
        assert ref[0].isfinite().all()  # PyTorch's CPU SDPA
    q, k, v = qkv(device)
    nan_mask = torch.zeros(5, 6, device=device)
    nan_mask[1, 2] = float("nan")
    ref, kern = run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=nan_mask))
    assert ref[0][:, :, 1].isnan().all() and ref[0][:, :, [0, 2, 3, 4]].isfinite().all()
    keep = torch.ones(5, 6, dtype=torch.bool, device=device)
    keep[1, 2] = False  # the kernel treats the NaN entry as a masked-out key
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    torch.testing.assert_close(kern[0], ops.scaled_dot_product_attention(q, k, v, attn_mask=keep).cpu())
    for scale in (None, 0.9):  # the documented bound: float32's max times min(scale, ln 2)
        bound = MASK_BOUND * min(scale or 16 ** -0.5, math.log(2))
        big = torch.zeros(5, 6, device=device)
        big[1, 2] = 1.1 * bound
        ref, kern = run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=big, scale=scale))
        assert ref[0].isfinite().all() and kern[0][:, :, 1].isnan().all()
        big[1, 2] = 0.9 * bound  # below the bound: agree
        assert_agree(*run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=big,
                                                                                     scale=scale)), 1e-4)


@pytest.mark.parametrize("val", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_listed_hidden_key_difference(monkeypatch, device, val):
    """README: a non-finite key that varlen's causal triangle hides is ignored by the kernel and turns rows NaN on
    the PyTorch path (which adds the triangle as -inf); hidden by a bool or additive mask, or by is_causal, both
    paths give the same rows NaN (the kernel starts the scores from the mask, as PyTorch adds it)."""
    q, k, v = qkv(device)
    k[0, 0, 2, 3] = val
    hide = torch.ones(5, 6, dtype=torch.bool, device=device)
    hide[:, 2] = False
    add = torch.zeros(5, 6, device=device).masked_fill(~hide, float("-inf"))
    for mask in (hide, add):
        ref, kern = run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        assert ref[0].isnan().any() and torch.equal(ref[0].isnan(), kern[0].isnan())
    q6 = torch.cat([q, q[:, :, :1]], 2)
    ref, kern = run_both(monkeypatch, lambda: ops.scaled_dot_product_attention(q6, k, v, is_causal=True))
    assert torch.equal(ref[0].isnan(), kern[0].isnan())
    # varlen, one causal sequence of 6: rows 0 and 1 cannot see key 2
    pq, pk, pv = (t[0].transpose(0, 1).contiguous() for t in (q6, k, v))
    cu = torch.tensor([0, 6], dtype=torch.int32, device=device)
    ref, kern = run_both(monkeypatch, lambda: ops.varlen_attention(pq, pk, pv, cu, cu, 6, 6, causal=True))
    assert ref[0][:2, 0].isnan().any() and kern[0][:2].isfinite().all()
    assert torch.equal(ref[0][2:].isnan(), kern[0][2:].isnan())
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    clean = pk.clone()
    clean[2] = 0.0
    torch.testing.assert_close(kern[0][:2], ops.varlen_attention(pq, clean, pv, cu, cu, 6, 6, causal=True)[:2].cpu())


@pytest.mark.parametrize("val", SPECIAL, ids=str)
def test_varlen_agrees(monkeypatch, device, val):
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in qkv(device))  # (N, H, D)
    k[0, 0, 3] = val  # seen by every query of sequence 0 (a hidden one is a listed difference)
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 3, 6], dtype=torch.int32, device=device)
    for causal in (False, True):
        assert_agree(*run_both(monkeypatch, lambda: ops.varlen_attention(q, k, v, cu_q, cu_k, 3, 3, causal=causal)),
                     1e-4)
