"""LayerNorm benchmarks: engine vs PyTorch in the same run, one group per case.

    layer_norm      65536 x {768, 1024, 4096} bf16: ops.layer_norm vs F.layer_norm
    add_layer_norm  same shapes: ops.add_layer_norm vs the unfused F.layer_norm(x + residual)

GB/s counts the bytes each op must move (layer_norm: read x, write y; add_layer_norm: read x and residual, write
y and x + residual; the small weight and bias are left out). On CPU the sizes are tiny (the suite runs in CI) and
engine runs PyTorch's op, so there the numbers only show dispatch overhead. Every benchmark checks its result.
"""
import pytest
import torch
import torch.nn.functional as F

from engine import ops

CUDA = torch.cuda.is_available()
ROWS = 65536 if CUDA else 32
HIDDEN = (768, 1024, 4096) if CUDA else (96,)
DTYPE = torch.bfloat16
PROVIDERS = ("engine", "torch")


def _inputs(rows, hidden, device, *, residual):
    x = torch.randn(rows, hidden, device=device, dtype=DTYPE)
    r = torch.randn(rows, hidden, device=device, dtype=DTYPE) if residual else None
    return x, r


def _params(hidden, device):
    gen = torch.Generator(device=device).manual_seed(hidden)
    w = torch.randn(hidden, device=device, dtype=DTYPE, generator=gen)
    b = torch.randn(hidden, device=device, dtype=DTYPE, generator=gen)
    return w, b


def _check(y, v32, w, b):
    """``y`` against an fp32 LayerNorm of the fp32 values ``v32``, within bf16 rounding."""
    ref = F.layer_norm(v32, (v32.shape[-1],), w.float(), b.float(), 1e-5)
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_layer_norm(bench, rotating, device, provider, hidden):
    w, b = _params(hidden, device)
    nbytes = 2 * ROWS * hidden * DTYPE.itemsize
    sets = rotating(lambda: _inputs(ROWS, hidden, device, residual=False)[0], nbytes=nbytes / 2)
    if provider == "engine":
        fn = lambda: ops.layer_norm(sets(), hidden, w, b)  # noqa: E731
    else:
        fn = lambda: F.layer_norm(sets(), (hidden,), w, b)  # noqa: E731
    y = bench(fn, provider=provider, group=f"layer_norm {ROWS}x{hidden} bf16", nbytes=nbytes)
    _check(y, sets.last.float(), w, b)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_add_layer_norm(bench, rotating, device, provider, hidden):
    w, b = _params(hidden, device)
    nbytes = 4 * ROWS * hidden * DTYPE.itemsize
    sets = rotating(lambda: _inputs(ROWS, hidden, device, residual=True), nbytes=nbytes / 2)

    def unfused(x, r):
        s = x + r
        return F.layer_norm(s, (hidden,), w, b), s

    op = (lambda x, r: ops.add_layer_norm(x, r, w, b)) if provider == "engine" else unfused
    y, s = bench(lambda: op(*sets()), provider=provider, group=f"add_layer_norm {ROWS}x{hidden} bf16",
                 nbytes=nbytes)
    x, r = sets.last
    torch.testing.assert_close(s, x + r, atol=0, rtol=0)  # both round the fp32 sum once
    _check(y, x.float() + r.float(), w, b)
