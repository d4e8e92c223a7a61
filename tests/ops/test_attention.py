"""ops.scaled_dot_product_attention: the flash kernel (interpreter on CPU) against a float64 reference.

Covers causal and bidirectional, Nq != Nk, N in {1, 77, 130}, every head dim (small N for the big ones), fp16 /
bf16 / fp32, boolean and additive masks (4-D, key-padding, 2-D, rows of one key, fully masked rows), poisoned
outputs, transposed-view inputs, the PyTorch fallback's agreement with the kernel, and every bad input.
Under the interpreter the kernel uses INTERPRETER_CONFIG (BLOCK_M=32, BLOCK_N=16), so N=77 and 130 cross
several tiles and the causal diagonal; explicit configurations exercise BLOCK_M < BLOCK_N and BLOCK_M == BLOCK_N.
"""
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ops
from engine.kernels import aot
from engine.kernels.attention import common as kcommon
from engine.kernels.attention import fwd as kattn

# (atol, rtol) vs the float64 reference; for fp16 / bf16 also "at most 2x torch's own error + FLOOR".
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (2e-4, 2e-4), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}
FLOOR = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def reference(q, k, v, mask=None, causal=False, scale=None):
    """float64 attention; rows that see no key are zeros. Top-left causal, combined with the mask by AND. Autograd
    through it is defined (tests/ops/test_attention_bwd.py): rows that see no key have zero gradients."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    keep = torch.ones(s.shape[-2:], dtype=torch.bool)
    if causal:
        keep = keep.tril()
    if mask is not None and mask.dtype == torch.bool:
        keep = keep & mask
    elif mask is not None:
        s = s + mask.double()
    s = s.masked_fill(~keep, float("-inf"))
    dead = (s == float("-inf")).all(-1, keepdim=True)  # softmax of such a row would be NaN, in value and gradient
    return torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0) @ v


def qkv(b, h, n_q, n_k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: torch.randn(b, h, n, d, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return mk(n_q), mk(n_k), mk(n_k)


def check(out, q, k, v, mask=None, causal=False, scale=None):
    """out vs float64; for fp16 / bf16 also vs torch's same-dtype SDPA error (computed without fully-masked rows)."""
    ref = reference(q.cpu(), k.cpu(), v.cpu(), mask if mask is None else mask.cpu(), causal, scale)
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    atol, rtol = TOL[q.dtype]
    torch.testing.assert_close(out.cpu().double(), ref, atol=atol, rtol=rtol)
    if q.dtype in (torch.float16, torch.bfloat16):
        m = mask
        if causal:
            tri = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            m = tri if m is None else (m & tri if m.dtype == torch.bool else m.masked_fill(~tri, float("-inf")))
        if m is not None and m.dtype != torch.bool:  # torch wants the query dtype; keep finite values finite
            m = torch.where(m == float("-inf"), m, m.clamp(min=torch.finfo(q.dtype).min)).to(q.dtype)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale).cpu().double()
        theirs = theirs.nan_to_num(0.0)
        ok = ref.abs().sum(-1, keepdim=True) > 0  # compare where torch's row is defined
        ours_err = ((out.cpu().double() - ref).abs() * ok).max().item()
        torch_err = ((theirs - ref).abs() * ok).max().item()
        assert ours_err <= 2 * torch_err + FLOOR[q.dtype], (ours_err, torch_err)


CASES = [  # (n_q, n_k, head_dim, causal, dtype)
    (77, 77, 64, True, torch.float16),
    (77, 77, 64, False, torch.bfloat16),
    (130, 130, 32, True, torch.float32),
    (130, 130, 16, False, torch.float16),
    (1, 1, 64, True, torch.bfloat16),
    (1, 1, 16, False, torch.float32),
    (40, 77, 32, True, torch.float16),   # Nq < Nk, top-left causal
    (77, 40, 64, True, torch.float32),   # Nq > Nk
    (1, 130, 32, False, torch.bfloat16),  # decode-shaped
    (33, 33, 80, True, torch.bfloat16),
    (20, 23, 96, False, torch.float16),
    (17, 17, 128, True, torch.float32),
    (17, 19, 128, False, torch.bfloat16),
    (9, 11, 256, True, torch.float16),
    (9, 9, 256, False, torch.float32),
]


