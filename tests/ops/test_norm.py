"""ops.layer_norm, ops.add_layer_norm, ops.rms_norm and ops.add_rms_norm against float64 references.

Kernel tests force ENGINE_BACKEND=triton (`triton_backend`), so on a CPU they run the real kernels in Triton's
interpreter and a silent fallback to PyTorch is an error. Outputs are NaN-poisoned buffers passed as `out=`, so
every element must be written by the kernel. Sizes are small on CPU; `gpu` tests repeat the checks at full size.
"""
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ops
from engine.kernels import norm as norm_kernels

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (atol, rtol) per dtype: the fp32 statistics are exact enough that the error is the output's own rounding.
TOL = {F32: (5e-5, 5e-5), F16: (2e-3, 2e-3), BF16: (1.6e-2, 1.6e-2)}
ALL = (F32, F16, BF16)

# (rows, hidden, dtypes): every hidden size once per dtype at few rows; large row counts for one dtype each.
# 2049 exercises a padded 4096 block, 9000 and 16385 the looped variant (rows longer than MAX_BLOCK_N).
CASES = [(1, 1, ALL), (3, 33, ALL), (1000, 33, (F16,)), (3, 384, ALL), (1000, 384, (BF16,)), (1, 1000, ALL),
         (3, 2049, ALL), (2, 9000, ALL), (1, 16385, (F32,))]
PARAMS = [pytest.param(m, n, dt, id=f"{m}x{n}-{str(dt)[6:]}") for m, n, dts in CASES for dt in dts]


