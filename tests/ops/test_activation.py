"""ops.gelu, ops.bias_gelu and ops.gelu_and_mul against float64 references (F.gelu in float64, both the erf and the
tanh form).

Kernel tests force ENGINE_BACKEND=triton (`triton_backend`): on a CPU they run the real kernel in Triton's
interpreter, and a silent fallback is an error. Outputs are NaN-poisoned `out=` buffers the kernel must fill.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ops
from engine.kernels import gelu as gelu_kernels

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ALL = (F32, F16, BF16)
# (atol, rtol) per dtype: fp32 math, so the error is about the output's own rounding.
TOL = {F32: (1e-6, 1e-5), F16: (1e-3, 2e-3), BF16: (8e-3, 1.6e-2)}
APPROX = ("none", "tanh")

# (rows, cols, dtypes, forms): odd row lengths around the column blocks (256..1024) and the 4096-element flat
# tile; every dtype and form at few rows, one of each at 1000 rows (the interpreter is slow).
CASES = [(1, 1, ALL, APPROX), (3, 33, ALL, APPROX), (3, 1000, ALL, APPROX), (7, 2049, ALL, APPROX),
         (1000, 33, (BF16,), ("tanh",)), (1000, 384, (F16,), ("none",)), (2, 4097, (F32,), APPROX)]
# Triton's interpreter runs exp in numpy, which warns where the tanh form's exp(-2u) overflows to inf (by design).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

PARAMS = [pytest.param(m, n, dt, ap, id=f"{m}x{n}-{str(dt)[6:]}-{ap}")
          for m, n, dts, aps in CASES for dt in dts for ap in aps]


def _rand(shape, dtype, device, gen, *, scale=3.0):
    """Random values spanning GELU's curved region and both tails, rounded to ``dtype``."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _assert_close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("m, n, dtype, approximate", PARAMS)
def test_bias_gelu_matches_float64(triton_backend, device, m, n, dtype, approximate):
    gen = torch.Generator().manual_seed(m * 31 + n)
    x, b = _rand((m, n), dtype, device, gen), _rand((n,), dtype, device, gen, scale=1.0)
    out = _poisoned((m, n), dtype, device)
    y = ops.bias_gelu(x, b, approximate, out=out)
    assert y is out
    _assert_close(y, F.gelu(x.double() + b.double(), approximate=approximate), dtype)


@pytest.mark.parametrize("m, n, dtype, approximate", PARAMS)
def test_gelu_matches_float64(triton_backend, device, m, n, dtype, approximate):
    gen = torch.Generator().manual_seed(m * 37 + n)
    x = _rand((m, n), dtype, device, gen)
    out = _poisoned((m, n), dtype, device)
    assert ops.gelu(x, approximate=approximate, out=out) is out
    _assert_close(out, F.gelu(x.double(), approximate=approximate), dtype)


@settings(max_examples=25, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), dtype=st.sampled_from(ALL),
       approximate=st.sampled_from(APPROX), with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_shapes(shape, dtype, approximate, with_bias, seed):
    # Random shapes and row lengths (hypothesis: no fixtures; force the kernel here).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "triton")
        gen = torch.Generator().manual_seed(seed)
        x, b = _rand(shape, dtype, device, gen), _rand(shape[-1:], dtype, device, gen)
        out = _poisoned(shape, dtype, device)
        if with_bias:
            ops.bias_gelu(x, b, approximate, out=out)
            ref = F.gelu(x.double() + b.double(), approximate=approximate)
        else:
            ops.gelu(x, approximate, out=out)
            ref = F.gelu(x.double(), approximate=approximate)
    _assert_close(out, ref, dtype)


@pytest.mark.parametrize("approximate", APPROX)
def test_extreme_values_saturate(triton_backend, device, approximate):
    # exp / erf / x**3 overflowing in the tails must give 0 and x, not NaN; inf stays inf.
    x = torch.tensor([-3e38, -1e4, -90.0, -20.0, -5.5, -1e-20, 0.0, 1e-20, 5.5, 20.0, 90.0, 1e4, 3e38,
                      float("inf")], device=device)
    y = ops.gelu(x, approximate=approximate, out=_poisoned(x.shape, F32, device))
    _assert_close(y, F.gelu(x.double(), approximate=approximate), F32)