@pytest.mark.parametrize("n_q,n_k,d,causal,dtype", CASES)
def test_sdpa_matches_float64(triton_backend, device, n_q, n_k, d, causal, dtype):
    q, k, v = qkv(1, 2, n_q, n_k, d, dtype, device, seed=n_q + d)
    out = ops.scaled_dot_product_attention(q, k, v, is_causal=causal)
    check(out, q, k, v, causal=causal)


def _masks(kind, b, h, n_q, n_k, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "bool4d":
        m = torch.rand(b, h, n_q, n_k, generator=g) > 0.4
        m[0, 0, 3] = False  # a row that sees nothing -> zeros
        m[0, 1, 5] = False
        m[0, 1, 5, n_k - 1] = True  # a row of exactly one key (the last, in the ragged tile)
        m[-1, -1, 7] = True  # a full row
    elif kind == "additive4d":
        m = torch.randn(b, 1, n_q, n_k, generator=g) * 2
        m[..., 2, :] = float("-inf")  # fully masked -> zeros
        m[..., 4, :] = torch.finfo(torch.float32).min  # finite: averages all keys, as in PyTorch
        m[..., 6, : n_k // 2] = float("-inf")
    elif kind == "bool_keypad":
        m = torch.ones(b, 1, 1, n_k, dtype=torch.bool)
        m[0, ..., n_k - 9:] = False
        m[-1, ..., :1] = False
    elif kind == "additive_keypad":
        m = torch.zeros(b, 1, 1, n_k)
        m[0, ..., n_k - 9:] = torch.finfo(torch.float32).min  # how Hugging Face pads
        m[-1, ..., 3] = float("-inf")
        m = m + torch.randn(b, 1, 1, n_k, generator=g) * 0.1
    elif kind == "bool2d":
        m = torch.rand(n_q, n_k, generator=g) > 0.5
        m[:, 0] = True
    else:
        raise AssertionError(kind)
    return m.to(device)


@pytest.mark.parametrize("kind,causal,dtype", [
    ("bool4d", False, torch.float32),
    ("bool4d", True, torch.bfloat16),
    ("additive4d", False, torch.float16),
    ("additive4d", True, torch.float32),
    ("bool_keypad", False, torch.float16),
    ("additive_keypad", False, torch.bfloat16),
    ("additive_keypad", True, torch.float32),
    ("bool2d", False, torch.float32),
])
def test_sdpa_masks(triton_backend, device, kind, causal, dtype):
    b, h, n_q, n_k, d = 2, 2, 37, 45, 32
    q, k, v = qkv(b, h, n_q, n_k, d, dtype, device, seed=3)
    mask = _masks(kind, b, h, n_q, n_k, device)
    if mask.dtype != torch.bool and dtype != torch.float32 and kind == "additive4d":
        mask = mask.to(dtype)  # a mask in the query's dtype, as Hugging Face builds it
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3)
    check(out, q, k, v, mask=mask, causal=causal, scale=0.3)
    if kind == "bool4d":
        assert (out[0, 0, 3] == 0).all()
    if kind == "additive4d":
        assert (out[:, :, 2] == 0).all()


@pytest.mark.parametrize("config", [(16, 32, 4, 1), (16, 16, 4, 1), (64, 16, 4, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_writes_every_output_element(device, config, causal):
    """Poisoned output, explicit tile shapes (BLOCK_M <, ==, > BLOCK_N), a key-padding mask on the causal path."""
    n_q, n_k, d = 50, 61, 80
    q, k, v = qkv(2, 1, n_q, n_k, d, torch.float32, device, seed=5)
    mask = _masks("bool_keypad", 2, 1, n_q, n_k, device) if causal else None
    out = torch.full_like(q, float("nan"))
    expanded = None if mask is None else mask.expand(2, 1, n_q, n_k)
    kattn.attention_fwd(q, k, v, out, mask=expanded, causal=causal, scale=d ** -0.5, config=config)
    check(out, q, k, v, mask=mask, causal=causal)


def test_transposed_views_are_read_in_place(triton_backend, device):
    """(B, N, H, D) tensors viewed as (B, H, N, D), and a slice of a packed qkv: no copies, right answers."""
    b, n, h, d = 2, 45, 3, 32
    qkv_packed = torch.randn(b, n, 3, h, d, device=device, dtype=torch.float16)
    q, k, v = (qkv_packed[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = ops.scaled_dot_product_attention(q, k, v, is_causal=True)
    check(out, q, k, v, causal=True)
    q2 = torch.randn(b, n, h, d, device=device).transpose(1, 2)
    out2 = ops.scaled_dot_product_attention(q2, q2, q2)
    assert out2.transpose(1, 2).is_contiguous()  # output stored like the query: (B, N, H, D)
    check(out2, q2, q2, q2)


@pytest.mark.parametrize("kind", ["bool4d", "additive4d", "bool_keypad"])
def test_torch_path_agrees_with_kernel(monkeypatch, device, kind):
    """Both backends give zeros for rows with no visible key, and agree elsewhere."""
    b, h, n_q, n_k, d = 2, 2, 37, 45, 16
    q, k, v = qkv(b, h, n_q, n_k, d, torch.float32, device, seed=7)
    mask = _masks(kind, b, h, n_q, n_k, device)
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    ref_path = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    kern = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(ref_path, kern, atol=2e-5, rtol=2e-5)
    check(ref_path, q, k, v, mask=mask, causal=True)


@pytest.mark.parametrize("torch_zeroes", [True, False])
@pytest.mark.parametrize("kind", ["bool4d", "additive4d"])
def test_torch_path_rows_that_see_no_key(monkeypatch, torch_backend, kind, torch_zeroes):
    """The PyTorch path zeroes rows that see no key, through PyTorch's own kernels where the probe found they do so
    (the CPU with torch 2.13) and through engine's explicit fix otherwise; both agree with float64, with grad too."""
    from engine.ops import attention as attention_ops

    assert attention_ops.cpu_sdpa_zeroes_dead_rows() is True  # torch 2.13's CPU kernels (CI's torch)
    if not torch_zeroes:
        monkeypatch.setattr(attention_ops, "cpu_sdpa_zeroes_dead_rows", lambda: False)
    q, k, v = qkv(2, 2, 13, 11, 16, torch.float32, "cpu", seed=3)
    mask = _masks(kind, 2, 2, 13, 11, "cpu")
    q.requires_grad_(True)
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    check(out.detach(), q.detach(), k, v, mask=mask)
    out.sum().backward()
    ref_q = q.detach().double().requires_grad_(True)
    reference(ref_q, k, v, mask).sum().backward()
    rows = torch.ones(13, dtype=torch.bool)
    if kind == "additive4d":  # row 4 is float32's min everywhere: torch's CPU backward recomputes its probabilities
        rows[4] = False       # from a log-sum-exp that rounds log(Nk) away at that magnitude (not engine's code)
    torch.testing.assert_close(q.grad.double()[:, :, rows], ref_q.grad[:, :, rows], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_path_narrows_float32_masks_like_the_kernel(torch_backend, device, dtype, causal):
    # A float32 additive mask with 16-bit queries on the PyTorch path (an option combination): float32's min must
    # stay a huge finite value (that row averages every key, as in PyTorch and the kernel), -inf stays -inf (zeros).
    b, h, n_q, n_k, d = 2, 2, 37, 45, 16
    q, k, v = qkv(b, h, n_q, n_k, d, dtype, device, seed=14)
    mask = _masks("additive4d", b, h, n_q, n_k, device)
    assert mask.dtype == torch.float32
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    check(out, q, k, v, mask=mask, causal=causal)
    assert (out[:, :, 2] == 0).all() and (out[:, :, 4] != 0).any()


def test_fallbacks_keep_torch_semantics(triton_backend, device):
    """float64, dropout > 0 and a value head dim != D run PyTorch, even with ENGINE_BACKEND=triton."""
    q, k, v = qkv(1, 2, 13, 17, 16, torch.float64, device, seed=9)
    check(ops.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, causal=True)
    v24 = torch.randn(1, 2, 17, 24, dtype=torch.float64, device=device)
    check(ops.scaled_dot_product_attention(q, k, v24), q, k, v24)
    torch.manual_seed(0)
    a = ops.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(0)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    torch.testing.assert_close(a, b)


@pytest.fixture
def tf32_setting():
    """Restores torch.backends.cuda.matmul.allow_tf32 (a property-like setting monkeypatch cannot patch)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("allow", [False, True])
def test_fp32_precision_follows_allow_tf32(tf32_setting, allow):
    torch.backends.cuda.matmul.allow_tf32 = allow
    assert kattn.precision(torch.float32) == ("tf32" if allow else "tf32x3")
    assert kattn.precision(torch.bfloat16) == "tf32"  # ignored by tl.dot for 16-bit inputs


def test_autotune_pruning_fits_and_shortens():
    cfgs = kattn._configs(128)
    for elem in (2, 4):
        kept = kattn.prune_configs(cfgs, block_d=128, elem=elem, bucket=16384, smem_limit=aot.H200_MAX_SHARED_BYTES)
        assert kept and all(kattn.smem_estimate(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, 128, elem)
                            <= aot.H200_MAX_SHARED_BYTES for c in kept)
    short = kattn.prune_configs(cfgs, block_d=128, elem=2, bucket=64, smem_limit=aot.H200_MAX_SHARED_BYTES)
    assert short and all(c.kwargs["BLOCK_M"] <= 64 for c in short)


def test_autotune_pruning_edges_and_buckets(monkeypatch):
    # A configuration that needs exactly the limit fits; nothing fitting keeps the last (smallest) entry alone;
    # BLOCK_M equal to the bucket stays; no BLOCK_M within the bucket keeps the last fitting entry alone.
    def shapes(cs):
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in cs]

    cfgs = kattn._configs(64)  # (128, 128, 8, 3), (128, 64, 4, 3)
    need = kattn.smem_estimate(128, 128, 3, 64, 2)
    assert shapes(kattn.prune_configs(cfgs, block_d=64, elem=2, bucket=128, smem_limit=need)) == kattn.CONFIGS[64]
    assert shapes(kattn.prune_configs(cfgs, block_d=64, elem=2, bucket=128, smem_limit=0)) == kattn.CONFIGS[64][-1:]
    assert shapes(kattn.prune_configs(cfgs, block_d=64, elem=2, bucket=64, smem_limit=need)) == kattn.CONFIGS[64][-1:]
    # the pruning hook stages a per-row mask tile (only a mask that is one, and a bias) like the pruning it calls
    monkeypatch.setattr(kattn, "_device_smem", lambda index: aot.H200_MAX_SHARED_BYTES)
    q = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16)
    cfgs = kattn._configs(128)
    per_row, plain = (shapes(kattn.prune_configs(cfgs, block_d=128, elem=2, bucket=16384,
                                                 smem_limit=aot.H200_MAX_SHARED_BYTES, mask_per_row=r))
                      for r in (True, False))
    hook = [shapes(kattn._early_prune(cfgs, {"Q": q}, BLOCK_D=128, N_BUCKET=16384, MASK_KIND=kind, MASK_PER_ROW=True))
            for kind in (1, 0)]
    assert hook == [per_row, plain] and len(plain) > len(per_row)
    # the autotuner's sequence-length key: the power of two at or above the (max) query length, in 64 .. 16384
    assert [kattn.seqlen_bucket(n) for n in (0, 1, 64, 65, 1000, 16384, 10**6)] == [64, 64, 64, 128, 1024, 16384,
                                                                                    16384]


@settings(max_examples=8, deadline=None, database=None)
@given(n_q=st.integers(1, 70), n_k=st.integers(1, 70), d=st.sampled_from([8, 24, 40, 72]), causal=st.booleans(),
       mask=st.sampled_from([None, "bool", "additive"]), seed=st.integers(0, 2**31 - 1))
def test_random_shapes(n_q, n_k, d, causal, mask, seed):
    """Random lengths, odd head dims and masks through the kernel (hypothesis: no fixtures; force Triton here)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = qkv(1, 2, n_q, n_k, d, torch.float32, device, seed=seed)
    g = torch.Generator().manual_seed(seed)
    m = None
    if mask == "bool":
        m = (torch.rand(1, 2, n_q, n_k, generator=g) > 0.3).to(device)
    elif mask == "additive":
        m = (torch.randn(1, 1, 1, n_k, generator=g) * 3).to(device)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "triton")
        out = ops.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    check(out, q, k, v, mask=m, causal=causal)


def test_autotuned_launch_path(monkeypatch, device):
    """The launcher's autotuned branch (grid from the chosen config, pruning hook): head dim 16 keeps a single
    configuration, so the autotuner runs it without timing; the interpreter runs it like any kernel."""
    if device == "cpu":
        monkeypatch.setattr(kattn, "interpreting", lambda: False)
        monkeypatch.setattr(kattn, "_device_smem", lambda index: aot.H200_MAX_SHARED_BYTES)
    q, k, v = qkv(1, 2, 70, 70, 16, torch.float16, device, seed=11)
    out = torch.full_like(q, float("nan"))
    kattn.attention_fwd(q, k, v, out, mask=None, causal=True, scale=0.25)
    check(out, q, k, v, causal=True, scale=0.25)


def test_launcher_configuration_choices(monkeypatch):
    # What each call launches (recorded, not run): the interpreter's tile under the interpreter (its bf16 dots in
    # fp32, fp16 and fp32 as they are); on a GPU fp32 its fixed tile, 16-bit dropout its own, other 16-bit calls
    # the autotuner; an explicit configuration and an explicit K/V path always win; a bias refuses key tiles wider
    # than the shifted table's padding (only a bias does).
    calls = []
    monkeypatch.setattr(kattn, "launch", lambda kernel, grid, *args, **kw: calls.append((kernel, grid, kw)))

    def run(dtype, interp, bias=None, **kwargs):
        monkeypatch.setattr(kattn, "interpreting", lambda: interp)
        q, k, v = qkv(1, 2, 70, 70, 64, dtype, "cpu")
        calls.clear()
        kattn.attention_fwd(q, k, v, torch.empty_like(q), mask=None, causal=False, scale=0.125,
                            relative_position_bias=bias, **kwargs)
        (kernel, grid, kw), = calls
        tile = (kw["BLOCK_M"], kw["BLOCK_N"], kw["num_warps"], kw["num_stages"]) if "BLOCK_M" in kw else None
        return kernel, tile, kw

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        kernel, tile, kw = run(dtype, True)
        assert kernel is kattn._attn_fwd_kernel and tile == kattn.INTERPRETER_CONFIG
        assert kw.get("DOT_UPCAST", False) is (dtype == torch.bfloat16) and kw["KV_TMA"] is False
        assert run(dtype, True, config=(16, 16, 4, 1))[1] == (16, 16, 4, 1)
        assert run(dtype, False, config=(16, 16, 4, 1), dropout=(3, 0.1))[1] == (16, 16, 4, 1)
        assert run(dtype, True, kv_tma=True)[2]["KV_TMA"] is True
    assert run(torch.float32, False)[1] == kattn.FP32_CONFIGS[64]
    assert run(torch.float32, False, dropout=(3, 0.1))[1] == kattn.FP32_CONFIGS[64]
    assert run(torch.float16, False, dropout=(3, 0.1))[1] == kattn.DROPOUT_CONFIGS[64]
    kernel, tile, kw = run(torch.bfloat16, False)
    assert kernel is kattn._tuned_kernel(64) and tile is None and "DOT_UPCAST" not in kw
    wide = (32, 2 * kcommon.MAX_BLOCK_N, 4, 1)
    assert run(torch.float32, True, config=wide)[1] == wide
    table = torch.zeros(2, 2 * 70 - 1)
    assert run(torch.float32, True, bias=table, config=(32, kcommon.MAX_BLOCK_N, 4, 1))[2]["HAS_BIAS"] is True
    with pytest.raises(ValueError, match="a relative position bias needs BLOCK_N <= 128"):
        run(torch.float32, True, bias=table, config=wide)


def _tma_capable(device: str) -> bool:
    return device == "cpu" or torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.parametrize("d,causal,mask_kind,dtype", [
    (80, True, None, torch.float32),  # padded head dim: columns past D must read as zeros
    (32, False, "additive4d", torch.bfloat16),
    (64, True, "bool_keypad", torch.float16),
])
def test_tma_path(device, d, causal, mask_kind, dtype):
    """K/V tiles through tensor descriptors (Triton's interpreter on the CPU, TMA on a Hopper GPU): K and V as
    views of one packed (B, N, 2, H, D) buffer, keys past N read as zeros, poisoned output."""
    if not _tma_capable(device):
        pytest.skip("TMA needs compute capability >= 9")
    b, h, n_q, n_k = 2, 2, 37, 45
    g = torch.Generator().manual_seed(d)
    q = torch.randn(b, h, n_q, d, generator=g).to(device, dtype)
    kv = torch.randn(b, n_k, 2, h, d, generator=g).to(device, dtype)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    assert kcommon.tma_addressable(k) and kcommon.tma_addressable(v)
    mask = None if mask_kind is None else _masks(mask_kind, b, h, n_q, n_k, device)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(dtype)
    out = torch.full_like(q, float("nan"))
    expanded = None if mask is None else mask.expand(b, h, n_q, n_k)
    kattn.attention_fwd(q, k, v, out, mask=expanded, causal=causal, scale=d ** -0.5, config=(32, 16, 4, 1),
                        kv_tma=True)
    check(out, q, k, v, mask=mask, causal=causal)


def test_kv_path_choice():
    """TMA only where it can run: never on CPU tensors (the interpreter takes the pointer path by default), and
    only for tensors with 16-byte aligned strides and a unit last stride."""
    x = torch.randn(2, 3, 40, 32)
    assert not kcommon.use_kv_tma(x, x)
    assert kcommon.tma_addressable(x)
    assert kcommon.tma_addressable(x[:, :1])  # a size-1 dim's stride is never stepped along
    assert kcommon.tma_addressable(x[..., :30])  # D=30 of rows 128 bytes apart: the box zero-fills past D
    assert not kcommon.tma_addressable(torch.randn(2, 3, 40, 30))  # rows 120 bytes apart
    assert not kcommon.tma_addressable(x.transpose(-1, -2))  # D not contiguous
    assert not kcommon.tma_addressable(x[..., 1:17])  # base 4 bytes past 16-byte alignment
    assert kcommon.kv_block_shape(4, 64, 128) == [1, 1, 64, 128]
    assert kcommon.kv_block_shape(3, 64, 128) == [64, 1, 128]


def _bad_cases():
    q = torch.randn(1, 2, 5, 8)
    yield "query", (TypeError, "query must be a torch.Tensor"), lambda: ops.scaled_dot_product_attention(
        q.numpy(), q, q)
    yield "int", (TypeError, "query must be a floating"), lambda: ops.scaled_dot_product_attention(q.long(), q, q)
    yield "1d", (ValueError, r"key must have at least 2 dims"), lambda: ops.scaled_dot_product_attention(
        q, q[0, 0, 0], q)
    yield "dtype", (TypeError, "same dtype"), lambda: ops.scaled_dot_product_attention(q, q.half(), q)
    yield "batch", (ValueError, "batch/head dims must broadcast"), lambda: ops.scaled_dot_product_attention(
        torch.randn(2, 2, 5, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8))
    yield "heads", (ValueError, "batch/head dims must broadcast"), lambda: ops.scaled_dot_product_attention(
        q, torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8))
    yield "heads_v", (ValueError, "batch/head dims must broadcast"), lambda: ops.scaled_dot_product_attention(
        q, q, torch.randn(1, 3, 5, 8))  # only value's differs: each tensor is checked on its own
    yield "gqa", (ValueError, "enable_gqa: the key heads"), lambda: ops.scaled_dot_product_attention(
        torch.randn(1, 6, 5, 8), torch.randn(1, 4, 5, 8), torch.randn(1, 4, 5, 8), enable_gqa=True)
    yield "head_dim", (ValueError, "key head dim"), lambda: ops.scaled_dot_product_attention(
        q, torch.randn(1, 2, 5, 4), q)
    yield "value_len", (ValueError, "value must have as many"), lambda: ops.scaled_dot_product_attention(
        q, q, torch.randn(1, 2, 6, 8))
    yield "mask_shape", (ValueError, "attn_mask must be broadcastable"), lambda: ops.scaled_dot_product_attention(
        q, q, q, attn_mask=torch.ones(1, 2, 5, 4, dtype=torch.bool))
    yield "mask_5d", (ValueError, "attn_mask must be broadcastable"), lambda: ops.scaled_dot_product_attention(
        q, q, q, attn_mask=torch.ones(1, 1, 2, 5, 5, dtype=torch.bool))
    yield "mask_dtype", (TypeError, "attn_mask must be bool"), lambda: ops.scaled_dot_product_attention(
        q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.int64))
    yield "mask_f64", (TypeError, "float32 or the query's dtype"), lambda: ops.scaled_dot_product_attention(
        q, q, q, attn_mask=torch.zeros(5, 5, dtype=torch.float64))
    yield "dropout", (ValueError, "dropout_p"), lambda: ops.scaled_dot_product_attention(q, q, q, dropout_p=1.5)
    yield "causal", (TypeError, "is_causal"), lambda: ops.scaled_dot_product_attention(q, q, q, is_causal=1)
    yield "scale", (TypeError, "scale"), lambda: ops.scaled_dot_product_attention(q, q, q, scale="x")
    meta = torch.randn(1, 2, 5, 8, device="meta")  # a second device on any machine
    yield "device", (ValueError, "same device"), lambda: ops.scaled_dot_product_attention(q, meta, q)
    yield "mask_device", (ValueError, "attn_mask must be on the query's device"), \
        lambda: ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool,
                                                                               device="meta"))


@pytest.mark.parametrize("name,expected,call", list(_bad_cases()), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs(triton_backend, name, expected, call):
    exc, match = expected
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_gpu_real_sizes(d, causal, dtype):
    n = 1537 if d < 256 else 1025
    q, k, v = qkv(2, 4, n, n, d, dtype, "cuda", seed=d)
    check(ops.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v, causal=causal)
    mask = torch.rand(2, 1, n, n, device="cuda") > 0.3
    check(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v, mask=mask)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_sdpa_gpu_fp32(tf32_setting, allow_tf32, d):
    """fp32 on tensor cores: three TF32 products per dot meet the fp32 rule; one (allow_tf32) keeps 10 bits."""
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    q, k, v = qkv(2, 3, 700, 700, d, torch.float32, "cuda", seed=1)
    out = ops.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), causal=True)
    tol = 1e-2 if allow_tf32 else 1e-4  # tf32 keeps 10 mantissa bits of each operand
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=tol)
    assert math.isfinite(out.sum().item())
    if not allow_tf32:
        mask = _masks("additive_keypad", 2, 3, 700, 700, "cuda")
        check(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v, mask=mask)


