"""ops.decode_attention: Triton flash-decoding kernel (interpreter on CPU) and the PyTorch path vs a float64 reference.

Tolerance rule: our fp16/bf16 error vs float64 is at most 2x PyTorch's own same-dtype SDPA error on the sliced
cache, plus a small per-dtype floor.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine import ops
from engine.kernels.attention import decode as kdecode
from engine.kernels.attention import specs as kspecs
from engine.ops.decode import KERNEL_HEAD_DIMS, decode_attention_torch

FLOOR = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(B, H, Tq, Tmax, D, dtype, device, *, layout="bhtd", seed=0):
    """Random q (B, H, Tq, D) and caches (B, H, Tmax, D); layout "bthd" views (B, Tmax, H, D) buffers."""
    g = torch.Generator().manual_seed(seed)
    if layout == "bhtd":
        q = torch.randn(B, H, Tq, D, generator=g)
        k = torch.randn(B, H, Tmax, D, generator=g)
        v = torch.randn(B, H, Tmax, D, generator=g)
        return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)
    q = torch.randn(B, Tq, H, D, generator=g).to(device, dtype).transpose(1, 2)
    kv = torch.randn(B, Tmax, H, 2, D + 8, generator=g).to(device, dtype)  # packed K/V with padded rows
    return q, kv[..., 0, :D].transpose(1, 2), kv[..., 1, 3:D + 3].transpose(1, 2)


def reference(q, k, v, lens, scale):
    """float64, row by row: query i of sequence b sees keys 0 .. clamp(lens[b], 0, Tmax) - Tq + i; else zeros."""
    B, H, Tq, D = q.shape
    Tmax = k.shape[2]
    out = torch.zeros(B, H, Tq, D, dtype=torch.float64, device=q.device)
    for b in range(B):
        L = min(max(int(lens[b]), 0), Tmax)
        for i in range(Tq):
            n = L - Tq + i + 1
            if n <= 0:
                continue
            s = torch.einsum("hd,hnd->hn", q[b, :, i].double(), k[b, :, :n].double()) * scale
            out[b, :, i] = torch.einsum("hn,hnd->hd", torch.softmax(s, -1), v[b, :, :n].double())
    return out


def torch_same_dtype_error(q, k, v, lens, scale, ref):
    """Max error of PyTorch SDPA in q's dtype on each sequence's sliced cache (bottom-right causal)."""
    Tq = q.shape[2]
    err = 0.0
    for b in range(q.shape[0]):
        L = int(lens[b])
        mask = torch.ones(Tq, L, dtype=torch.bool, device=q.device).tril(L - Tq)
        o = F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], attn_mask=mask,
                                           scale=scale)
        err = max(err, (o.double() - ref[b:b + 1]).abs().max().item())
    return err


def assert_matches(out, q, k, v, lens, scale=None):
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "non-finite values in the output"
    ref = reference(q, k, v, lens, scale)
    err = (out.double() - ref).abs().max().item()
    tol = 2 * torch_same_dtype_error(q, k, v, lens, scale, ref) + FLOOR[q.dtype]
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} ({q.dtype})"


def run_kernel(q, k, v, lens, *, num_splits=None, scale=None):
    """The launcher with a NaN-poisoned output and NaN-poisoned scratch (each split must write its slots)."""
    B, H, Tq, D = q.shape
    scale = scale if scale is not None else 1 / math.sqrt(D)
    plan = kdecode.plan_decode(B, H, Tq, k.shape[2], D, q.dtype, sm_count=kdecode.sm_count(q.device),
                               num_splits=num_splits)
    S = plan.num_splits
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    ws = (torch.full((B, H, Tq, S, D), float("nan"), device=q.device),
          torch.full((B, H, Tq, S), float("nan"), device=q.device)) if S > 1 else None
    res = kdecode.decode_attention_fwd(q, k, v, lens, scale=scale, out=out, num_splits=num_splits, workspace=ws)
    assert res is out
    return res, S


def seqlens(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


# ---------------------------------------------------------------- kernel (interpreter on CPU)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq", [1, 4])
def test_decode_matches_reference(triton_backend, device, dtype, Tq):
    B, H, Tmax, D = 3, 2, 45, 64
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, seed=Tq)
    lens = seqlens([Tmax, Tq, 23], device)  # full cache, only the new tokens, in between
    assert_matches(ops.decode_attention(q, k, v, lens), q, k, v, lens)


@pytest.mark.parametrize("dtype,Tq,num_splits", [
    (torch.float32, 3, 2), (torch.float16, 1, 2), (torch.bfloat16, 3, 2),
    (torch.float32, 1, 5), (torch.float16, 3, 5), (torch.bfloat16, 1, 5),
])
def test_split_and_combine(triton_backend, device, dtype, Tq, num_splits):
    # BLOCK_N = 64 here: 150 keys are 3 tiles, so 2 splits take 2 + 1 tiles and 5 splits leave 2 splits empty;
    # shorter rows leave more splits past cache_seqlens, which must write lse = -inf and combine right.
    B, H, Tmax, D = 4, 2, 150, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, seed=num_splits)
    lens = seqlens([Tmax, Tq, 71, 140], device)
    out, splits = run_kernel(q, k, v, lens, num_splits=num_splits)
    assert splits == num_splits
    assert_matches(out, q, k, v, lens)


def test_combine_merges_splits_across_several_loads(triton_backend, device):
    # fp32, D=256: BLOCK_N = 16 and the combine reads 32 splits per load; 40 splits of a 540-key cache give
    # 34 live one-tile splits spread over two loads, then 6 empty ones (13 live for the 200-key sequence).
    B, H, Tq, Tmax, D = 2, 1, 1, 540, 256
    assert kdecode._combine_block_s(256) == 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, device, seed=8)
    k[:, :, 512:] *= 4  # the largest log-sum-exps sit in the second load: the running max must rescale
    lens = seqlens([Tmax, 200], device)
    out, splits = run_kernel(q, k, v, lens, num_splits=40)
    assert splits == 40
    assert_matches(out, q, k, v, lens)


@pytest.mark.parametrize("D", KERNEL_HEAD_DIMS)
def test_every_head_dim(triton_backend, device, D):
    dtype = DTYPES[KERNEL_HEAD_DIMS.index(D) % 3]
    B, H, Tq, Tmax = 2, 2, 2, 130
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, seed=D)
    lens = seqlens([Tmax, 70], device)
    for num_splits in (None, 3):  # the planned launch, then split + combine
        out, splits = run_kernel(q, k, v, lens, num_splits=num_splits)
        assert splits == (num_splits or splits)
        assert_matches(out, q, k, v, lens)


@pytest.mark.parametrize("dtype,num_splits,Tq", [(torch.float32, None, 21), (torch.float16, 3, 21),
                                                (torch.float32, 2, 32)])
def test_more_than_one_query_block(triton_backend, device, dtype, num_splits, Tq):
    B, H, Tmax, D = 2, 1, 40, 16  # Tq > BLOCK_M: two query blocks per sequence (32: both full)
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, seed=5)
    lens = seqlens([Tmax, 29], device)
    out, _ = run_kernel(q, k, v, lens, num_splits=num_splits)
    assert_matches(out, q, k, v, lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_cache(triton_backend, device, dtype):
    # (B, Tmax, H, D) buffers viewed as (B, H, Tmax, D), K and V interleaved and offset inside padded rows.
    B, H, Tq, Tmax, D = 2, 3, 2, 50, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, layout="bthd", seed=7)
    assert not k.is_contiguous() and not q.is_contiguous()
    lens = seqlens([37, Tmax], device)
    for num_splits in (None, 3):
        out, _ = run_kernel(q, k, v, lens, num_splits=num_splits)
        assert_matches(out, q, k, v, lens)
    dense = ops.decode_attention(q.contiguous(), k.contiguous(), v.contiguous(), lens)
    torch.testing.assert_close(ops.decode_attention(q, k, v, lens), dense, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_splits", [None, 3])
def test_unvalidated_lengths_clamp_and_empty_rows_are_zero(triton_backend, device, num_splits):
    # validate=False: 0 and 1 (< Tq) leave rows with no visible key (zeros); 60 (> Tmax) is clamped to Tmax.
    B, H, Tq, Tmax, D = 3, 2, 3, 40, 64
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, device, seed=11)
    lens = seqlens([0, 1, 60], device)
    out, _ = run_kernel(q, k, v, lens, num_splits=num_splits)
    ref = reference(q, k, v, lens, 1 / math.sqrt(D))
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :, :2] == 0).all()
    assert (out[1, :, 2] != 0).any()
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(ops.decode_attention(q, k, v, lens, validate=False), out, atol=1e-6, rtol=0)


def test_launcher_never_reads_device_values(triton_backend, device, monkeypatch):
    # CUDA-graph safety: with validate=False nothing on the launch path may pull values to the host, and the
    # plan is a function of sizes only.
    B, H, Tq, Tmax, D = 2, 2, 1, 40, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float16, device, seed=3)
    lens = seqlens([40, 9], device)
    ref = reference(q, k, v, lens, 1 / math.sqrt(D))

    def forbidden(*args, **kwargs):
        raise AssertionError("the launcher read a tensor's values on the host")

    for name in ("item", "tolist", "__int__", "__bool__", "__index__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = ops.decode_attention(q, k, v, lens, validate=False)
    plan = kdecode.plan_decode(B, H, Tq, Tmax, D, q.dtype, sm_count=kdecode.sm_count(q.device))
    lens[1] = 1
    assert kdecode.plan_decode(B, H, Tq, Tmax, D, q.dtype, sm_count=kdecode.sm_count(q.device)) == plan
    monkeypatch.undo()
    assert_matches(out, q, k, v, seqlens([40, 9], device))
    assert ref.shape == out.shape


# ---------------------------------------------------------------- PyTorch path

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq", [1, 5])
def test_torch_path_matches_reference(torch_backend, device, dtype, Tq):
    B, H, Tmax, D = 3, 2, 30, 80
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, device, seed=20 + Tq)
    lens = seqlens([Tmax, Tq, 13], device)
    assert_matches(ops.decode_attention(q, k, v, lens), q, k, v, lens)


def test_torch_path_empty_rows_and_clamping(torch_backend, device):
    B, H, Tq, Tmax, D = 3, 2, 3, 40, 16
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, device, seed=12)
    lens = seqlens([0, 1, 60], device)
    out = ops.decode_attention(q, k, v, lens, validate=False)
    assert (out[0] == 0).all() and (out[1, :, :2] == 0).all()
    torch.testing.assert_close(out.double(), reference(q, k, v, lens, 1 / math.sqrt(D)), atol=2e-5, rtol=0)


@pytest.mark.parametrize("values,Tq", [([17, 17, 17], 1), ([17, 17, 17], 4), ([30, 5, 12], 1), ([0, 0, 0], 2),
                                       ([3, 0, 9], 3)])
def test_torch_path_on_cpu_reads_only_the_filled_cache(torch_backend, values, Tq):
    # On CPU the PyTorch path attends over the first max(cache_seqlens) keys only (and with no mask at all when
    # Tq == 1 and every row has the same length): keys past every row's length are NaN here and must not matter.
    B, H, Tmax, D = 3, 2, 30, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, "cpu", seed=31 + Tq)
    hi = max(values)
    k[:, :, hi:] = float("nan")
    v[:, :, hi:] = float("nan")
    lens = seqlens(values, "cpu")
    out = ops.decode_attention(q, k, v, lens, validate=False)
    ref = reference(q, k.nan_to_num(0.0), v.nan_to_num(0.0), lens, 1 / math.sqrt(D))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_grad_goes_to_torch_and_stays_finite(device):
    # Inputs that require grad run the differentiable PyTorch path; empty rows must not poison the gradients.
    B, H, Tq, Tmax, D = 2, 2, 3, 20, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float64, device, seed=13)
    q.requires_grad_(True)
    k.requires_grad_(True)
    lens = seqlens([1, 17], device)
    out = ops.decode_attention(q, k, v, lens, validate=False)
    assert out.grad_fn is not None
    torch.testing.assert_close(out.detach(), reference(q, k, v, lens, 1 / math.sqrt(D)))
    out.square().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert (q.grad[0, :, :2] == 0).all() and (q.grad[1] != 0).any()
    assert (k.grad[1, :, 17:] == 0).all()  # keys past cache_seqlens get no gradient


def test_float64_and_other_head_dims_use_torch(device, monkeypatch):
    monkeypatch.setenv("ENGINE_BACKEND", "auto")
    q, k, v = make_inputs(2, 1, 2, 9, 24, torch.float32, device, seed=14)  # D=24: no kernel build
    lens = seqlens([9, 4], device)
    assert_matches(ops.decode_attention(q, k, v, lens), q, k, v, lens)


# ---------------------------------------------------------------- argument checks

@pytest.mark.parametrize("bad_len", [41, 2])
def test_lengths_validated_on_cpu(device, bad_len):
    B, H, Tq, Tmax, D = 2, 1, 3, 40, 16
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, device)
    lens = seqlens([Tmax, bad_len], device)
    if device == "cpu":  # default: validated where it costs no device sync
        with pytest.raises(ValueError, match=r"cache_seqlens values must lie in \[Tq, Tmax\] = \[3, 40\]"):
            ops.decode_attention(q, k, v, lens)
    with pytest.raises(ValueError, match="cache_seqlens values"):
        ops.decode_attention(q, k, v, lens, validate=True)


def _bad_cases():
    def base(**over):
        q = torch.randn(2, 3, 2, 16)
        k = torch.randn(2, 3, 10, 16)
        v = torch.randn(2, 3, 10, 16)
        args = dict(q=q, k_cache=k, v_cache=v, cache_seqlens=torch.tensor([10, 5], dtype=torch.int32))
        args.update(over)
        return args

    return [
        ("q not a tensor", lambda: base(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
        ("q integer", lambda: base(q=torch.ones(2, 3, 2, 16, dtype=torch.int64)), TypeError, "q must be a floating"),
        ("q 3-D", lambda: base(q=torch.randn(2, 3, 16)), ValueError, r"q must be 4-D \(B, H, Tq, D\); got 3-D"),
        ("k 5-D", lambda: base(k_cache=torch.randn(2, 3, 10, 16, 1)), ValueError, "k_cache must be 4-D"),
        ("v dtype", lambda: base(v_cache=torch.randn(2, 3, 10, 16, dtype=torch.float16)), TypeError,
         "same dtype.*v_cache torch.float16"),
        ("batch", lambda: base(k_cache=torch.randn(3, 3, 10, 16)), ValueError, "k_cache batch size must match q's 2"),
        ("heads", lambda: base(v_cache=torch.randn(2, 4, 10, 16)), ValueError, "v_cache head count must match q's 3"),
        ("head dim", lambda: base(k_cache=torch.randn(2, 3, 10, 8)), ValueError, "k_cache head dim must match q's 16"),
        ("v Tmax", lambda: base(v_cache=torch.randn(2, 3, 11, 16)), ValueError, "v_cache must have the same Tmax"),
        ("Tq > Tmax", lambda: base(q=torch.randn(2, 3, 11, 16)), ValueError, "Tq=11 new tokens.*Tmax=10"),
        ("Tq = 0", lambda: base(q=torch.randn(2, 3, 0, 16)), ValueError, r"at least one new token"),
        ("lens int64", lambda: base(cache_seqlens=torch.tensor([10, 5])), TypeError,
         "cache_seqlens must be an int32 tensor; got torch.int64"),
        ("lens shape", lambda: base(cache_seqlens=torch.tensor([[10], [5]], dtype=torch.int32)), ValueError,
         r"cache_seqlens must have shape \(2,\)"),
        ("lens list", lambda: base(cache_seqlens=[10, 5]), TypeError, "cache_seqlens must be a torch.Tensor"),
        ("lens device", lambda: base(cache_seqlens=torch.empty(2, dtype=torch.int32, device="meta")), ValueError,
         "same device.*cache_seqlens on meta"),
        ("scale str", lambda: dict(base(), scale="0.1"), TypeError, "scale must be a real number"),
        ("scale nan", lambda: dict(base(), scale=float("nan")), ValueError, "scale must be finite"),
    ]


@pytest.mark.parametrize("name,make,exc,match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs(name, make, exc, match):
    with pytest.raises(exc, match=match):
        ops.decode_attention(**make())


# ---------------------------------------------------------------- launch plan and build list

def test_plan_fills_the_gpu_from_static_sizes():
    p = kdecode.plan_decode(1, 12, 1, 16384, 64, torch.bfloat16, sm_count=132)
    assert 12 * p.num_splits >= 132, p  # batch 1 with a 16k cache still covers every SM
    assert p.num_splits <= kdecode.MAX_SPLITS
    assert kdecode.plan_decode(64, 12, 1, 16384, 64, torch.bfloat16, sm_count=132).num_splits == 1
    assert kdecode.plan_decode(1, 12, 1, 100, 64, torch.bfloat16, sm_count=132).num_splits == 1
    assert kdecode.plan_decode(1, 1, 1, 10**6, 64, torch.float16, sm_count=132).num_splits <= kdecode.MAX_SPLITS
    assert kdecode.plan_decode(16, 12, 1, 4096, 64, torch.bfloat16, sm_count=132).num_splits > 1
    with pytest.raises(ValueError, match="num_splits must be in 1 .. 1024"):
        kdecode.plan_decode(1, 1, 1, 10, 64, torch.float16, sm_count=132, num_splits=0)


def test_plan_rules_at_their_boundaries():
    # bf16 / D=64 keeps 6 programs per SM, fp16 / D=16 8 (the shared-memory rule): each case sits exactly on a rule's
    # boundary. A grid at exactly 80% of one wave takes no split (24 programs, 5 SMs x 6).
    assert kdecode.plan_decode(2, 12, 1, 4096, 64, torch.bfloat16, sm_count=5).num_splits == 1
    # every query block is a program: 16 heads x 3 blocks of 48 new tokens fill 80% of 10 SMs x 6 (1 token: 7 splits)
    assert kdecode.plan_decode(1, 16, 48, 4096, 64, torch.bfloat16, sm_count=10).num_splits == 1
    # the most splits (14 tiles // 2 = 7) filling exactly one wave (6 x 7 = 42 = 7 SMs x 6) are all taken
    assert kdecode.plan_decode(1, 6, 1, 896, 64, torch.bfloat16, sm_count=7).num_splits == 7
    # the fewest splits within 85% of the best efficiency, equality included: 17 programs on a wave of 40 are 85%
    # efficient with 2 splits (the best, 100%, needs 40)
    assert kdecode.plan_decode(1, 17, 1, 5120, 16, torch.float16, sm_count=5).num_splits == 2
    # every split count up to the most (32 tiles // 2 = 16) competes: 4 programs on a wave of 30 are 100% efficient
    # with 15 splits, so 7 (93%) is the fewest within 85% (6, at 80%, would be if 15 were left out)
    assert kdecode.plan_decode(1, 4, 1, 2048, 64, torch.bfloat16, sm_count=5).num_splits == 7
    # no split count fills whole waves: 4 programs on a wave of 18, at most 5 splits (10 tiles); 4 (89%) is the best
    assert kdecode.plan_decode(1, 4, 1, 640, 64, torch.bfloat16, sm_count=3).num_splits == 4
    assert kdecode.plan_decode(1, 1, 1, 10, 64, torch.float16, sm_count=132, num_splits=1024).num_splits == 1024
    with pytest.raises(ValueError, match="num_splits must be in 1 .. 1024"):
        kdecode.plan_decode(1, 1, 1, 10, 64, torch.float16, sm_count=132, num_splits=1025)


def test_launcher_refuses_an_out_of_another_shape_or_dtype():
    q, k, v = make_inputs(1, 1, 1, 8, 16, torch.float32, "cpu")
    for bad in (torch.empty(1, 1, 2, 16), torch.empty(1, 1, 1, 16, dtype=torch.float16)):
        with pytest.raises(ValueError, match=r"out must be \(1, 1, 1, 16\) torch.float32 on cpu"):
            kdecode.decode_attention_fwd(q, k, v, seqlens([8], "cpu"), scale=0.25, out=bad)


def test_launcher_checks_the_workspace_and_upcasts_only_bf16_on_the_cpu(monkeypatch):
    q, k, v = make_inputs(1, 1, 1, 8, 16, torch.float32, "cpu")
    good = (torch.empty(1, 1, 1, 2, 16), torch.empty(1, 1, 1, 2))
    for i, bad in ((0, torch.empty(1, 1, 1, 3, 16)), (1, torch.empty(1, 1, 1, 2, dtype=torch.float64))):
        ws = tuple(bad if j == i else t for j, t in enumerate(good))
        with pytest.raises(ValueError, match=rf"workspace\[{i}\] must be a contiguous float32 tensor"):
            kdecode.decode_attention_fwd(q, k, v, seqlens([8], "cpu"), scale=0.25, num_splits=2, workspace=ws)
    calls = []
    monkeypatch.setattr(kdecode, "launch", lambda kernel, grid, *args, **kw: calls.append(kw.get("DOT_UPCAST")))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        kdecode.decode_attention_fwd(q.to(dtype), k.to(dtype), v.to(dtype), seqlens([8], "cpu"), scale=0.25)
    assert calls == [False, False, True]  # the interpreter multiplies bf16 bit patterns (see kdecode._dot)


def test_sm_count_asks_the_tensors_device(monkeypatch):
    # (no CUDA needed: the per-index query is replaced) an indexed device is asked by its index, a bare "cuda" by
    # the current device, and the CPU (the interpreter) stands in for an H200
    monkeypatch.setattr(kdecode, "_sm_count", lambda index: 100 + index)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert kdecode.sm_count(torch.device("cuda", 1)) == 101
    assert kdecode.sm_count(torch.device("cuda")) == 103
    assert kdecode.sm_count(torch.device("cpu")) == 132


def test_kernel_config_and_dot_precision_rules():
    # K/V tiles of at most 16 KiB, BLOCK_N in 16 .. 64; fp32 dots as three TF32 products up to BLOCK_D = 128 and
    # full-precision FMA at 256 (where the TF32 split spills); 16-bit dots ignore the precision ("tf32").
    assert not torch.backends.cuda.matmul.allow_tf32  # the default: fp32 keeps fp32 accuracy
    for dtype, elem in ((torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)):
        for D in kdecode.HEAD_DIMS:
            block_d, block_n, warps, stages = kdecode._kernel_config(D, dtype)
            assert block_d == max(16, 1 << (D - 1).bit_length())
            assert block_n == max(16, min(64, 16384 // (block_d * elem)))
            assert (warps, stages) == (4, 3 if block_n * block_d * elem <= 8192 else 2)
            want = "tf32" if elem == 2 else ("ieee" if block_d > 128 else "tf32x3")
            assert kdecode.dot_precision(dtype, block_d) == want, (dtype, D)
    assert kdecode._kernel_config(256, torch.float32) == (256, 16, 4, 2)
    assert kdecode._kernel_config(64, torch.bfloat16) == (64, 64, 4, 3)
    assert kdecode._kernel_config(128, torch.bfloat16) == (128, 64, 4, 2)


def test_aot_specs_cover_every_launch_configuration():
    assert KERNEL_HEAD_DIMS == kdecode.HEAD_DIMS
    built = {(la.fn_name, tuple(sorted((k, v) for k, v in la.kwargs.items() if k.isupper())), la.num_warps,
              la.num_stages) for la in kspecs.decode_specs()}
    for dtype in DTYPES:
        for D in KERNEL_HEAD_DIMS:
            for B, T in ((1, 16384), (64, 4096), (2, 30)):
                p = kdecode.plan_decode(B, 12, 1, T, D, dtype, sm_count=132)
                consts = {"HEAD_DIM": D, "BLOCK_D": p.block_d, "BLOCK_M": kdecode.BLOCK_M, "BLOCK_N": p.block_n,
                          "DOT_UPCAST": False, "DOT_PRECISION": kdecode.dot_precision(dtype, p.block_d)}
                key = ("_decode_split_kernel", tuple(sorted(consts.items())), p.num_warps, p.num_stages)
                assert key in built, key
                consts = {"HEAD_DIM": D, "BLOCK_D": p.block_d, "BLOCK_S": kdecode._combine_block_s(p.block_d)}
                key = ("_decode_combine_kernel", tuple(sorted(consts.items())), kdecode._COMBINE_WARPS, 3)
                assert key in built, key


# ---------------------------------------------------------------- CUDA, real sizes

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,Tq", [(64, 1), (128, 4), (80, 1), (256, 16)])
def test_gpu_real_sizes(triton_backend, dtype, D, Tq):
    B, H, Tmax = 4, 12, 4096  # fp32: three TF32 products per dot (one TF32 product would miss the floor ~100x)
    q, k, v = make_inputs(B, H, Tq, Tmax, D, dtype, "cuda", seed=D + Tq)
    lens = seqlens([Tmax, Tq, 2500, 1023], "cuda")
    assert_matches(ops.decode_attention(q, k, v, lens), q, k, v, lens)
    out, _ = run_kernel(q, k, v, lens)
    assert_matches(out, q, k, v, lens)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_gpu_batch1_long_cache_splits(triton_backend, layout):
    B, H, Tq, Tmax, D = 1, 12, 1, 16384, 64
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.bfloat16, "cuda", layout=layout, seed=1)
    for n in (Tmax, 9001, 1):
        lens = seqlens([n], "cuda")
        out, splits = run_kernel(q, k, v, lens)
        assert splits * H >= 132
        assert_matches(out, q, k, v, lens)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_follows_new_lengths(triton_backend):
    B, H, Tq, Tmax, D = 2, 12, 1, 4096, 64
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.bfloat16, "cuda", seed=2)
    lens = seqlens([4096, 700], "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile + warm up outside capture
        ops.decode_attention(q, k, v, lens)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.decode_attention(q, k, v, lens)
    for new_lens, seed in (([1, 4000], 3), ([2048, 4096], 4)):
        lens.copy_(seqlens(new_lens, "cuda"))
        q.copy_(make_inputs(B, H, Tq, Tmax, D, torch.bfloat16, "cuda", seed=seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(static_out, q, k, v, lens)


# ---------------------------------------------------------------- numerical extremes, 64-bit offsets (issue 19)

@pytest.mark.parametrize("hot", [0, 1, 2])  # the split whose scores dominate: first, middle, last of the combine
def test_combine_when_one_split_dominates_by_hundreds_of_log_units(triton_backend, device, hot):
    # fp32, D=32: BLOCK_N = 64, so 150 keys in 3 splits are [0, 64), [64, 128), [128, 150). The keys of split `hot`
    # score ~300 above every other key: the other splits' weights underflow to exactly 0 in the combine, which must
    # rescale what it merged before (hot > 0) and not let the small splits leak in (hot < 2). A row whose hot split
    # lies after its causal limit sees only the ordinary keys.
    B, H, Tq, Tmax, D = 2, 1, 2, 150, 32
    q, k, v = make_inputs(B, H, Tq, Tmax, D, torch.float32, device, seed=40 + hot)
    u = q[:, :, -1:] / q[:, :, -1:].norm(dim=-1, keepdim=True)  # (B, H, 1, D)
    lo, hi = (0, 64, 128)[hot], (64, 128, 150)[hot]
    k[:, :, lo:hi] = k[:, :, lo:hi] * 0.1 + 30 * u  # q . k ~ 30 |q| ~ 170; with scale 2: ~340 above the rest
    lens = seqlens([Tmax, hi if hot < 2 else Tmax], device)
    out, splits = run_kernel(q, k, v, lens, num_splits=3, scale=2.0)
    assert splits == 3
    ref = reference(q, k, v, lens, 2.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    tail = seqlens([Tmax - 1, Tmax], device)  # the same through the op (planned launch)
    torch.testing.assert_close(ops.decode_attention(q, k, v, tail, scale=2.0).double(),
                               reference(q, k, v, tail, 2.0), atol=1e-4, rtol=1e-4)


def test_batch_offsets_past_2_31_elements(triton_backend, device):
    # K/V caches of 3 sequences, 2**30 + 64 elements apart (a stride that fits in int32): sequence 2 starts past
    # 2**31 elements, so b * stride must be 64-bit. K and V share one buffer (interleaved rows), fp16.
    from ops_util import TWO_31, strided_view

    B, H, Tq, Tmax, D = 3, 2, 2, 40, 32
    sb = TWO_31 // 2 + 64
    k = strided_view((B, H, Tmax, D), (sb, D, 2 * H * D, 1), torch.float16, device, seed=1)
    v = strided_view((B, H, Tmax, D), (sb, D, 2 * H * D, 1), torch.float16, device, seed=2, offset=H * D, buffer=k)
    assert 2 * k.stride(0) >= TWO_31 and k.stride(0) < TWO_31
    q = make_inputs(B, H, Tq, Tmax, D, torch.float16, device, seed=3)[0]
    lens = seqlens([Tmax, 17, 33], device)
    for num_splits in (None, 2):
        out, _ = run_kernel(q, k, v, lens, num_splits=num_splits)
        assert_matches(out, q, k, v, lens)


@pytest.mark.parametrize("num_splits", [None, 2])
def test_head_dim_padding_is_never_read(triton_backend, device, num_splits):
    # D=80 rows in 128-wide rows whose tail is NaN: every load of the padded head dim must be masked.
    from ops_util import nan_padded

    q, k, v = (nan_padded(t, 128) for t in make_inputs(2, 2, 2, 70, 80, torch.float32, device, seed=16))
    lens = seqlens([70, 33], device)
    out, _ = run_kernel(q, k, v, lens, num_splits=num_splits)
    assert_matches(out, q, k, v, lens)
