"""ops.varlen_attention, ops.unpad_input, ops.pad_input: packed sequences against a float64 per-sequence reference.

Under the interpreter the kernel tiles with BLOCK_M=32, BLOCK_N=16, so lengths 15/16/17 and 31/32/33 sit on block
boundaries +/- 1 and 70 spans more than two blocks. Causal varlen is bottom-right aligned (FlashAttention).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ops
from engine.kernels.attention import fwd as kattn

TOL = {torch.float32: (2e-4, 2e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def cu_of(lens, device):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def reference(q, k, v, lens_q, lens_k, causal, scale=None):
    """float64, one sequence at a time; bottom-right causal; rows that see no key are zeros."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qs = ks = 0
    for lq, lk in zip(lens_q, lens_k):
        a, b, c = (t.double().transpose(0, 1) for t in (q[qs:qs + lq], k[ks:ks + lk], v[ks:ks + lk]))
        s = a @ b.transpose(-1, -2) * scale
        if causal:
            keep = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
            s = s.masked_fill(~keep, float("-inf"))
        out[qs:qs + lq] = (torch.softmax(s, -1).nan_to_num(0.0) @ c).transpose(0, 1)
        qs, ks = qs + lq, ks + lk
    return out


def packed(lens_q, lens_k, h, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: torch.randn(n, h, d, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return mk(sum(lens_q)), mk(sum(lens_k)), mk(sum(lens_k))


CASES = [  # (lens_q, lens_k (None = same), head_dim, causal, dtype)
    ([1, 31, 33, 70], None, 32, True, torch.float32),
    ([15, 16, 17, 32], None, 64, False, torch.float16),
    ([70, 1, 33], None, 80, True, torch.bfloat16),
    ([5, 20, 9], [12, 20, 40], 16, True, torch.float32),  # bottom-right causal, len_k > len_q
    ([12, 3, 0], [5, 3, 7], 32, True, torch.float16),     # len_q > len_k (early rows see nothing), empty query
    ([5, 40], [40, 5], 16, True, torch.float32),          # len_q - len_k = 35: whole key tiles before key 0
    ([9, 4], [0, 6], 128, False, torch.float32),          # an empty key sequence -> zeros
    ([3, 10], None, 256, True, torch.bfloat16),
]


@pytest.mark.parametrize("lens_q,lens_k,d,causal,dtype", CASES)
def test_varlen_matches_float64(triton_backend, device, lens_q, lens_k, d, causal, dtype):
    lens_k = lens_q if lens_k is None else lens_k
    q, k, v = packed(lens_q, lens_k, 2, d, dtype, device, seed=len(lens_q) + d)
    out = ops.varlen_attention(q, k, v, cu_of(lens_q, device), cu_of(lens_k, device), max(lens_q), max(lens_k),
                               causal=causal)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), lens_q, lens_k, causal)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out).all()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("lens_q,lens_k,shared_cu", [([9], [9], True), ([9], [9], False), ([7], [11], False),
                                                     ([11], [7], False), ([0], [5], False)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_one_sequence_on_the_cpu_paths(backend_name, monkeypatch, lens_q, lens_k, shared_cu, causal):
    """One packed sequence (cu_seqlens of length 2, validated by one comparison on the CPU): self- and
    cross-attention, one cu tensor for both or two, lengths either way round, an empty query, the maximum lengths
    exact or larger; PyTorch and the kernel (interpreter) against float64."""
    monkeypatch.setenv("ENGINE_BACKEND", backend_name)
    q, k, v = packed(lens_q, lens_k, 2, 16, torch.float32, "cpu", seed=sum(lens_q) * 7 + sum(lens_k))
    cu_q = cu_of(lens_q, "cpu")
    cu_k = cu_q if shared_cu else cu_of(lens_k, "cpu")
    ref = reference(q, k, v, lens_q, lens_k, causal)
    for slack in (0, 3):
        out = ops.varlen_attention(q, k, v, cu_q, cu_k, lens_q[0] + slack, lens_k[0] + slack, causal=causal)
        assert out.shape == q.shape
        torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)


@settings(max_examples=8, deadline=None, database=None)
@given(lens_q=st.lists(st.integers(0, 50), min_size=1, max_size=4), data=st.data(), d=st.sampled_from([16, 48]),
       causal=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_lengths(lens_q, data, d, causal, seed):
    """Random batches of lengths (0 included; key lengths may differ) through the kernel."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lens_k = data.draw(st.lists(st.integers(0, 50), min_size=len(lens_q), max_size=len(lens_q)))
    q, k, v = packed(lens_q, lens_k, 2, d, torch.float32, device, seed=seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_BACKEND", "triton")
        out = ops.varlen_attention(q, k, v, cu_of(lens_q, device), cu_of(lens_k, device), max(lens_q),
                                   max(lens_k), causal=causal)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), lens_q, lens_k, causal)
    torch.testing.assert_close(out.cpu().double(), ref, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_kernel_poisoned_output_and_strided_inputs(device, causal):
    """NaN-filled output, q/k/v as slices of one packed (total, 3, H, D) projection, explicit tile shapes, both
    K/V paths (pointers; tensor descriptors, interpreted on the CPU)."""
    lens = [17, 1, 40]
    h, d = 2, 48
    qkv = torch.randn(sum(lens), 3, h, d, device=device)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    assert not q.is_contiguous()
    cu = cu_of(lens, device)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), lens, lens, causal, scale=0.2)
    tma = [False, True] if device == "cpu" or torch.cuda.get_device_capability()[0] >= 9 else [False]
    for config, kv_tma in [((16, 32, 4, 1), False), ((32, 16, 4, 1), False), ((32, 16, 4, 1), tma[-1])]:
        # kv_tma: K/V tiles through rank-3 descriptors; rows past a sequence belong to the next one (masked),
        # rows past the packed total read as zeros.
        out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
        kattn.varlen_fwd(q, k, v, out, cu, cu, max(lens), causal=causal, scale=0.2, config=config, kv_tma=kv_tma)
        torch.testing.assert_close(out.cpu().double(), ref, atol=2e-4, rtol=2e-4)


def test_varlen_equals_padded_sdpa(triton_backend, device):
    """unpad -> varlen -> pad gives what SDPA with a key-padding mask gives on the kept rows (zeros elsewhere)."""
    b, n, h, d = 3, 37, 2, 32
    g = torch.Generator().manual_seed(4)
    mask = torch.ones(b, n, dtype=torch.int64)
    mask[0, 30:] = 0
    mask[1, :5] = 0  # left padding
    mask[2, 10:12] = 0  # a hole in the middle
    x = torch.randn(b, n, 3, h, d, generator=g).to(device)
    mask = mask.to(device)
    packed_x, idx, cu, max_len = ops.unpad_input(x, mask)
    assert cu.dtype == torch.int32 and max_len == 37 - 2 and packed_x.shape == (int(mask.sum()), 3, h, d)
    out = ops.varlen_attention(packed_x[:, 0], packed_x[:, 1], packed_x[:, 2], cu, cu, max_len, max_len)
    padded = ops.pad_input(out, idx, b, n)  # (B, N, H, D)
    q, k, v = (x[:, :, i].transpose(1, 2).double() for i in range(3))
    keypad = mask.bool()[:, None, None, :]
    ref = torch.softmax((q @ k.transpose(-1, -2) * d ** -0.5).masked_fill(~keypad, float("-inf")), -1) @ v
    ref = ref.transpose(1, 2) * mask[:, :, None, None]
    torch.testing.assert_close(padded.cpu().double(), ref.cpu(), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpad_pad_round_trip(device, dtype):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 9, 5, generator=g).to(device=device, dtype=dtype)
    mask = (torch.rand(4, 9, generator=g) > 0.4).to(device)
    mask[3] = False  # an all-padding row
    mask[0] = True
    packed_h, idx, cu, max_len = ops.unpad_input(hidden, mask)
    lens = mask.sum(1)
    assert cu.tolist() == [0] + lens.cumsum(0).tolist() and max_len == 9
    assert torch.equal(packed_h, hidden[mask])
    back = ops.pad_input(packed_h, idx, 4, 9)
    assert torch.equal(back, hidden * mask[..., None])  # zeros at the padding


def test_torch_path_agrees_with_kernel(monkeypatch, device):
    lens_q, lens_k = [12, 3, 20], [5, 3, 33]
    q, k, v = packed(lens_q, lens_k, 2, 32, torch.float32, device, seed=8)
    args = (q, k, v, cu_of(lens_q, device), cu_of(lens_k, device), 20, 33)
    monkeypatch.setenv("ENGINE_BACKEND", "torch")
    a = ops.varlen_attention(*args, causal=True)
    monkeypatch.setenv("ENGINE_BACKEND", "triton")
    b = ops.varlen_attention(*args, causal=True)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    assert (a[:7] == 0).all()  # first sequence: rows 0..6 see no key (bottom-right, 12 queries, 5 keys)


def _bad_cases():
    q = torch.randn(10, 2, 8)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    va = ops.varlen_attention
    yield "4d", (ValueError, "q must be 3-D"), lambda: va(q[None], q, q, cu, cu, 6, 6)
    yield "dtype", (TypeError, "same dtype"), lambda: va(q, q.half(), q, cu, cu, 6, 6)
    yield "heads", (ValueError, "same number of heads"), lambda: va(q, torch.randn(10, 3, 8), q, cu, cu, 6, 6)
    yield "head_dim", (ValueError, "head dims"), lambda: va(q, torch.randn(10, 2, 4), q, cu, cu, 6, 6)
    yield "kv_len", (ValueError, "v must have as many tokens"), lambda: va(q, q, q[:9], cu, cu, 6, 6)
    yield "cu_dtype", (TypeError, "cu_seqlens_q must be an int32"), lambda: va(q, q, q, cu.long(), cu, 6, 6)
    yield "cu_2d", (ValueError, "cu_seqlens_k must be 1-D"), lambda: va(q, q, q, cu, cu[None], 6, 6)
    yield "cu_len", (ValueError, "same length"), lambda: va(q, q, q, cu, cu[[0, 2]], 6, 6)
    yield "cu_start", (ValueError, "must start at 0"), lambda: va(q, q, q, cu + 1, cu, 6, 6)
    yield "cu_decreasing", (ValueError, "non-decreasing"), lambda: va(
        q, q, q, torch.tensor([0, 7, 3, 10], dtype=torch.int32), torch.tensor([0, 3, 7, 10], dtype=torch.int32),
        7, 7)
    yield "cu_end", (ValueError, "must end at the packed token count 10"), lambda: va(
        q, q, q, cu, torch.tensor([0, 4, 9], dtype=torch.int32), 6, 6)
    yield "max_small", (ValueError, "max_seqlen_q must be >= the longest sequence"), lambda: va(
        q, q, q, cu, cu, 5, 6)
    # one sequence (cu_seqlens of length 2: the CPU path checks it in one comparison first)
    one, k8 = torch.tensor([0, 10], dtype=torch.int32), torch.randn(8, 2, 8)
    yield "one_start", (ValueError, "cu_seqlens_q must start at 0"), lambda: va(
        q, q, q, torch.tensor([1, 10], dtype=torch.int32), one, 10, 10)
    yield "one_end", (ValueError, "cu_seqlens_q must end at the packed token count 10; got 9"), lambda: va(
        q, q, q, torch.tensor([0, 9], dtype=torch.int32), one, 10, 10)
    yield "one_max", (ValueError, "max_seqlen_q must be >= the longest sequence \\(10\\); got 9"), lambda: va(
        q, q, q, one, one, 9, 10)
    yield "one_max_k", (ValueError, "max_seqlen_k must be >= the longest sequence \\(10\\); got 9"), lambda: va(
        q, q, q, one, one, 10, 9)
    yield "one_k_end", (ValueError, "cu_seqlens_k must end at the packed token count 8; got 10"), lambda: va(
        q, k8, k8, one, one, 10, 10)  # one cu tensor for both, but k holds 8 tokens
    full_then_back = torch.tensor([0, 10, 7], dtype=torch.int32)  # starts like one full sequence, then falls
    yield "full_then_back", (ValueError, "cu_seqlens_q must be non-decreasing"), lambda: va(
        q, q, q, full_then_back, full_then_back, 10, 10)
    yield "one_k_start", (ValueError, "cu_seqlens_k must start at 0"), lambda: va(
        q, k8, k8, one, torch.tensor([1, 8], dtype=torch.int32), 10, 10)
    yield "one_k_start_same_total", (ValueError, "cu_seqlens_k must start at 0"), lambda: va(
        q, q, q, one, torch.tensor([1, 10], dtype=torch.int32), 10, 10)  # another tensor, the same token count
    empty, bad_start, long_end = torch.randn(0, 2, 8), torch.tensor([3, 0], dtype=torch.int32), one
    yield "empty_q_start", (ValueError, "cu_seqlens_q must start at 0; got 3"), lambda: va(
        empty, empty, empty, bad_start, bad_start, 0, 0)
    yield "empty_k_start", (ValueError, "cu_seqlens_k must start at 0; got 3"), lambda: va(
        q, empty, empty, one, bad_start, 10, 0)
    yield "empty_q_end", (ValueError, "cu_seqlens_q must end at the packed token count 0; got 10"), lambda: va(
        empty, empty, empty, long_end, long_end, 0, 0)
    yield "empty_k_end", (ValueError, "cu_seqlens_k must end at the packed token count 0; got 10"), lambda: va(
        q, empty, empty, one, long_end.clone(), 10, 10)
    yield "max_type", (TypeError, "max_seqlen_k must be a non-negative int"), lambda: va(q, q, q, cu, cu, 6, 6.0)
    yield "causal", (TypeError, "causal must be a bool"), lambda: va(q, q, q, cu, cu, 6, 6, causal=None)
    yield "device", (ValueError, "same device"), lambda: va(q, q.to("meta"), q, cu, cu, 6, 6)
    yield "cu_device", (ValueError, "cu_seqlens_q must be on the query's device"), lambda: va(
        q, q, q, cu.to("meta"), cu, 6, 6)
    yield "unpad_mask_dtype", (TypeError, "attention_mask must be bool or integer"), lambda: ops.unpad_input(
        torch.randn(2, 3, 4), torch.ones(2, 3))
    yield "unpad_shape", (ValueError, "hidden must be"), lambda: ops.unpad_input(
        torch.randn(2, 4, 4), torch.ones(2, 3, dtype=torch.bool))
    yield "unpad_mask_dims", (ValueError, "attention_mask must be 2-D"), lambda: ops.unpad_input(
        torch.randn(2, 3, 4), torch.ones(6, dtype=torch.bool))
    yield "pad_len", (ValueError, "packed must be"), lambda: ops.pad_input(
        torch.randn(3, 4), torch.tensor([0, 1]), 1, 4)
    yield "pad_idx", (TypeError, "indices must be"), lambda: ops.pad_input(
        torch.randn(2, 4), torch.tensor([0.0, 1.0]), 1, 4)


@pytest.mark.parametrize("name,expected,call", list(_bad_cases()), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs(triton_backend, name, expected, call):
    exc, match = expected
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d", [64, 128])
def test_varlen_gpu_bert_batch(causal, d):
    """A BERT-like batch at real size: 32 sequences of random length up to 512, bf16."""
    g = torch.Generator().manual_seed(d)
    lens = torch.randint(1, 513, (32,), generator=g).tolist()
    q, k, v = packed(lens, lens, 12, d, torch.bfloat16, "cuda", seed=d)
    out = ops.varlen_attention(q, k, v, cu_of(lens, "cuda"), cu_of(lens, "cuda"), max(lens), max(lens),
                               causal=causal, validate=False)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), lens, lens, causal)
    torch.testing.assert_close(out.cpu().double(), ref, atol=3e-2, rtol=3e-2)


def test_token_offsets_past_2_31_elements(triton_backend, device):
    # Packed q/k/v whose token stride is 2**24 + 64 elements (fits in int32): the second sequence starts at token 128,
    # past 2**31 elements, so cu_seqlens[b] * stride must be 64-bit. One fp16 buffer, q/k/v interleaved. (issue 19)
    from ops_util import TWO_31, strided_view

    lens, h, d = [128, 5], 1, 16
    total, st = sum(lens), TWO_31 // 128 + 64
    q = strided_view((total, h, d), (st, d, 1), torch.float16, device, seed=1)
    k = strided_view((total, h, d), (st, d, 1), torch.float16, device, seed=2, offset=h * d, buffer=q)
    v = strided_view((total, h, d), (st, d, 1), torch.float16, device, seed=3, offset=2 * h * d, buffer=q)
    assert 128 * st >= TWO_31 and st < TWO_31
    out = ops.varlen_attention(q, k, v, cu_of(lens, device), cu_of(lens, device), 128, 128, causal=True)
    ref = reference(q.cpu(), k.cpu(), v.cpu(), lens, lens, True)
    torch.testing.assert_close(out.cpu().double(), ref, atol=4e-3, rtol=4e-3)
