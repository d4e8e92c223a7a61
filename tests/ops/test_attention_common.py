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
