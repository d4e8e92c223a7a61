"""Decode attention benchmarks: engine's flash-decoding kernel vs PyTorch in the same run, one group per case.

    decode  one new token (Tq = 1), H=12, D=64, bf16, B in {1, 16, 64}, every sequence N keys long,
            N in {1024, 4096, 16384}, in a KV cache preallocated to Tmax = 16384 (as generation allocates it):
      engine      ops.decode_attention(q, k_cache, v_cache, cache_seqlens)
      torch-sdpa  F.scaled_dot_product_attention on the sliced cache k_cache[:, :, :N] (needs N on the host)
      torch-mask  engine's own PyTorch path: a boolean mask from cache_seqlens over all Tmax keys + SDPA
    decode ragged  B=16, lengths spread over 1 .. Tmax in one batch: engine vs torch-mask.

GB/s counts the K/V bytes the op must read: sum over sequences of cache_seqlens * H * D * 2 (K and V) * 2 bytes
(q and the output are < 0.1% of it). On CPU the sizes are tiny (the suite runs in CI) and engine runs the PyTorch
path there, so the CPU numbers only show dispatch overhead. Every benchmark checks its result.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from engine import ops
from engine.ops.decode import decode_attention_torch

CUDA = torch.cuda.is_available()
H, D, DTYPE = 12 if CUDA else 2, 64, torch.bfloat16
TMAX = 16384 if CUDA else 256
BATCHES = (1, 16, 64) if CUDA else (1, 2)
LENGTHS = (1024, 4096, 16384) if CUDA else (64, 256)
PROVIDERS = ("engine", "torch-sdpa", "torch-mask")


def _inputs(B, lens, device):
    q = torch.randn(B, H, 1, D, device=device, dtype=DTYPE)
    k = torch.randn(B, H, TMAX, D, device=device, dtype=DTYPE)
    v = torch.randn(B, H, TMAX, D, device=device, dtype=DTYPE)
    return q, k, v, torch.tensor(lens, dtype=torch.int32, device=device)


def _kv_bytes(lens):
    return sum(lens) * H * D * 2 * DTYPE.itemsize


def _check(out, q, k, v, lens):
    """Against fp32 attention of each sequence over its valid keys."""
    ref = decode_attention_torch(q.float(), k.float(), v.float(), lens, 1 / math.sqrt(D))
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("N", LENGTHS)
@pytest.mark.parametrize("B", BATCHES)
def test_decode(bench, rotating, device, provider, B, N):
    lens = [N] * B
    nbytes = _kv_bytes(lens)
    sets = rotating(lambda: _inputs(B, lens, device), nbytes=nbytes)
    if provider == "engine":
        fn = lambda: ops.decode_attention(*sets())  # noqa: E731
    elif provider == "torch-sdpa":
        def fn():
            q, k, v, _ = sets()
            return F.scaled_dot_product_attention(q, k[:, :, :N], v[:, :, :N])
    else:
        def fn():
            q, k, v, cache_seqlens = sets()
            return decode_attention_torch(q, k, v, cache_seqlens, 1 / math.sqrt(D))
    out = bench(fn, provider=provider, group=f"decode B={B} H={H} N={N} d{D} bf16 Tmax={TMAX}", nbytes=nbytes,
                extra={"area": "decode", "n": N, "head_dim": D})
    _check(out, *sets.last)


@pytest.mark.parametrize("provider", ("engine", "torch-mask"))
def test_decode_ragged(bench, rotating, device, provider):
    B = 16
    lens = [1] + [TMAX * i // (B - 1) - (7 * i) % 13 for i in range(1, B - 1)] + [TMAX]  # 1 .. Tmax, uneven
    nbytes = _kv_bytes(lens)
    sets = rotating(lambda: _inputs(B, lens, device), nbytes=nbytes)
    if provider == "engine":
        fn = lambda: ops.decode_attention(*sets())  # noqa: E731
    else:
        def fn():
            q, k, v, cache_seqlens = sets()
            return decode_attention_torch(q, k, v, cache_seqlens, 1 / math.sqrt(D))
    out = bench(fn, provider=provider, group=f"decode ragged B={B} H={H} d{D} bf16 Tmax={TMAX}", nbytes=nbytes,
                extra={"area": "decode", "head_dim": D})
    _check(out, *sets.last)


@pytest.mark.parametrize("provider", ("engine", "torch-sdpa"))
def test_decode_fp32_d128(bench, device, provider):
    """fp32 decode at head dim 128 (issue 13: the path that spilled registers): B=16 sequences of N keys."""
    B, N, D128 = (16, 4096, 128) if CUDA else (1, 64, 128)
    g = torch.Generator(device=device).manual_seed(128)
    q = torch.randn(B, H, 1, D128, device=device, generator=g)
    k, v = (torch.randn(B, H, N, D128, device=device, generator=g) for _ in range(2))
    lens = torch.full((B,), N, dtype=torch.int32, device=device)
    if provider == "engine":
        fn = lambda: ops.decode_attention(q, k, v, lens)  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    out = bench(fn, provider=provider, group=f"decode B={B} H={H} N={N} d{D128} fp32", nbytes=2 * k.numel() * 4,
                extra={"area": "decode", "n": N, "head_dim": D128})
    ref = decode_attention_torch(q.double(), k.double(), v.double(), lens, 1 / math.sqrt(D128))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