def test_leading_shape_and_non_contiguous_inputs(triton_backend, device):
    gen = torch.Generator().manual_seed(41)
    base = _rand((4, 6, 2 * 50), BF16, device, gen)
    b = _rand((50,), BF16, device, gen)
    for x in (base[..., :50],  # row-strided view: read in place
              base[..., ::2],  # column-strided: copied
              base[..., :50].transpose(0, 1)):  # (6, 4, 50): copied
        assert not x.is_contiguous()
        y = ops.bias_gelu(x, b, "tanh")
        assert y.shape == x.shape
        _assert_close(y, F.gelu(x.double() + b.double(), approximate="tanh"), BF16)
        y0 = ops.gelu(x)
        assert y0.shape == x.shape
        _assert_close(y0, F.gelu(x.double()), BF16)
    scalar = _rand((), F32, device, gen)
    _assert_close(ops.gelu(scalar), F.gelu(scalar.double()), F32)


@pytest.mark.parametrize("shape", [(0,), (0, 33), (3, 0), (2, 0, 7)])
def test_empty_inputs_give_empty_outputs(triton_backend, device, shape):
    x = torch.randn(shape, device=device, dtype=F16)
    assert ops.gelu(x).shape == x.shape
    y = ops.bias_gelu(x, torch.randn(shape[-1], device=device, dtype=F16))
    assert y.shape == x.shape and y.dtype == F16