@pytest.mark.gpu
def test_gpu_kv_path_follows_the_device():
    """Fused-qkv views (the models' layout) take the TMA path exactly on GPUs of compute capability >= 9."""
    qkv_packed = torch.randn(2, 300, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv_packed[:, :, i].transpose(1, 2) for i in range(3))
    assert kcommon.use_kv_tma(k, v) == (torch.cuda.get_device_capability()[0] >= 9)
    check(ops.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, causal=True)
    assert not kcommon.use_kv_tma(k[..., 1:33], v[..., 1:33])  # base 2 bytes off 16-byte alignment


# ---------------------------------------------------------------- scale, 64-bit offsets (issue 19)

@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "keypad"), (True, "additive")])
def test_scores_hundreds_of_log_units_apart(triton_backend, device, causal, mask):
    # One key tile scores ~300 above the rest (the online softmax must rescale what it accumulated: alpha underflows
    # to 0), and rows that cannot see that tile (causal) stay ordinary. Unit-scale inputs never stress the rescale.
    n, d = 70, 32
    q, k, v = qkv(1, 2, n, n, d, torch.float32, device, seed=12)
    u = q / q.norm(dim=-1, keepdim=True)
    k[:, :, 40:56] = k[:, :, 40:56] * 0.1 + 20 * u[:, :, 40:56]  # q_i . k_i ~ 20 |q_i| ~ 110; scale 3: ~300
    m = None
    if mask == "keypad":
        m = torch.ones(1, 1, 1, n, dtype=torch.bool, device=device)
        m[..., 50:] = False
    elif mask == "additive":
        m = (torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(2)) * 2).to(device)
    out = ops.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=3.0)
    check(out, q, k, v, mask=m, causal=causal, scale=3.0)