def _rand(shape, dtype, device, gen, *, scale=1.0, shift=0.0):
    """Random values (never all zeros), rounded to ``dtype``."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).to(device)


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _ref_layer_norm(v, shape, weight, bias, eps):
    """float64 LayerNorm of already-rounded inputs."""
    w = weight.double() if weight is not None else None
    b = bias.double() if bias is not None else None
    return F.layer_norm(v.double(), shape, w, b, eps)


def _ref_rms_norm(v, shape, weight, eps):
    """float64 RMSNorm of already-rounded inputs."""
    return F.rms_norm(v.double(), shape, weight.double() if weight is not None else None, eps)


def _assert_close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("m, n, dtype", PARAMS)
def test_layer_norm_matches_float64(triton_backend, device, m, n, dtype):
    gen = torch.Generator().manual_seed(m * 7919 + n)
    x = _rand((m, n), dtype, device, gen, scale=2.0, shift=1.5)
    w, b = _rand((n,), dtype, device, gen), _rand((n,), dtype, device, gen)
    out = _poisoned((m, n), dtype, device)
    y = ops.layer_norm(x, n, w, b, eps=1e-5, out=out)
    assert y is out
    _assert_close(y, _ref_layer_norm(x, (n,), w, b, 1e-5), dtype)


@pytest.mark.parametrize("m, n, dtype", PARAMS)
def test_add_layer_norm_matches_float64(triton_backend, device, m, n, dtype):
    gen = torch.Generator().manual_seed(m * 104729 + n)
    x = _rand((m, n), dtype, device, gen, scale=2.0, shift=-1.0)
    r = _rand((m, n), dtype, device, gen, scale=3.0)
    w, b = _rand((n,), dtype, device, gen), _rand((n,), dtype, device, gen)
    out, s_out = _poisoned((m, n), dtype, device), _poisoned((m, n), dtype, device)
    y, s = ops.add_layer_norm(x, r, w, b, 1e-6, out=out, residual_out=s_out)
    assert y is out and s is s_out
    exact_sum = x.double() + r.double()
    _assert_close(s, exact_sum, dtype)  # the sum is stored in the input dtype
    _assert_close(y, _ref_layer_norm(exact_sum, (n,), w, b, 1e-6), dtype)  # normalised from the fp32 sum


@settings(max_examples=15, deadline=None, database=None)
@given(m=st.integers(1, 9), n=st.integers(1, 600), dtype=st.sampled_from(ALL), fused=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_random_shapes(m, n, dtype, fused, seed):
    # Small random shapes across every block size up to 1024 (hypothesis: no fixtures; force the kernel here).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "triton")
        gen = torch.Generator().manual_seed(seed)
        x, r = _rand((m, n), dtype, device, gen, shift=0.7), _rand((m, n), dtype, device, gen)
        w, b = _rand((n,), dtype, device, gen), _rand((n,), dtype, device, gen)
        out = _poisoned((m, n), dtype, device)
        if fused:
            ops.add_layer_norm(x, r, w, b, out=out)
            ref = _ref_layer_norm(x.double() + r.double(), (n,), w, b, 1e-5)
        else:
            ops.layer_norm(x, n, w, b, out=out)
            ref = _ref_layer_norm(x, (n,), w, b, 1e-5)
    _assert_close(out, ref, dtype)


def test_looped_rows_with_a_large_mean_stay_accurate(triton_backend, device):
    # Chunked statistics must not cancel when mean >> std (Chan's merge, not sum of squares).
    gen = torch.Generator().manual_seed(3)
    x = _rand((2, 9001), F32, device, gen, scale=0.5, shift=300.0)
    y = ops.layer_norm(x, (9001,), out=_poisoned((2, 9001), F32, device))
    # The fp32 mean itself is only good to ~ulp(300) = 3e-5, i.e. 6e-5 of a std: allow a few of those. A sum of
    # squares in fp32 (E[x^2] - E[x]^2) would be off by ~10% here.
    torch.testing.assert_close(y.double().cpu(), _ref_layer_norm(x, (9001,), None, None, 1e-5).cpu(),
                               atol=3e-4, rtol=1e-4)


@pytest.mark.parametrize("affine", ["weight", "bias", "none"])
@pytest.mark.parametrize("fused", [False, True])
def test_missing_weight_or_bias(triton_backend, device, affine, fused):
    gen = torch.Generator().manual_seed(11)
    x, r = _rand((5, 70), F16, device, gen), _rand((5, 70), F16, device, gen)
    w = _rand((70,), F16, device, gen) if affine == "weight" else None
    b = _rand((70,), F16, device, gen) if affine == "bias" else None
    out = _poisoned((5, 70), F16, device)
    if fused:
        y, _ = ops.add_layer_norm(x, r, w, b, out=out)
        ref = _ref_layer_norm(x.double() + r.double(), (70,), w, b, 1e-5)
    else:
        y = ops.layer_norm(x, [70], w, b, out=out)
        ref = _ref_layer_norm(x, (70,), w, b, 1e-5)
    _assert_close(y, ref, F16)


def test_leading_shape_and_multi_dim_normalized_shape(triton_backend, device):
    gen = torch.Generator().manual_seed(5)
    x = _rand((2, 3, 4, 33), BF16, device, gen)
    w, b = _rand((4, 33), BF16, device, gen), _rand((4, 33), BF16, device, gen)
    y = ops.layer_norm(x, (4, 33), w, b, out=_poisoned(x.shape, BF16, device))
    _assert_close(y, _ref_layer_norm(x, (4, 33), w, b, 1e-5), BF16)
    y3, s3 = ops.add_layer_norm(x, x.flip(0), w[0], b[0])
    assert y3.shape == s3.shape == x.shape
    _assert_close(y3, _ref_layer_norm(x.double() + x.flip(0).double(), (33,), w[0], b[0], 1e-5), BF16)


@pytest.mark.parametrize("layout", ["transposed", "row-strided", "column-strided"])
def test_non_contiguous_inputs(triton_backend, device, layout):
    gen = torch.Generator().manual_seed(17)
    base = _rand((6, 5, 2 * 45), F32, device, gen, shift=0.5)
    x = {"transposed": base[..., :45].transpose(0, 1),  # (5, 6, 45), needs a copy
         "row-strided": base[..., :45],  # unit column stride, row stride 90: read in place
         "column-strided": base[..., ::2]}[layout]
    r = _rand((*x.shape[:-1], 2 * 45), F32, device, gen)[..., 1::2]
    assert not x.is_contiguous() and not r.is_contiguous()
    w, b = _rand((45,), F32, device, gen), _rand((45,), F32, device, gen)
    y = ops.layer_norm(x, 45, w, b)
    assert y.shape == x.shape
    _assert_close(y, _ref_layer_norm(x, (45,), w, b, 1e-5), F32)
    y2, s2 = ops.add_layer_norm(x, r, w, b)
    exact = x.double() + r.double()
    _assert_close(s2, exact, F32)
    _assert_close(y2, _ref_layer_norm(exact, (45,), w, b, 1e-5), F32)


@pytest.mark.parametrize("shape", [(0, 33), (2, 0, 384), (4, 0)])
def test_empty_inputs_give_empty_outputs(triton_backend, device, shape):
    x = torch.randn(shape, device=device, dtype=BF16)
    n = shape[-1]
    w = torch.randn(n, device=device, dtype=BF16)
    y = ops.layer_norm(x, n, w, w)
    y2, s2 = ops.add_layer_norm(x, x, w, None)
    assert y.shape == y2.shape == s2.shape == x.shape and y.dtype == BF16


def test_float64_goes_to_pytorch_and_grad_inputs_get_gradients(triton_backend, device):
    gen = torch.Generator().manual_seed(23)
    x64 = _rand((3, 40), torch.float64, device, gen)
    w64 = _rand((40,), torch.float64, device, gen)
    torch.testing.assert_close(ops.layer_norm(x64, 40, w64, None), F.layer_norm(x64, (40,), w64, None))
    # Inputs that require grad run the kernels' autograd Function (tests/ops/test_grad.py) and get correct gradients.
    x = _rand((3, 40), F32, device, gen).requires_grad_()
    r = _rand((3, 40), F32, device, gen).requires_grad_()
    w = _rand((40,), F32, device, gen).requires_grad_()
    g = _rand((3, 40), F32, device, gen)
    y, s = ops.add_layer_norm(x, r, w, None)
    ((y * g).sum() + s.sum()).backward()
    xd, rd, wd = (t.detach().double().requires_grad_() for t in (x, r, w))
    sd = xd + rd
    ((F.layer_norm(sd, (40,), wd, None) * g.double()).sum() + sd.sum()).backward()
    for t, ref in ((x, xd), (r, rd), (w, wd)):
        torch.testing.assert_close(t.grad.double(), ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ALL)
def test_torch_path_matches_float64(torch_backend, device, dtype):
    gen = torch.Generator().manual_seed(29)
    x, r = _rand((7, 96), dtype, device, gen), _rand((7, 96), dtype, device, gen)
    w, b = _rand((96,), dtype, device, gen), _rand((96,), dtype, device, gen)
    out = _poisoned((7, 96), dtype, device)
    assert ops.layer_norm(x, 96, w, b, out=out) is out
    _assert_close(out, _ref_layer_norm(x, (96,), w, b, 1e-5), dtype)
    y, s = ops.add_layer_norm(x, r, w, b)
    _assert_close(s, x.double() + r.double(), dtype)
    _assert_close(y, _ref_layer_norm(s, (96,), w, b, 1e-5), dtype)  # PyTorch normalises the stored sum


def _bad_calls():
    x, w = torch.randn(4, 8), torch.randn(8)
    meta = torch.randn(8, device="meta")
    return [
        ("int input", lambda: ops.layer_norm(torch.ones(4, 8, dtype=torch.int32), 8), TypeError, "input"),
        ("int weight", lambda: ops.layer_norm(x, 8, torch.ones(8, dtype=torch.int64)), TypeError, "weight"),
        ("not a tensor", lambda: ops.layer_norm([1.0, 2.0], 2), TypeError, "input"),
        ("shape mismatch", lambda: ops.layer_norm(x, 7), ValueError, "normalized_shape"),
        ("shape type", lambda: ops.layer_norm(x, "8"), TypeError, "normalized_shape"),
        ("too long", lambda: ops.layer_norm(x, (2, 4, 8)), ValueError, "normalized_shape"),
        ("weight shape", lambda: ops.layer_norm(x, 8, torch.randn(7)), ValueError, "weight"),
        ("bias shape", lambda: ops.layer_norm(x, 8, w, torch.randn(8, 1)), ValueError, "bias"),
        ("devices", lambda: ops.layer_norm(x, 8, meta), ValueError, "same device"),
        ("dtypes", lambda: ops.layer_norm(x, 8, w.half()), TypeError, "same dtype"),
        ("eps type", lambda: ops.layer_norm(x, 8, eps="1e-5"), TypeError, "eps"),
        ("eps value", lambda: ops.layer_norm(x, 8, eps=-1.0), ValueError, "eps"),
        ("out shape", lambda: ops.layer_norm(x, 8, out=torch.empty(4, 9)), ValueError, "out"),
        ("out dtype", lambda: ops.layer_norm(x, 8, out=torch.empty(4, 8).half()), TypeError, "out"),
        ("out strides", lambda: ops.layer_norm(x, 8, out=torch.empty(8, 4).t()), ValueError, "out"),
        ("add shapes", lambda: ops.add_layer_norm(x, torch.randn(4, 1), w, w), ValueError, "residual"),
        ("add int", lambda: ops.add_layer_norm(x, x.long(), w, w), TypeError, "residual"),
        ("add weight", lambda: ops.add_layer_norm(x, x, torch.randn(4), None), ValueError, "weight"),
        ("add bias", lambda: ops.add_layer_norm(x, x, None, torch.randn(9)), ValueError, "bias"),
        ("add devices", lambda: ops.add_layer_norm(x, x, w, meta), ValueError, "same device"),
        ("add 0-d", lambda: ops.add_layer_norm(x[0, 0], x[0, 0], None, None), ValueError, "x"),
        ("add residual_out", lambda: ops.add_layer_norm(x, x, w, w, residual_out=torch.empty(4)), ValueError,
         "residual_out"),
        ("rms int input", lambda: ops.rms_norm(torch.ones(4, 8, dtype=torch.int32), 8), TypeError, "input"),
        ("rms shape mismatch", lambda: ops.rms_norm(x, 7), ValueError, "normalized_shape"),
        ("rms weight shape", lambda: ops.rms_norm(x, 8, torch.randn(7)), ValueError, "weight"),
        ("rms devices", lambda: ops.rms_norm(x, 8, meta), ValueError, "same device"),
        ("rms dtypes", lambda: ops.rms_norm(x, 8, w.half()), TypeError, "same dtype"),
        ("rms eps type", lambda: ops.rms_norm(x, 8, eps="1e-6"), TypeError, "eps"),
        ("rms eps value", lambda: ops.rms_norm(x, 8, eps=float("nan")), ValueError, "eps"),
        ("rms out dtype", lambda: ops.rms_norm(x, 8, out=torch.empty(4, 8).half()), TypeError, "out"),
        ("add_rms shapes", lambda: ops.add_rms_norm(x, torch.randn(4, 1), w), ValueError, "residual"),
        ("add_rms weight", lambda: ops.add_rms_norm(x, x, torch.randn(4)), ValueError, "weight"),
        ("add_rms 0-d", lambda: ops.add_rms_norm(x[0, 0], x[0, 0], None), ValueError, "x"),
        ("add_rms out", lambda: ops.add_rms_norm(x, x, w, out=torch.empty(4)), ValueError, "out"),
    ]


@pytest.mark.parametrize("backend_fixture", ["triton_backend", "torch_backend"])
@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_is_a_clear_error(request, backend_fixture, case):
    request.getfixturevalue(backend_fixture)
    _, call, exc, word = case
    with pytest.raises(exc, match=word):
        call()


def test_every_launcher_configuration_is_compiled_ahead_of_time():
    sizes = set(range(1, 300)) | {2**k + d for k in range(8, 16) for d in (-1, 0, 1)} | {768, 3072, 1_000_000}
    picked = {norm_kernels.config_for(n) for n in sizes}
    assert picked == set(norm_kernels.configs())
    launches = norm_kernels.aot_specs()  # the launcher's own launches, recorded (nothing runs)
    # forward launches (norm_fwd: HAS_RESIDUAL) and backward ones (norm_bwd: HAS_DRES, the residual's gradient)
    compiled = {(la.fn_name, la.kwargs["BLOCK_N"], la.kwargs["ROWS"], la.num_warps, la.kwargs["LOOPED"],
                 la.kwargs.get("HAS_RESIDUAL", la.kwargs.get("HAS_DRES")), la.kwargs["IS_RMS"],
                 la.arg("X" if la.fn_name == "_norm_fwd_kernel" else "V").dtype) for la in launches}
    wanted = {(fn, *c, res, rms, dt) for fn in ("_norm_fwd_kernel", "_norm_bwd_kernel") for c in picked
              for res in (False, True) for rms in (False, True) for dt in ALL}
    assert compiled == wanted and len(launches) == len(wanted)


# ---- RMSNorm (T5's norm: no mean, no bias) ---------------------------------------------------------------------
RMS_CASES = [(1, 1, ALL), (3, 33, ALL), (1000, 33, (BF16,)), (3, 384, ALL), (1, 1000, ALL), (3, 2049, (F16,)),
             (2, 9000, ALL), (1, 16385, (BF16,))]
RMS_PARAMS = [pytest.param(m, n, dt, id=f"{m}x{n}-{str(dt)[6:]}") for m, n, dts in RMS_CASES for dt in dts]


@pytest.mark.parametrize("m, n, dtype", RMS_PARAMS)
def test_rms_norm_matches_float64(triton_backend, device, m, n, dtype):
    gen = torch.Generator().manual_seed(m * 7907 + n)
    x = _rand((m, n), dtype, device, gen, scale=2.0, shift=1.5)  # a mean that LayerNorm would remove: RMS keeps it
    w = _rand((n,), dtype, device, gen)
    out = _poisoned((m, n), dtype, device)
    y = ops.rms_norm(x, n, w, eps=1e-6, out=out)
    assert y is out
    _assert_close(y, _ref_rms_norm(x, (n,), w, 1e-6), dtype)


@pytest.mark.parametrize("m, n, dtype", RMS_PARAMS)
def test_add_rms_norm_matches_float64(triton_backend, device, m, n, dtype):
    gen = torch.Generator().manual_seed(m * 104723 + n)
    x = _rand((m, n), dtype, device, gen, scale=2.0, shift=-1.0)
    r = _rand((m, n), dtype, device, gen, scale=3.0)
    w = _rand((n,), dtype, device, gen)
    out, s_out = _poisoned((m, n), dtype, device), _poisoned((m, n), dtype, device)
    y, s = ops.add_rms_norm(x, r, w, 1e-6, out=out, residual_out=s_out)
    assert y is out and s is s_out
    exact_sum = x.double() + r.double()
    _assert_close(s, exact_sum, dtype)
    _assert_close(y, _ref_rms_norm(exact_sum, (n,), w, 1e-6), dtype)


@pytest.mark.parametrize("n", [45, 9001], ids=["one-pass", "looped"])
@pytest.mark.parametrize("fused", [False, True])
def test_rms_norm_where_eps_matters(triton_backend, device, n, fused):
    # Mean squares of ~1e-6 (values ~1e-3) next to eps=1e-6: a dropped or misplaced eps is a ~40% error.
    gen = torch.Generator().manual_seed(n)
    x, r = _rand((3, n), F32, device, gen, scale=1e-3), _rand((3, n), F32, device, gen, scale=5e-4)
    w = _rand((n,), F32, device, gen)
    out = _poisoned((3, n), F32, device)
    if fused:
        ops.add_rms_norm(x, r, w, 1e-6, out=out)
        ref = _ref_rms_norm(x.double() + r.double(), (n,), w, 1e-6)
    else:
        ops.rms_norm(x, n, w, 1e-6, out=out)
        ref = _ref_rms_norm(x, (n,), w, 1e-6)
    assert (ref - _ref_rms_norm(x if not fused else x.double() + r.double(), (n,), w, 0.0)).abs().max() > 0.1
    _assert_close(out, ref, F32)


def test_rms_norm_defaults_and_shapes(triton_backend, device):
    gen = torch.Generator().manual_seed(31)
    x = _rand((2, 3, 4, 33), BF16, device, gen, shift=0.5)
    y = ops.rms_norm(x, (4, 33), out=_poisoned(x.shape, BF16, device))  # no weight; eps = finfo(bf16).eps
    _assert_close(y, _ref_rms_norm(x, (4, 33), None, torch.finfo(BF16).eps), BF16)
    r = x.flip(0)
    y2, s2 = ops.add_rms_norm(x, r, None)
    _assert_close(y2, _ref_rms_norm(x.double() + r.double(), (33,), None, torch.finfo(BF16).eps), BF16)
    base = _rand((6, 2 * 45), F16, device, gen)
    xs = base[:, ::2]  # column-strided: copied; row-strided views are read in place
    w = _rand((45,), F16, device, gen)
    _assert_close(ops.rms_norm(xs, 45, w, 1e-5), _ref_rms_norm(xs, (45,), w, 1e-5), F16)
    _assert_close(ops.rms_norm(base[:, :45], 45, w, 1e-5), _ref_rms_norm(base[:, :45], (45,), w, 1e-5), F16)
    empty = torch.randn(0, 33, device=device, dtype=F16)
    assert ops.rms_norm(empty, 33).shape == (0, 33) and ops.add_rms_norm(empty, empty, None)[1].shape == (0, 33)


@pytest.mark.parametrize("dtype", ALL)
def test_rms_torch_path_matches_float64(torch_backend, device, dtype):
    gen = torch.Generator().manual_seed(37)
    x, r = _rand((7, 96), dtype, device, gen, shift=0.3), _rand((7, 96), dtype, device, gen)
    w = _rand((96,), dtype, device, gen)
    out = _poisoned((7, 96), dtype, device)
    assert ops.rms_norm(x, 96, w, 1e-6, out=out) is out
    _assert_close(out, _ref_rms_norm(x, (96,), w, 1e-6), dtype)
    y, s = ops.add_rms_norm(x, r, w, 1e-6)
    _assert_close(s, x.double() + r.double(), dtype)
    _assert_close(y, _ref_rms_norm(s, (96,), w, 1e-6), dtype)


def test_rms_float64_goes_to_pytorch_and_grad_inputs_get_gradients(triton_backend, device):
    gen = torch.Generator().manual_seed(41)
    x64, w64 = _rand((3, 40), torch.float64, device, gen), _rand((40,), torch.float64, device, gen)
    torch.testing.assert_close(ops.rms_norm(x64, 40, w64, 1e-6), F.rms_norm(x64, (40,), w64, 1e-6))
    x = _rand((3, 40), F32, device, gen).requires_grad_()
    w = _rand((40,), F32, device, gen).requires_grad_()
    y, s = ops.add_rms_norm(x, x.detach(), w, 1e-6)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("n", [768, 1024, 1000, 4096, 8192, 8193, 16384])
@pytest.mark.parametrize("dtype", ALL)
def test_full_size_on_gpu(triton_backend, n, dtype):
    gen = torch.Generator().manual_seed(n)
    m = 4099
    x, r = _rand((m, n), dtype, "cuda", gen, shift=2.0), _rand((m, n), dtype, "cuda", gen)
    w, b = _rand((n,), dtype, "cuda", gen), _rand((n,), dtype, "cuda", gen)
    y = ops.layer_norm(x, n, w, b, out=_poisoned((m, n), dtype, "cuda"))
    _assert_close(y, _ref_layer_norm(x, (n,), w, b, 1e-5), dtype)
    y2, s2 = ops.add_layer_norm(x, r, w, b, out=_poisoned((m, n), dtype, "cuda"),
                                residual_out=_poisoned((m, n), dtype, "cuda"))
    exact = x.double() + r.double()
    _assert_close(s2, exact, dtype)
    _assert_close(y2, _ref_layer_norm(exact, (n,), w, b, 1e-5), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [512, 1000, 2048, 4096, 8193])
@pytest.mark.parametrize("dtype", ALL)
def test_rms_full_size_on_gpu(triton_backend, n, dtype):
    gen = torch.Generator().manual_seed(n + 1)
    m = 4099
    x, r = _rand((m, n), dtype, "cuda", gen, shift=2.0), _rand((m, n), dtype, "cuda", gen)
    w = _rand((n,), dtype, "cuda", gen)
    y = ops.rms_norm(x, n, w, 1e-6, out=_poisoned((m, n), dtype, "cuda"))
    _assert_close(y, _ref_rms_norm(x, (n,), w, 1e-6), dtype)
    y2, s2 = ops.add_rms_norm(x, r, w, 1e-6, out=_poisoned((m, n), dtype, "cuda"),
                              residual_out=_poisoned((m, n), dtype, "cuda"))
    exact = x.double() + r.double()
    _assert_close(s2, exact, dtype)
    _assert_close(y2, _ref_rms_norm(exact, (n,), w, 1e-6), dtype)


# ---------------------------------------------------------------- scale, 64-bit offsets (issue 19)

@pytest.mark.parametrize("n", [45, 9001])  # one-pass and looped kernels
@pytest.mark.parametrize("fused", [False, True])
def test_eps_decides_at_small_scale(triton_backend, device, n, fused):
    # Rows with a std of 3e-3: variance 1e-5, the size of eps, so a wrong eps (or eps left out) moves the output by
    # tens of percent. Unit-scale inputs cannot see eps at all.
    gen = torch.Generator().manual_seed(n)
    x = _rand((2, n), F32, device, gen, scale=3e-3, shift=0.2)
    r = _rand((2, n), F32, device, gen, scale=1e-3)
    w, b = _rand((n,), F32, device, gen), _rand((n,), F32, device, gen)
    out = _poisoned((2, n), F32, device)
    if fused:  # the documented default eps (1e-5) of both ops
        ops.add_layer_norm(x, r, w, b, out=out)
        ref = _ref_layer_norm(x.double() + r.double(), (n,), w, b, 1e-5)
    else:
        ops.layer_norm(x, n, w, b, out=out)
        ref = _ref_layer_norm(x, (n,), w, b, 1e-5)
    # fp32 statistics of values ~0.2 with a 3e-3 spread: the mean's rounding is ~1e-8, i.e. 1e-5 of a std.
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_rows_past_2_31_elements(triton_backend, device, fused):
    # A row-strided view (read in place) whose third row starts 2**31 + 16 elements after the first: row * stride
    # must be computed in 64 bits (the stride itself still fits in int32).
    from ops_util import TWO_31, strided_view

    stride = TWO_31 // 2 + 8
    x = strided_view((3, 40), (stride, 1), F16, device, seed=1)
    r = strided_view((3, 40), (stride, 1), F16, device, seed=2, offset=40, buffer=x)
    assert 2 * x.stride(0) >= TWO_31 and x.stride(0) < TWO_31
    w, b = torch.randn(40, device=device).half(), torch.randn(40, device=device).half()
    out = _poisoned((3, 40), F16, device)
    if fused:
        y, s = ops.add_layer_norm(x, r, w, b, out=out)
        _assert_close(s, x.double() + r.double(), F16)
        _assert_close(y, _ref_layer_norm(x.double() + r.double(), (40,), w, b, 1e-5), F16)
    else:
        _assert_close(ops.layer_norm(x, 40, w, b, out=out), _ref_layer_norm(x, (40,), w, b, 1e-5), F16)


@pytest.mark.skipif(torch.cuda.is_available() or sys.platform == "win32", reason="a CPU page guard (POSIX mmap)")
@pytest.mark.parametrize("n", [45, 9001])
def test_loads_stay_inside_every_buffer(triton_backend, n):
    # Weight, bias and the last row end flush against an unreadable page: a load past the end of any of them (a
    # dropped mask on the padded lanes of the last tile) crashes here, though it could never change a stored value.
    from ops_util import at_page_end

    gen = torch.Generator().manual_seed(n)
    x, r = at_page_end(_rand((3, n), F32, "cpu", gen)), at_page_end(_rand((3, n), F32, "cpu", gen))
    w, b = at_page_end(_rand((n,), F32, "cpu", gen)), at_page_end(_rand((n,), F32, "cpu", gen))
    _assert_close(ops.layer_norm(x, n, w, b), _ref_layer_norm(x, (n,), w, b, 1e-5), F32)
    y, s = ops.add_layer_norm(x, r, w, b)
    _assert_close(y, _ref_layer_norm(x.double() + r.double(), (n,), w, b, 1e-5), F32)