def test_float64_goes_to_pytorch_and_grad_inputs_get_gradients(triton_backend, device):
    gen = torch.Generator().manual_seed(43)
    x64, b64 = _rand((5, 20), torch.float64, device, gen), _rand((20,), torch.float64, device, gen)
    torch.testing.assert_close(ops.bias_gelu(x64, b64), F.gelu(x64 + b64))
    x = _rand((5, 20), F32, device, gen).requires_grad_()
    b = _rand((20,), F32, device, gen).requires_grad_()
    g = _rand((5, 20), F32, device, gen)
    (ops.bias_gelu(x, b, "tanh") * g).sum().backward()
    xd, bd = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    (F.gelu(xd + bd, approximate="tanh") * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad.double(), bd.grad, atol=1e-5, rtol=1e-5)
    x.grad = None
    (ops.gelu(x) * g).sum().backward()
    xd.grad = None
    (F.gelu(xd) * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("approximate", APPROX)
def test_torch_path_matches_float64(torch_backend, device, dtype, approximate):
    gen = torch.Generator().manual_seed(47)
    x, b = _rand((9, 65), dtype, device, gen), _rand((65,), dtype, device, gen, scale=1.0)
    out = _poisoned((9, 65), dtype, device)
    assert ops.gelu(x, approximate, out=out) is out
    _assert_close(out, F.gelu(x.double(), approximate=approximate), dtype)
    # PyTorch rounds x + b to the dtype before the GELU: compare against that rounded sum.
    _assert_close(ops.bias_gelu(x, b, approximate), F.gelu((x + b).double(), approximate=approximate), dtype)


def _bad_calls():
    x, b = torch.randn(4, 8), torch.randn(8)
    return [
        ("int input", lambda: ops.gelu(torch.arange(8)), TypeError, "input"),
        ("not a tensor", lambda: ops.gelu(1.5), TypeError, "input"),
        ("approximate", lambda: ops.gelu(x, approximate="erf"), ValueError, "approximate"),
        ("approximate bias", lambda: ops.bias_gelu(x, b, approximate=True), ValueError, "approximate"),
        ("int bias", lambda: ops.bias_gelu(x, b.int()), TypeError, "bias"),
        ("int bias input", lambda: ops.bias_gelu(x.long(), b), TypeError, "input"),
        ("bias size", lambda: ops.bias_gelu(x, torch.randn(4)), ValueError, "bias"),
        ("bias 2-d", lambda: ops.bias_gelu(x, torch.randn(4, 8)), ValueError, "bias"),
        ("0-d input", lambda: ops.bias_gelu(x[0, 0], b[:1]), ValueError, "input"),
        ("devices", lambda: ops.bias_gelu(x, torch.randn(8, device="meta")), ValueError, "same device"),
        ("dtypes", lambda: ops.bias_gelu(x, b.bfloat16()), TypeError, "same dtype"),
        ("out shape", lambda: ops.gelu(x, out=torch.empty(8, 4)), ValueError, "out"),
        ("out dtype", lambda: ops.bias_gelu(x, b, out=torch.empty(4, 8, dtype=torch.float64)), TypeError, "out"),
        ("out device", lambda: ops.gelu(x, out=torch.empty(4, 8, device="meta")), ValueError, "out"),
        ("geglu odd width", lambda: ops.gelu_and_mul(torch.randn(4, 7)), ValueError, "even"),
        ("geglu 0-d", lambda: ops.gelu_and_mul(torch.tensor(1.0)), ValueError, "even"),
        ("geglu int", lambda: ops.gelu_and_mul(torch.ones(4, 8, dtype=torch.int64)), TypeError, "input"),
        ("geglu approximate", lambda: ops.gelu_and_mul(torch.randn(4, 8), "sigmoid"), ValueError, "approximate"),
        ("geglu out shape", lambda: ops.gelu_and_mul(torch.randn(4, 8), out=torch.empty(4, 8)), ValueError, "out"),
    ]


@pytest.mark.parametrize("backend_fixture", ["triton_backend", "torch_backend"])
@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_is_a_clear_error(request, backend_fixture, case):
    request.getfixturevalue(backend_fixture)
    _, call, exc, word = case
    with pytest.raises(exc, match=word):
        call()


def test_every_launcher_configuration_is_compiled_ahead_of_time():
    sizes = set(range(1, 300)) | {2**k + d for k in range(8, 16) for d in (-1, 0, 1)} | {3072, 1_000_000}
    # (has_bias, gated) pairs the launcher passes: plain, bias + GELU, GeGLU
    kinds = ((False, False), (True, False), (False, True))
    picked = {(*gelu_kernels.config_for(n, bias or gated), bias, gated) for n in sizes for bias, gated in kinds}
    assert picked == set(gelu_kernels.configs())
    launches = gelu_kernels.aot_specs()  # the launcher's own launches, recorded (nothing runs)
    compiled = {(la.kwargs["BLOCK_M"], la.kwargs["BLOCK_N"], la.kwargs["HAS_BIAS"], la.kwargs["GATED"],
                 la.kwargs["APPROX_TANH"], la.kwargs["BACKWARD"], la.num_warps, la.arg("X").dtype) for la in launches}
    wanted = {(*c, tanh, bwd, gelu_kernels.NUM_WARPS, dt) for c in picked for tanh in (False, True)
              for bwd in (False, True) for dt in ALL}  # forward and backward (gelu_bwd) launches
    assert compiled == wanted and len(launches) == len(wanted)


# ---- GeGLU: gelu(gate) * up from one [gate | up] tensor -------------------------------------------------------
def _ref_geglu(x, approximate):
    n = x.shape[-1] // 2
    xd = x.double()
    return F.gelu(xd[..., :n], approximate=approximate) * xd[..., n:]


# (rows, F, dtypes, forms): F around the column blocks (256..1024, and past the largest), odd sizes.
GEGLU_CASES = [(1, 1, ALL, APPROX), (3, 33, ALL, APPROX), (5, 300, ALL, ("tanh",)), (2, 1029, (F32, BF16), APPROX),
               (1000, 37, (F16,), ("tanh",))]
GEGLU_PARAMS = [pytest.param(m, n, dt, ap, id=f"{m}x{n}-{str(dt)[6:]}-{ap}")
                for m, n, dts, aps in GEGLU_CASES for dt in dts for ap in aps]


@pytest.mark.parametrize("m, n, dtype, approximate", GEGLU_PARAMS)
def test_gelu_and_mul_matches_float64(triton_backend, device, m, n, dtype, approximate):
    gen = torch.Generator().manual_seed(m * 41 + n)
    x = _rand((m, 2 * n), dtype, device, gen)
    out = _poisoned((m, n), dtype, device)
    y = ops.gelu_and_mul(x, approximate, out=out)
    assert y is out
    _assert_close(y, _ref_geglu(x, approximate), dtype)


def test_gelu_and_mul_layouts(triton_backend, device):
    gen = torch.Generator().manual_seed(53)
    x = _rand((2, 3, 2 * 45), BF16, device, gen)
    y = ops.gelu_and_mul(x, "tanh")  # leading dims kept
    assert y.shape == (2, 3, 45)
    _assert_close(y, _ref_geglu(x, "tanh"), BF16)
    base = _rand((4, 2 * 90), F32, device, gen)
    for v in (base[:, :90], base[:, ::2], base.t()[:90].t()):  # row-strided (in place), column-strided, transposed
        _assert_close(ops.gelu_and_mul(v), _ref_geglu(v, "none"), F32)
    empty = torch.randn(0, 8, device=device, dtype=F16)
    assert ops.gelu_and_mul(empty).shape == (0, 4)


@pytest.mark.parametrize("dtype", ALL)
def test_gelu_and_mul_torch_path(torch_backend, device, dtype):
    gen = torch.Generator().manual_seed(59)
    x = _rand((9, 2 * 65), dtype, device, gen)
    out = _poisoned((9, 65), dtype, device)
    assert ops.gelu_and_mul(x, "tanh", out=out) is out
    # PyTorch rounds the GELU to the dtype before the product: compare against that.
    ref = F.gelu(x[:, :65], approximate="tanh").double() * x[:, 65:].double()
    _assert_close(out, ref, dtype)


def test_gelu_and_mul_grad_inputs_get_gradients(triton_backend, device):
    gen = torch.Generator().manual_seed(61)
    x = _rand((5, 2 * 20), F32, device, gen).requires_grad_()
    g = _rand((5, 20), F32, device, gen)
    (ops.gelu_and_mul(x, "tanh") * g).sum().backward()
    xd = x.detach().double().requires_grad_()
    (_ref_geglu(xd, "tanh") * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [768, 3072, 4096, 1001])
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("approximate", APPROX)
def test_full_size_on_gpu(triton_backend, n, dtype, approximate):
    gen = torch.Generator().manual_seed(n)
    x, b = _rand((8195, n), dtype, "cuda", gen), _rand((n,), dtype, "cuda", gen, scale=1.0)
    y = ops.bias_gelu(x, b, approximate, out=_poisoned(x.shape, dtype, "cuda"))
    _assert_close(y, F.gelu(x.double() + b.double(), approximate=approximate), dtype)
    y0 = ops.gelu(x, approximate, out=_poisoned(x.shape, dtype, "cuda"))
    _assert_close(y0, F.gelu(x.double(), approximate=approximate), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1024, 2816, 5120, 1001])
