"""Attention training benchmarks: forward + backward, engine vs PyTorch SDPA in the same run; results checked.

    attnbwd         the FlashAttention grid on CUDA: bf16, hidden 2048 (head dim 64 -> 32 heads, 128 -> 16
                    heads), B x N = 16k tokens, N in {1k, 2k, 4k, 8k, 16k}, causal and not; one timed call is the forward
                    and torch.autograd.grad of q, k, v. Providers: engine (ops.scaled_dot_product_attention, Triton
                    forward + backward kernels) and torch-flash (F.scaled_dot_product_attention pinned to the flash
                    backend, FlashAttention-2). TFLOP/s = 3.5 x the forward's 4 * B * H * N^2 * D (the backward
                    does 2.5x the forward's matmul work), halved when causal.
    varlen-bwd      a BERT batch (B=32, H=12, D=64, N=512, lengths ~60% of N on average), forward + backward:
                    engine packs the real tokens (ops.varlen_attention) against torch's SDPA on the padded batch
                    with a boolean key-padding mask (the flash backend takes no mask; torch picks its backend).
                    extra_info "tokens/s" counts useful tokens.

Targets (issue 16, H200): attnbwd >= 1.0x torch-flash at every N >= 1k; varlen-bwd >= 2x the masked SDPA's
useful tokens/s. On CPU the sizes are tiny (CI runs this suite) and engine runs PyTorch's op there.
"""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.test_attention import CUDA, DTYPE, HEAD_DIMS, HIDDEN, TOKENS, _bench_torch, _bert_batch
from engine import ops

SEQLENS = (1024, 2048, 4096, 8192, 16384) if CUDA else (64,)
PROVIDERS = ("engine", "torch-flash" if CUDA else "torch")


def _check_grads(grads, q, k, v, do, causal, sl):
    """Grads of one slice (a sequence, two heads) against float32 autograd of the same slice."""
    leaves = [t[sl].detach().float().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(F.scaled_dot_product_attention(*leaves, is_causal=causal), leaves, do[sl].float())
    for a, r in zip(grads, ref):
        scale = r.abs().max().item()
        assert (a[sl].float() - r).abs().max().item() <= 3e-2 * max(scale, 1e-3)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("n", SEQLENS)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_fwd_bwd(bench, device, provider, causal, n, d):
    b, h = (TOKENS // n, HIDDEN // d) if CUDA else (2, 2)
    g = torch.Generator(device=device).manual_seed(n + d)
    q, k, v, do = (torch.randn(b, h, n, d, device=device, dtype=DTYPE, generator=g) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    flops = 3.5 * 4 * b * h * n * n * d / (2 if causal else 1)
    group = f"attnbwd d{d} {'causal' if causal else 'full'} N={n}"
    extra = {"area": "attnbwd", "n": n, "head_dim": d, "causal": causal}
    if provider == "engine":
        sdpa = ops.scaled_dot_product_attention
    else:
        sdpa = F.scaled_dot_product_attention

    def call():
        return torch.autograd.grad(sdpa(q, k, v, is_causal=causal), (q, k, v), do)

    if provider == "engine":
        grads = bench(call, provider=provider, group=group, flops=flops, extra=extra)
    else:
        grads = _bench_torch(bench, provider, call, group=group, flops=flops, extra=extra)
    _check_grads(grads, q, k, v, do, causal, (slice(b - 1, b), slice(0, 2)))


@pytest.mark.parametrize("provider", ("engine", "torch-masked"))
def test_varlen_bert_fwd_bwd(bench, benchmark, device, provider):
    x, mask, lens = _bert_batch(device)
    b, n, _, h, d = x.shape
    useful = int(lens.sum())
    flops = 3.5 * sum(4 * h * int(ln) ** 2 * d for ln in lens)
    group = f"varlen-bwd bert B={b} N={n} d{d} (mean len {useful / b:.0f})"
    extra = {"area": "varlen-bwd", "head_dim": d, "causal": False, "useful_tokens": useful}
    g = torch.Generator().manual_seed(1)
    if provider == "engine":
        packed, idx, cu, max_len = ops.unpad_input(x, mask)  # once per batch in a model: outside the timing
        q, k, v = (t.detach().requires_grad_() for t in packed.unbind(1))  # each (total, H, D)
        do = torch.randn(q.shape, generator=g).to(device=device, dtype=DTYPE)

        def fn():
            out = ops.varlen_attention(q, k, v, cu, cu, max_len, max_len, validate=False)
            return torch.autograd.grad(out, (q, k, v), do)
    else:
        q, k, v = (t.detach().requires_grad_() for t in x.permute(2, 0, 3, 1, 4).unbind(0))  # (B, H, N, D)
        do = torch.randn(q.shape, generator=g).to(device=device, dtype=DTYPE)
        keypad = mask[:, None, None, :]

        def fn():
            return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=keypad), (q, k, v), do)

    grads = bench(fn, provider=provider, group=group, flops=flops, extra=extra)
    median = benchmark.extra_info.get("median_s")
    if median:
        benchmark.extra_info["tokens/s"] = useful / median
    # Check dq of the real tokens of the first sequence against float32.
    ln = int(lens[0])
    if provider == "engine":
        dq, qi, ki, vi, doi = grads[0][:ln], q[:ln], k[:ln], v[:ln], do[:ln]
        qi, ki, vi, doi = (t.transpose(0, 1) for t in (qi, ki, vi, doi))
        dq = dq.transpose(0, 1)
    else:
        dq, qi, ki, vi, doi = grads[0][0, :, :ln], q[0, :, :ln], k[0, :, :ln], v[0, :, :ln], do[0, :, :ln]
    leaves = [t.detach().float().requires_grad_() for t in (qi, ki, vi)]
    (ref,) = torch.autograd.grad(F.scaled_dot_product_attention(*leaves), leaves[:1], doi.float())
    assert (dq.float() - ref).abs().max().item() <= 3e-2 * max(ref.abs().max().item(), 1e-3)
