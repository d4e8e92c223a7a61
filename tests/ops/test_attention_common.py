"""Host-side helpers of engine.kernels.attention.common that the kernel tests reach only on a GPU: the TMA
descriptors' strides (no kernel runs here, ~0.1 s).
"""
import pytest
import torch

from engine.kernels.attention import common as kcommon

pytestmark = pytest.mark.skipif(kcommon.TensorDescriptor is None, reason="needs triton.tools.tensor_descriptor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_descriptors_give_size_one_dims_a_16_byte_stride(dtype):
    """tma_addressable ignores the stride of a size-1 dim (never stepped along), so a TMA-addressable K / V may carry
    any stride there (a batch-1 view of a longer buffer, a one-head slice); its descriptor must still give TMA a
    16-byte multiple (TensorDescriptor refuses any other; cuTensorMapEncode too). Dense (1, H, N, D) with an odd
    batch stride and packed (total, 1, D) with an odd head stride; every other stride is the tensor's own."""
    elem = torch.tensor([], dtype=dtype).element_size()
    buf = torch.empty(8192, dtype=dtype)
    dense = buf.as_strided((1, 2, 40, 32), (4097, 1280, 32, 1))   # batch stride 4097 elements: not 16-byte aligned
    packed = buf.as_strided((40, 1, 32), (64, 4097, 1))           # head stride 4097
    for t in (dense, packed):
        assert kcommon.tma_addressable(t)
        kd, vd = kcommon.kv_descriptors(t, t, 16, 32)
        for desc in (kd, vd):
            want = [s if n > 1 else 16 // elem for n, s in zip(t.shape[:-1], t.stride()[:-1])] + [1]
            assert list(desc.strides) == want and list(desc.shape) == list(t.shape)
            assert all(s * elem % 16 == 0 for s in desc.strides[:-1])
            assert list(desc.block_shape) == kcommon.kv_block_shape(t.dim(), 16, 32)


def test_shifted_table_heads_past_2_31_elements(monkeypatch):
    """shifted_rows' head offset (head x the shifted table's head stride) in 64 bits: the launcher's shifted table is
    placed (monkeypatched) in a sparse fp16 buffer with its heads 2**30 + 64 elements apart, so head 2 starts past
    2**31; the dense forward with that bias vs float64 (one interpreted launch)."""
    from ops_util import TWO_31, strided_view

    from engine.kernels.attention import fwd as kfwd
    from engine.ops.position_bias import bias_scores

    build = kcommon.shifted_table

    def spread(t):
        s = build(t)
        out = strided_view(tuple(s.shape), (TWO_31 // 2 + 64, s.stride(1), 1), s.dtype, "cpu", seed=0)
        out.copy_(s)
        return out

    monkeypatch.setattr(kcommon, "shifted_table", spread)
    h, n, d = 3, 20, 16
    g = torch.Generator().manual_seed(53)
    q, k, v = (torch.randn(1, h, n, d, generator=g).half() for _ in range(3))
    table = (torch.randn(h, 2 * n - 1, generator=g) * 2).half()
    out = torch.full_like(q, float("nan"))
    kfwd.attention_fwd(q, k, v, out, mask=None, causal=False, scale=d ** -0.5, relative_position_bias=table)
    s = q.double() @ k.double().transpose(-1, -2) * d ** -0.5
    s = s + bias_scores(table.double(), torch.arange(n)[None], n, dtype=torch.float64)
    ref = torch.softmax(s, -1) @ v.double()
    torch.testing.assert_close(out.double(), ref, atol=4e-3, rtol=4e-3)