@pytest.mark.parametrize("dtype", ALL)
def test_gelu_and_mul_full_size_on_gpu(triton_backend, n, dtype):
    gen = torch.Generator().manual_seed(n + 7)
    x = _rand((4099, 2 * n), dtype, "cuda", gen)
    y = ops.gelu_and_mul(x, "tanh", out=_poisoned((4099, n), dtype, "cuda"))
    _assert_close(y, _ref_geglu(x, "tanh"), dtype)


def test_bias_gelu_rows_past_2_31_elements(triton_backend, device):
    # A row-strided input (read in place) whose third row starts 2**31 + 16 elements after the first: the kernel's
    # row * stride must be 64-bit (the stride itself fits in int32). (issue 19)
    from ops_util import TWO_31, strided_view

    x = strided_view((3, 300), (TWO_31 // 2 + 8, 1), F16, device, seed=3)
    assert 2 * x.stride(0) >= TWO_31 and x.stride(0) < TWO_31
    b = torch.randn(300, device=device).half()
    for approximate in APPROX:
        y = ops.bias_gelu(x, b, approximate, out=_poisoned((3, 300), F16, device))
        _assert_close(y, F.gelu(x.double() + b.double(), approximate=approximate), F16)


@pytest.mark.gpu
def test_gelu_past_2_31_elements_on_gpu(triton_backend):
    # Without a bias the kernel sees one flat row: its column start must be 64-bit past 2**31 elements (4 GiB of
    # fp16; too slow for the interpreter, hence GPU only). (issue 19)
    n = 2**31 + 5000
    x = torch.randn(n, device="cuda", dtype=F16)
    y = ops.gelu(x, out=torch.full_like(x, float("nan")))
    for part in (slice(0, 5000), slice(2**31 - 3000, n)):  # both sides of the 2**31 boundary
        _assert_close(y[part], F.gelu(x[part].double()), F16)
