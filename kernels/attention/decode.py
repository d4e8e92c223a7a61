"""Decode attention (flash-decoding): a few new query tokens against a preallocated KV cache.

Two kernels:

* ``_decode_split_kernel`` -- grid (S, H, B * m_blocks), S = num_splits. Program (s, h, b*m_blocks + mb) takes
  query rows [mb*BLOCK_M, mb*BLOCK_M + BLOCK_M) of sequence b, head h, and the s-th of S equal runs of whole
  BLOCK_N tiles of that sequence's valid keys (run length computed on the device from cache_seqlens[b], so a
  short sequence in a long cache still spreads over every split), cut to the causally visible part. It runs an
  online softmax over BLOCK_N keys at a time. With one split it writes the normalised output straight into
  ``out``; with more it writes a normalised partial output (fp32) and its log-sum-exp (fp32, base 2:
  log2 sum 2^(score * log2 e)). A split that sees no key (past cache_seqlens, or before every row's causal
  limit) does no loads and writes zeros and lse = -inf.
* ``_decode_combine_kernel`` -- grid (Tq, H, B): merges the partials of one query row by their log-sum-exps,
  BLOCK_S splits per (parallel) load, skipping splits that saw no key.

Dots run on tensor cores (mma.sync: BLOCK_M = 16 is below wgmma's 64 rows); fp32 as three TF32 products per
dot, except at head dim 256 (``dot_precision``).
The launcher never reads device data on the host: the grid and the number of splits depend on (B, H, Tq, Tmax, D,
dtype, SM count) only, and the scratch is allocated from those sizes, so a decode step can be captured in a CUDA
graph; only the split boundaries move with the lengths, inside the kernel.
cache_seqlens is clamped to [0, Tmax] inside the kernel, so no value can make it read out of bounds.
First use per (dtype, head dim) compiles the split kernel (1-2.5 s on a 2-core x86 box) and, once a launch
splits, the combine kernel (~0.5 s); ``python -m engine.kernels.aot decode`` builds all 42 configurations.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import triton
import triton.language as tl

from engine.kernels.attention.common import bias_args, precision
from engine.kernels.launch import launch

# Head dims the kernel is built for (others go to PyTorch); non-powers of two are masked up to BLOCK_D.
HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
BLOCK_M = 16  # query rows per program: the smallest tl.dot tile; Tq = 1 pads to it (decode is memory-bound)
MAX_SPLITS = 64
_TILE_BYTES = 16384  # bytes of one K (or V) tile: BLOCK_N * BLOCK_D * element size, at most
_COMBINE_WARPS = 4
_H200_SMS = 132  # stands in for the SM count when the kernels run in the interpreter


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST only under TRITON_INTERPRET for bf16: the interpreter multiplies bf16 bit patterns in tl.dot
    # (triton-lang/triton#11584); bf16 products are exact in fp32, so the upcast dot computes the same sums.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _decode_split_kernel(
    Q,  # (B, H, Tq, D) any strides
    K,  # (B, H, Tmax, D) any strides
    V,  # (B, H, Tmax, D) any strides
    SEQLENS,  # (B,) int32: valid cache length per sequence, the Tq new tokens included
    OUT,  # (B, H, Tq, D) in q's dtype; written when num_splits == 1
    OPART,  # (B, H, Tq, num_splits, D) fp32 contiguous; written when num_splits > 1
    LSE,  # (B, H, Tq, num_splits) fp32 contiguous, base-2 log-sum-exp; written when num_splits > 1
    qk_scale,  # softmax scale * log2(e)
    q_len,
    max_len,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    BIAS=None, stride_bh=0, bias_len=0,  # HAS_BIAS only: the (H, 2 * bias_len - 1) relative position table
    HAS_BIAS: tl.constexpr = False,
):
    pid_s = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_bm = tl.program_id(2)
    num_splits = tl.num_programs(0)
    num_heads = tl.num_programs(1)
    m_blocks = (q_len + BLOCK_M - 1) // BLOCK_M
    b = pid_bm // m_blocks
    mb = pid_bm % m_blocks

    kv_len = tl.load(SEQLENS + b)
    kv_len = tl.minimum(tl.maximum(kv_len, 0), max_len)  # never read past the cache, whatever the value
    shift = kv_len - q_len  # row i sees keys j <= shift + i
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < q_len
    d_valid = offs_d < HEAD_DIM
    run = tl.cdiv(tl.cdiv(kv_len, BLOCK_N), num_splits) * BLOCK_N  # keys per split for this sequence
    lo = pid_s * run
    last_row = tl.minimum(mb * BLOCK_M + BLOCK_M, q_len) - 1
    hi = tl.minimum(tl.minimum(lo + run, kv_len), shift + last_row + 1)  # lo >= hi: nothing to do

    b64 = b.to(tl.int64)
    h64 = pid_h.to(tl.int64)
    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    lo64 = lo.to(tl.int64)
    k_ptrs = (K + b64 * stride_kb + h64 * stride_kh + lo64 * stride_kt
              + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd)
    v_ptrs = (V + b64 * stride_vb + h64 * stride_vh + lo64 * stride_vt
              + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd)

    bias_row = BIAS
    bias_base = offs_m
    if HAS_BIAS:
        bias_row = BIAS + h64 * stride_bh
        bias_base = bias_len - 1 - shift - offs_m  # (BLOCK_M,) key j's entry: bias_base + j

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        n_valid = cols < hi
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        qk = _dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST)  # (BLOCK_M, BLOCK_N) fp32
        visible = n_valid[None, :] & (cols[None, :] <= shift + offs_m[:, None])
        qk = qk * qk_scale
        if HAS_BIAS:  # table[h, L - 1 + j - pos_i], pos_i = shift + i; clamped to the table as bias_scores does
            idx = tl.minimum(tl.maximum(bias_base[:, None] + cols[None, :], 0), 2 * bias_len - 2)
            qk += tl.load(bias_row + idx).to(tl.float32) * 1.4426950408889634
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet: no inf - inf
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kt
        v_ptrs += BLOCK_N * stride_vt

    empty = l_i == 0.0  # no visible key in this split (l_i >= 1 as soon as one key is seen)
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    if num_splits > 1:  # a uniform branch: one build serves both launches
        row = (b64 * num_heads + h64) * q_len + offs_m  # (BLOCK_M,) int64 row of (B, H, Tq)
        slot = row * num_splits + pid_s
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(LSE + slot, lse, mask=m_valid)
        tl.store(OPART + slot[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=m_valid[:, None] & d_valid[None, :])
    else:
        o_ptrs = OUT + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])


@triton.jit
def _decode_combine_kernel(
    OPART,  # (B, H, Tq, num_splits, D) fp32 contiguous
    LSE,  # (B, H, Tq, num_splits) fp32 contiguous, base 2; -inf for a split that saw no key
    OUT,  # (B, H, Tq, D) any strides
    num_splits,
    stride_ob, stride_oh, stride_om, stride_od,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.num_programs(0)
    num_heads = tl.num_programs(1)
    row = (b.to(tl.int64) * num_heads + h) * q_len + m
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM

    m_run = tl.full([], float("-inf"), tl.float32)
    l_run = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):  # BLOCK_S splits per load: usually a single pass
        offs_s = s0 + tl.arange(0, BLOCK_S)
        slot = row * num_splits + offs_s
        lse = tl.load(LSE + slot, mask=offs_s < num_splits, other=float("-inf"))
        live = lse > float("-inf")  # splits that saw no key are not read at all
        o = tl.load(OPART + slot[:, None] * HEAD_DIM + offs_d[None, :], mask=live[:, None] & d_valid[None, :],
                    other=0.0)
        m_new = tl.maximum(m_run, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_run - m_safe)
        w = tl.where(live, tl.exp2(lse - m_safe), 0.0)
        acc = acc * alpha + tl.sum(w[:, None] * o, 0)
        l_run = l_run * alpha + tl.sum(w, 0)
        m_run = m_new
    acc = acc / tl.where(l_run == 0.0, 1.0, l_run)  # a row with no visible key anywhere: zeros
    o_ptrs = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + m * stride_om + offs_d * stride_od
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=d_valid)


def dot_precision(dtype: torch.dtype, block_d: int) -> str:
    """tl.dot's input precision: ``common.precision`` (fp32: three TF32 products on mma.sync, which keep the fp32
    rule and fit in registers up to BLOCK_D = 128), except fp32 at BLOCK_D = 256, where the TF32 split of a
    (16, 256) query tile spills and the full-precision FMA dot (BLOCK_N = 16 there) does not."""
    p = precision(dtype)
    return "ieee" if p == "tf32x3" and block_d > 128 else p


def _combine_block_s(block_d: int) -> int:
    """Splits merged per load in the combine kernel: a (BLOCK_S, BLOCK_D) fp32 tile of at most 8192 values."""
    return max(16, min(MAX_SPLITS, 8192 // block_d))


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """Static launch plan: a function of shapes, dtype and SM count only (never of cache_seqlens' values)."""

    block_d: int
    block_n: int
    num_warps: int
    num_stages: int
    num_splits: int  # the kernel cuts each sequence's valid keys into this many runs of whole BLOCK_N tiles


def _kernel_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps, num_stages) for a head dim and dtype: K/V tiles of at most 16 KiB."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    row_bytes = block_d * torch.empty((), dtype=dtype).element_size()
    block_n = max(16, min(64, _TILE_BYTES // row_bytes))
    tile = block_n * row_bytes
    num_stages = 3 if tile <= 8192 else 2
    return block_d, block_n, 4, num_stages


def _ctas_per_sm(block_n: int, block_d: int, elem: int, num_stages: int) -> int:
    """Rough residency (shared memory bound) used to size waves: the software pipeline buffers K and V tiles for
    num_stages - 1 iterations ahead, plus a few KiB of layout conversions (matches the sm_90 builds)."""
    smem = max(1, num_stages - 1) * 2 * block_n * block_d * elem + 6144
    return max(1, min(8, (228 * 1024) // smem))


def plan_decode(batch: int, heads: int, q_len: int, max_len: int, head_dim: int, dtype: torch.dtype, *,
                sm_count: int, num_splits: int | None = None) -> DecodePlan:
    """Choose BLOCK sizes and the key split from static sizes only.

    No split when B * H * query blocks already fills 80% of one wave (SMs x resident programs); otherwise the
    fewest splits whose grid covers the GPU in nearly whole waves (FlashAttention's efficiency rule), never
    shorter than two BLOCK_N tiles each (of Tmax), at most ``MAX_SPLITS``. ``num_splits`` (1 .. 1024) overrides
    the choice (tests use it to exercise the combine step on tiny caches).
    """
    block_d, block_n, num_warps, num_stages = _kernel_config(head_dim, dtype)
    if num_splits is not None:
        if not 1 <= num_splits <= 1024:
            raise ValueError(f"num_splits must be in 1 .. 1024; got {num_splits}")
        return DecodePlan(block_d, block_n, num_warps, num_stages, num_splits)
    n_blocks = math.ceil(max_len / block_n)
    programs = batch * heads * math.ceil(q_len / BLOCK_M)
    wave = sm_count * _ctas_per_sm(block_n, block_d, torch.empty((), dtype=dtype).element_size(), num_stages)
    max_splits = max(1, min(MAX_SPLITS, n_blocks // 2))
    if programs >= 0.8 * wave:  # the grid nearly fills the GPU already: a combine pass would only cost
        max_splits = 1
    if programs * max_splits <= wave:  # even the most splits fit in one wave: take them all
        splits = max_splits
    else:
        effs = [programs * s / wave / math.ceil(programs * s / wave) for s in range(1, max_splits + 1)]
        splits = next(s for s, e in zip(range(1, max_splits + 1), effs) if e >= 0.85 * max(effs))
    splits = math.ceil(n_blocks / math.ceil(n_blocks / splits))  # a full cache leaves no split empty
    return DecodePlan(block_d, block_n, num_warps, num_stages, splits)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (the H200's 132 when interpreting on the CPU)."""
    if device.type != "cuda":
        return _H200_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def decode_attention_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_seqlens: torch.Tensor, *, scale: float, out: torch.Tensor | None = None,
                         num_splits: int | None = None,
                         workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
                         relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Launch decode attention. Arguments must already be validated (engine.ops.decode does it).

    q (B, H, Tq, D); k_cache, v_cache (B, H, Tmax, D) with any strides; cache_seqlens (B,) int32 on q's device.
    out: optional (B, H, Tq, D) result buffer in q's dtype. num_splits: key splits (default: plan_decode's choice).
    workspace: optional (partial (B, H, Tq, S, D) fp32, lse (B, H, Tq, S) fp32) contiguous scratch for S > 1 splits
    (S = plan_decode(...).num_splits); allocated here when omitted. relative_position_bias: None, or a floating
    (H, 2L - 1) table (L >= Tmax): table[h, L - 1 + j - pos] is added to the score of key j for the query at
    pos = cache_seqlens[b] - Tq + i (indices clamped to the table). Returns out (B, H, Tq, D).
    """
    B, H, Tq, D = q.shape
    Tmax = k_cache.shape[2]
    plan = plan_decode(B, H, Tq, Tmax, D, q.dtype, sm_count=sm_count(q.device), num_splits=num_splits)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}; got {tuple(out.shape)} "
                         f"{out.dtype} on {out.device}")
    if B == 0 or H == 0:
        return out
    S = plan.num_splits
    if S > 1:
        if workspace is None:
            workspace = (torch.empty((B, H, Tq, S, D), device=q.device, dtype=torch.float32),
                         torch.empty((B, H, Tq, S), device=q.device, dtype=torch.float32))
        opart, lse = workspace
        for name, t, shape in (("workspace[0]", opart, (B, H, Tq, S, D)), ("workspace[1]", lse, (B, H, Tq, S))):
            if tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.device != q.device:
                raise ValueError(f"{name} must be a contiguous float32 tensor of shape {shape} on {q.device}; "
                                 f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    else:  # unused with one split; fp32 so both launches share one build
        opart = lse = torch.empty(1, device=q.device, dtype=torch.float32)
    grid = (S, H, B * triton.cdiv(Tq, BLOCK_M))
    launch(_decode_split_kernel, grid,
        q, k_cache, v_cache, cache_seqlens, out, opart, lse,
        float(scale) * 1.4426950408889634, Tq, Tmax,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
        HEAD_DIM=D, BLOCK_D=plan.block_d, BLOCK_M=BLOCK_M, BLOCK_N=plan.block_n,
        DOT_PRECISION=dot_precision(q.dtype, plan.block_d),
        DOT_UPCAST=q.dtype == torch.bfloat16 and q.device.type == "cpu",
        num_warps=plan.num_warps, num_stages=plan.num_stages, **bias_args(relative_position_bias, "BIAS"),
    )
    if S > 1:
        launch(_decode_combine_kernel, (Tq, H, B),
            opart, lse, out, S, *out.stride(), HEAD_DIM=D, BLOCK_D=plan.block_d,
            BLOCK_S=_combine_block_s(plan.block_d), num_warps=_COMBINE_WARPS,
        )
    return out
