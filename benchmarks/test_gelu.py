"""GELU benchmarks: engine vs PyTorch in the same run, one group per case.

    gelu       2**27 elements bf16, as (32768, 4096): ops.gelu vs F.gelu
    bias_gelu  same input + a (4096,) bias:           ops.bias_gelu vs the unfused F.gelu(x + b)

Both the exact (erf) and the tanh form. GB/s counts one read and one write of the input (the bias is left out).
On CPU the sizes are tiny (the suite runs in CI) and engine runs PyTorch's op. Every benchmark checks its result.
"""
import pytest
import torch
import torch.nn.functional as F

from engine import ops

CUDA = torch.cuda.is_available()
SHAPE = (32768, 4096) if CUDA else (48, 64)  # 2**27 elements on CUDA, 3072 on CPU
DTYPE = torch.bfloat16
PROVIDERS = ("engine", "torch")
NUMEL = SHAPE[0] * SHAPE[1]
NBYTES = 2 * NUMEL * DTYPE.itemsize
SIZE = f"2^{NUMEL.bit_length() - 1}" if NUMEL & (NUMEL - 1) == 0 else str(NUMEL)


def _check(y, v32, approximate):
    torch.testing.assert_close(y.float(), F.gelu(v32, approximate=approximate), atol=1e-2, rtol=1.6e-2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("approximate", ("none", "tanh"))
def test_gelu(bench, rotating, device, provider, approximate):
    sets = rotating(lambda: torch.randn(SHAPE, device=device, dtype=DTYPE) * 3, nbytes=NBYTES / 2)
    op = ops.gelu if provider == "engine" else F.gelu
    y = bench(lambda: op(sets(), approximate=approximate), provider=provider,
              group=f"gelu {SIZE} {approximate} bf16", nbytes=NBYTES)
    _check(y, sets.last.float(), approximate)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("approximate", ("none", "tanh"))
def test_bias_gelu(bench, rotating, device, provider, approximate):
    b = torch.randn(SHAPE[1], device=device, dtype=DTYPE)
    sets = rotating(lambda: torch.randn(SHAPE, device=device, dtype=DTYPE) * 3, nbytes=NBYTES / 2)
    if provider == "engine":
        fn = lambda: ops.bias_gelu(sets(), b, approximate)  # noqa: E731
    else:
        fn = lambda: F.gelu(sets() + b, approximate=approximate)  # noqa: E731
    y = bench(fn, provider=provider, group=f"bias_gelu {SIZE} {approximate} bf16", nbytes=NBYTES)
    # The unfused reference rounds x + b to bf16 first: compare both with the fp32 sum at bf16 tolerance.
    _check(y, sets.last.float() + b.float(), approximate)