def test_batch_offsets_past_2_31_elements(triton_backend, device):
    # q/k/v of 3 batch entries 2**30 + 64 elements apart (fits in int32): entry 2 starts past 2**31 elements, so
    # the kernel's batch * stride must be 64-bit. One fp16 buffer holds all three, interleaved.
    from ops_util import TWO_31, strided_view

    b, h, n, d = 3, 2, 20, 32
    sb = TWO_31 // 2 + 64
    shape, strides = (b, h, n, d), (sb, d, 3 * h * d, 1)  # (B, N, 3, H, D)-like rows
    q = strided_view(shape, strides, torch.float16, device, seed=1)
    k = strided_view(shape, strides, torch.float16, device, seed=2, offset=h * d, buffer=q)
    v = strided_view(shape, strides, torch.float16, device, seed=3, offset=2 * h * d, buffer=q)
    assert 2 * q.stride(0) >= TWO_31 and q.stride(0) < TWO_31
    check(ops.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_head_dim_padding_is_never_read(triton_backend, device, causal):
    # D=80 rows in 128-wide rows whose tail is NaN: the kernel pads D to 128 and must mask every load of the
    # padding (a NaN read there times a zero-padded q is NaN). 64 keys: whole tiles, the unmasked-bounds stage.
    from ops_util import nan_padded

    q, k, v = (nan_padded(t, 128) for t in qkv(1, 2, 40, 64, 80, torch.float32, device, seed=15))
    check(ops.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v, causal=causal)


@pytest.mark.skipif(torch.cuda.is_available() or sys.platform == "win32", reason="a CPU page guard (POSIX mmap)")
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_loads_stay_inside_every_buffer(kind):
    # q, k, v and a per-row mask end flush against an unreadable page: a load past the end of any of them crashes,
    # though it could not change a stored value. 33 queries: the second 32-row block's rows 33..63 read the mask
    # row of query 32 (clamped), never rows past the mask; 20 keys: a ragged second key tile; D = 24 in 32-wide
    # tiles: the last row's head-dim padding lies past the end (masked on q, k, v and out).
    from ops_util import at_page_end

    n_q, n_k, d = 33, 20, 24
    q, k, v = (at_page_end(t) for t in qkv(1, 1, n_q, n_k, d, torch.float32, "cpu", seed=16))
    g = torch.Generator().manual_seed(17)
    m = torch.rand(1, 1, n_q, n_k, generator=g) > 0.3 if kind == "bool" else torch.randn(1, 1, n_q, n_k, generator=g)
    m = at_page_end(m)
    for causal in (False, True):
        out = torch.full_like(q, float("nan"))
        kattn.attention_fwd(q, k, v, out, mask=m, causal=causal, scale=d ** -0.5)
        check(out, q, k, v, mask=m, causal=causal)


@pytest.mark.parametrize("layout", ["rows", "rows_q", "rows_k", "rows_v", "rows_out", "varlen"])
def test_row_offsets_past_2_31_elements(device, layout):
    # Rows 2**27 + 64 elements apart (fits in int32): row 16 of a sequence lies past 2**31 elements, so the
    # forward's row offsets (q, out) and key-loop steps (k, v) must be 64-bit (ROWS64). rows: q, k, v and out share
    # one sparse fp16 buffer (interleaved); rows_x: that tensor alone has the long rows (the launcher's ROWS64 choice
    # must read each tensor's row stride); varlen: a packed second sequence of 17 tokens at that token stride.
    from ops_util import TWO_31, strided_views
    from tests.ops.test_varlen import cu_of
    from tests.ops.test_varlen import reference as varlen_reference

    d, f16, st = 16, torch.float16, TWO_31 // 16 + 64
    names = ("q", "k", "v", "out")
    if layout == "varlen":
        lens, h = [5, 17], 2
        total = sum(lens)
        t = strided_views(names, (total, h, d), (st, 8 * d, 1), f16, device)
        assert 16 * st >= TWO_31 and st < TWO_31
        cu = cu_of(lens, device)
        lse = torch.empty(2, h, total, device=device)
        kattn.varlen_fwd(t["q"], t["k"], t["v"], t["out"], cu, cu, max(lens), causal=True, scale=d ** -0.5, lse=lse)
        ref = varlen_reference(t["q"].cpu(), t["k"].cpu(), t["v"].cpu(), lens, lens, True)
        torch.testing.assert_close(t["out"].cpu().double(), ref, atol=4e-3, rtol=4e-3)
        return
    b, h, n = 1, 2, 17
    strides = (8 * d, 8 * d, st, 1)
    t = strided_views(names, (b, h, n, d), strides, f16, device,
                      alone=layout[5:] if layout.startswith("rows_") else None)
    lse = torch.empty(2, b, h, n, device=device)
    kattn.attention_fwd(t["q"], t["k"], t["v"], t["out"], mask=None, causal=True, scale=d ** -0.5, lse=lse)
    ref = reference(t["q"].cpu(), t["k"].cpu(), t["v"].cpu(), causal=True)
    torch.testing.assert_close(t["out"].cpu().double(), ref, atol=4e-3, rtol=4e-3)
