"""Flash attention forward in Triton: one kernel for dense (B, H, N, D) and packed varlen (total, H, D) inputs.

Each program owns BLOCK_M query rows of one (batch, head) and streams K/V in BLOCK_N tiles, keeping an online
softmax in fp32 (running max ``m_i``, running sum ``l_i``, unnormalised accumulator ``acc``). ``exp2`` is used
with log2(e) folded into the score scale; no N x N matrix is ever written. The key loop runs in two stages:

  stage 1: key tiles that every row of the query block may see in full (no bounds or causal masks);
  stage 2: the diagonal (causal) and the ragged last tile, with element masks.

Masks: ``MASK_KIND`` 0 = none, 1 = boolean (stored as uint8, nonzero = attend), 2 = additive (any float dtype).
The mask is read tile by tile through its own strides, so a broadcast mask (stride 0) is never expanded;
``MASK_PER_ROW=False`` (key-padding masks, row stride 0) loads one BLOCK_N vector per tile instead of a tile.
Each mask tile goes straight to registers as the starting value of the q @ k^T accumulator (divided by the
softmax scale; ``common.mask_bias``), not added to the scores after the product: that keeps Triton 3.6 from
serialising the wgmma of masked calls. A query row that sees no key (all masked) outputs zeros.

Relative position bias (``HAS_BIAS``, T5): a (H, 2L - 1) table by distance, gathered tile by tile from the head's
row (``common.relative_bias``: entry L - 1 + j - pos_i for query position pos_i, aligned as the causal mask) and
added, divided by the scale, to the same starting accumulator as a mask; nothing of size N x N is built. Bias
calls take the masked (-inf safe) softmax update, as masked calls do.

K/V tiles arrive by TMA on Hopper (``KV_TMA``, host tensor descriptors) or through pointers (cp.async
pipelined); ``engine.kernels.attention.common.use_kv_tma`` decides. Dots: 16-bit inputs on tensor cores (wgmma
on Hopper); fp32 inputs as three TF32 products per dot (``PRECISION="tf32x3"``: each operand split into a TF32
part and its residual, the residuals' product dropped), accurate to fp32 rounding against a float64 reference
and on tensor cores, or one TF32 product when ``torch.backends.cuda.matmul.allow_tf32`` says so.

Causal alignment: dense calls use PyTorch's top-left alignment (query i sees keys j <= i); varlen calls use
FlashAttention's bottom-right alignment (query i sees keys j <= i + len_k - len_q). They agree when the
lengths are equal.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.backend import interpreting
from engine.kernels.attention.common import (
    LOG2E, MAX_BLOCK_N, bias_args, dropout_keep, kv_descriptors, kv_tile, mask_bias, mask_launch_args, masked_load,
    precision, relative_bias, set_kv_block_shape, shifted_rows, use_kv_tma, widen_rows,
)
from engine.kernels.launch import launch

# Per padded head dim, 16-bit inputs: (BLOCK_M, BLOCK_N, num_warps, num_stages), autotuned per key. Short on
# purpose: each entry costs a compile (seconds) on the first call of each (head dim, dtype, causal, mask kind)
# key, and a few timed runs per sequence-length bucket.
CONFIGS: dict[int, list[tuple[int, int, int, int]]] = {
    16: [(128, 64, 4, 3)],
    32: [(128, 64, 4, 3)],
    64: [(128, 128, 8, 3), (128, 64, 4, 3)],
    128: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    256: [(128, 64, 8, 2), (64, 64, 4, 2)],
}
# fp32 (three TF32 products per dot) is not autotuned: one tile per head dim that compiles without spills under
# Triton 3.6 and 3.9, on the TMA and the pointer path (the gate checks), except at D=256, where no tile avoids them
# (the TF32 split of a 64 x 256 query tile alone fills a warpgroup's registers; tests/kernels/test_sm90_gate.py).
FP32_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 32, 4, 2), 128: (64, 16, 4, 2), 256: (64, 16, 4, 2),
}
# Dropout (16-bit) is not autotuned either: one Philox draw per score keeps four 32-bit words per score live, so
# tiles of more than 32 scores per thread spill (measured at D=64: 128 x 128 with 8 warps spills 2.9 KB, 128 x 64
# with 8 warps none); the tile of each head dim with 32 scores per thread (the gate checks).
DROPOUT_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    16: (128, 64, 8, 3), 32: (128, 64, 8, 3), 64: (128, 64, 8, 3), 128: (128, 64, 8, 3), 256: (128, 64, 8, 2),
}
# One small configuration for Triton's CPU interpreter (autotuning there would be slow).
INTERPRETER_CONFIG = (32, 16, 4, 1)


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, K_DESC, V_DESC, mask_ptrs,  # K, V tiles (BLOCK_N, BLOCK_D) at key 0; mask tile at key 0
    stride_kn, stride_vn, stride_mn,
    off_z, off_h, k_row0,  # TMA: the tile's coordinates (k_row0: first key's row, packed token for varlen)
    offs_m, offs_n, offs_d, lo, hi, n_k, causal_shift, qk_scale, bias_floor, inv_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BOUNDARY: tl.constexpr, IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, KV_TMA: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr, PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    bias_rows, HAS_BIAS: tl.constexpr,  # HAS_BIAS: (BLOCK_M,) pointers into the table (see common.relative_bias)
    seed=0, drop_base=0, dropout_p=0.0, DROPOUT: tl.constexpr = False, ROWS64: tl.constexpr = False,
):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < n_k
        step = widen_rows(start_n, ROWS64)  # key x key stride can pass 2**31
        k = kv_tile(k_ptrs + step * stride_kn, K_DESC, off_z, off_h, k_row0 + start_n, col_ok, d_ok,
                    BOUNDARY, not EVEN_D, KV_TMA, IS_VARLEN, BLOCK_N, BLOCK_D)
        if DOT_UPCAST:
            k = k.to(tl.float32)
        if HAS_BIAS:  # (BLOCK_M, BLOCK_N): q . k + (relative bias [+ mask]) / scale
            init = relative_bias(bias_rows, cols, inv_scale)
            if MASK_KIND != 0:
                init += mask_bias(mask_ptrs, cols, col_ok, stride_mn, bias_floor, inv_scale, MASK_KIND, MASK_PER_ROW,
                                  BOUNDARY, BLOCK_M, BLOCK_N)
            qk = tl.dot(q, tl.trans(k), init, input_precision=PRECISION)
        elif MASK_KIND != 0:  # (BLOCK_M, BLOCK_N): q . k + mask / scale
            qk = tl.dot(q, tl.trans(k), mask_bias(mask_ptrs, cols, col_ok, stride_mn, bias_floor, inv_scale,
                                                  MASK_KIND, MASK_PER_ROW, BOUNDARY, BLOCK_M, BLOCK_N),
                        input_precision=PRECISION)
        else:
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        if (MASK_KIND == 0) and (not HAS_BIAS) and (not BOUNDARY):
            # Hot path: scale the row max, not every score, so the exponent is one FMA (needs qk_scale > 0).
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        else:
            s = qk * qk_scale  # log2 units
            if BOUNDARY:
                ok = cols[None, :] < n_k
                if IS_CAUSAL:
                    ok = ok & (cols[None, :] <= offs_m[:, None] + causal_shift)
                s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row can be all -inf here: keep exp2 away from (-inf) - (-inf).
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:  # the softmax sum counts every key; the product with V only the kept ones (see dropout_keep)
            p = tl.where(dropout_keep(seed, drop_base, offs_m[:, None], cols[None, :], n_k, dropout_p), p, 0.0)
        acc = acc * alpha[:, None]
        v = kv_tile(v_ptrs + step * stride_vn, V_DESC, off_z, off_h, k_row0 + start_n, col_ok, d_ok,
                    BOUNDARY, not EVEN_D, KV_TMA, IS_VARLEN, BLOCK_N, BLOCK_D)
        p = p.to(v.dtype)
        if DOT_UPCAST:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p, v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out,  # dense: (B, H, Nq|Nk, D) with any strides; varlen: (total, H, D)
    Mask,  # dense only: broadcast view of (B, H, Nq, Nk), uint8 (bool) or float (additive); else unused
    CU_Q, CU_K,  # varlen only: (B + 1,) int32 cumulative lengths; else unused
    K_DESC, V_DESC,  # KV_TMA only: tensor descriptors of K and V (rank 4 dense, rank 3 varlen); else None
    qk_scale,  # softmax scale * log2(e)
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_oz, stride_oh, stride_om, stride_ok,
    stride_mz, stride_mh, stride_mm, stride_mn,
    H, N_Q, N_K,  # heads; dense sequence lengths (varlen: ignored)
    N_BUCKET,  # autotuning key only: power-of-two bucket of the (max) query length
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    KV_TMA: tl.constexpr = False,
    DOT_UPCAST: tl.constexpr = False,  # interpreter only: bf16 tl.dot is wrong there, so dot in fp32
    Bias=None, stride_bh=0, stride_bs=0, bias_len=0,  # HAS_BIAS only: common.shifted_table of the relative
    # position table (H, 2 * bias_len - 1)
    HAS_BIAS: tl.constexpr = False,
    LSE=None, stride_lp=0, stride_lz=0, stride_lh=0,  # STORE_LSE: (2, B, H, Nq) / varlen (2, H, total_q) fp32
    seed=0, dropout_p=0.0,  # DROPOUT: philox seed, drop probability (common.dropout_keep)
    STORE_LSE: tl.constexpr = False, DROPOUT: tl.constexpr = False,
    ROWS64: tl.constexpr = False,  # a row (key) index x its stride can pass 2**31: 64-bit row offsets (rows64_needed)
):
    if IS_CAUSAL:  # heaviest query blocks (most keys) first: better tail balance
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    if IS_VARLEN:
        q_start = tl.load(CU_Q + off_z)
        n_q = tl.load(CU_Q + off_z + 1) - q_start
        k_start = tl.load(CU_K + off_z)
        n_k = tl.load(CU_K + off_z + 1) - k_start
        causal_shift = n_k - n_q  # bottom-right (FlashAttention)
        q_off = q_start.to(tl.int64) * stride_qm + off_h.to(tl.int64) * stride_qh
        k_off = k_start.to(tl.int64) * stride_kn + off_h.to(tl.int64) * stride_kh
        v_off = k_start.to(tl.int64) * stride_vn + off_h.to(tl.int64) * stride_vh
        o_off = q_start.to(tl.int64) * stride_om + off_h.to(tl.int64) * stride_oh
    else:
        n_q = N_Q
        n_k = N_K
        k_start = 0
        causal_shift = 0  # top-left (PyTorch)
        q_off = off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
        k_off = off_z.to(tl.int64) * stride_kz + off_h.to(tl.int64) * stride_kh
        v_off = off_z.to(tl.int64) * stride_vz + off_h.to(tl.int64) * stride_vh
        o_off = off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
    m0 = start_m * BLOCK_M
    if m0 >= n_q:
        return

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n_q
    rows_m = widen_rows(offs_m, ROWS64)
    offs_kn = widen_rows(offs_n, ROWS64)
    q_ptrs = Q + q_off + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qk
    q = masked_load(q_ptrs, row_ok[:, None], offs_d[None, :] < HEAD_DIM, True, HEAD_DIM != BLOCK_D)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    k_ptrs = K + k_off + offs_kn[:, None] * stride_kn + offs_d[None, :] * stride_kk
    v_ptrs = V + v_off + offs_kn[:, None] * stride_vn + offs_d[None, :] * stride_vk
    mask_ptrs = Mask
    if MASK_KIND != 0:
        mask_ptrs = Mask + off_z.to(tl.int64) * stride_mz + off_h.to(tl.int64) * stride_mh
        if MASK_PER_ROW:
            # Clamp rows past the end instead of masking the load: those rows are never stored.
            rows = tl.minimum(offs_m, n_q - 1)
            mask_ptrs = mask_ptrs + rows[:, None].to(tl.int64) * stride_mm
    bias_rows = Bias
    if HAS_BIAS:  # query row i sits at position i + causal_shift (the causal alignment); rows past the end clamped
        pos = tl.minimum(offs_m, n_q - 1) + causal_shift
        bias_rows = shifted_rows(Bias, off_h, stride_bh, stride_bs, bias_len, pos)

    # Masks start the q @ k^T product in its own units (divided by the softmax scale), floored so a finite mask
    # stays finite (see common.mask_bias).
    inv_scale = 1.4426950408889634 / qk_scale  # log2(e) / (scale * log2(e))
    bias_floor = -2.0e38 * tl.minimum(1.0, qk_scale / 1.4426950408889634)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key range: [0, full_end) is visible to every row of this block; [full_end, hi) needs element masks.
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(n_k, m0 + BLOCK_M + causal_shift), 0)
        full_end = tl.maximum(tl.minimum(n_k, m0 + 1 + causal_shift), 0)
    else:
        hi = n_k
        full_end = n_k
    full_end = (full_end // BLOCK_N) * BLOCK_N

    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, K_DESC, V_DESC, mask_ptrs, stride_kn, stride_vn, stride_mn,
        off_z, off_h, k_start, offs_m, offs_n, offs_d, 0, full_end, n_k, causal_shift, qk_scale, bias_floor,
        inv_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, IS_CAUSAL, IS_VARLEN, KV_TMA, MASK_KIND, MASK_PER_ROW,
        PRECISION, DOT_UPCAST, bias_rows, HAS_BIAS, seed, off_zh.to(tl.int64) << 32, dropout_p, DROPOUT,
        ROWS64,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, K_DESC, V_DESC, mask_ptrs, stride_kn, stride_vn, stride_mn,
        off_z, off_h, k_start, offs_m, offs_n, offs_d, full_end, hi, n_k, causal_shift, qk_scale, bias_floor,
        inv_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, True, IS_CAUSAL, IS_VARLEN, KV_TMA, MASK_KIND, MASK_PER_ROW,
        PRECISION, DOT_UPCAST, bias_rows, HAS_BIAS, seed, off_zh.to(tl.int64) << 32, dropout_p, DROPOUT,
        ROWS64,
    )

    # Rows that saw no key have l_i == 0 and acc == 0: they output zeros.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    if STORE_LSE:  # the softmax statistics the backward needs (see bwd.py)
        l_off = off_z.to(tl.int64) * stride_lz + off_h.to(tl.int64) * stride_lh
        if IS_VARLEN:
            l_off += q_start
        tl.store(LSE + l_off + offs_m, tl.where(l_i == 0.0, float("inf"), m_i), mask=row_ok)
        tl.store(LSE + stride_lp + l_off + offs_m, tl.math.log2(l_safe), mask=row_ok)
    if DROPOUT:  # kept probabilities are scaled by 1 / (1 - p)
        l_safe = l_safe * (1.0 - dropout_p)
    out = acc / l_safe[:, None]
    o_ptrs = Out + o_off + rows_m[:, None] * stride_om + offs_d[None, :] * stride_ok
    if HEAD_DIM == BLOCK_D:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


# ----------------------------------------------------------------------------------------------------------------
# Host side: configuration choice, launch, AOT specifications.

def block_d_of(head_dim: int) -> int:
    """Head dim padded to the power of two the kernel tiles with (at least 16, the smallest tl.dot size)."""
    return max(16, triton.next_power_of_2(head_dim))


def seqlen_bucket(n: int) -> int:
    """Power-of-two bucket of a query length, 64 .. 16384: the autotuner's sequence-length key."""
    return min(max(triton.next_power_of_2(max(n, 1)), 64), 16384)


def smem_estimate(block_m: int, block_n: int, num_stages: int, block_d: int, elem: int,
                  mask_per_row: bool = False) -> int:
    """Bytes of shared memory a configuration needs: the Q tile, plus num_stages buffers of the K and V tiles for
    the pipelined key loop, plus, for a per-row mask (or a relative position bias: also a tile per row block),
    the 2 bytes per score that Triton's layout conversion of the mask tile into the accumulator's layout stages
    (key-padding vectors need none; the sm_90 builds agree, see the gate's table)."""
    mask = 2 * block_m * block_n if mask_per_row else 0
    return block_m * block_d * elem + 2 * block_n * block_d * elem * num_stages + mask


@functools.lru_cache(maxsize=None)
def _device_smem(index: int) -> int:
    """Shared memory one block may opt into on CUDA device ``index`` (Triton's driver, else PyTorch's)."""
    try:
        return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - older drivers: ask PyTorch, else assume the smallest common value
        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 0) or 101376)


def prune_configs(configs: list, *, block_d: int, elem: int, bucket: int, smem_limit: int,
                  mask_per_row: bool = False) -> list:
    """Drop configurations that overflow shared memory, and BLOCK_M larger than the sequence bucket."""
    fits = [c for c in configs
            if smem_estimate(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, block_d, elem,
                             mask_per_row) <= smem_limit]
    if not fits:  # the last entry of each list is the smallest; keep it rather than nothing
        fits = configs[-1:]
    short = [c for c in fits if c.kwargs["BLOCK_M"] <= bucket]
    return short or fits[-1:]


def _early_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    q = args["Q"]
    return prune_configs(configs, block_d=args["BLOCK_D"], elem=q.element_size(), bucket=args["N_BUCKET"],
                         smem_limit=_device_smem(q.device.index or 0),
                         mask_per_row=(args["MASK_KIND"] != 0 and bool(args["MASK_PER_ROW"]))
                         or bool(args.get("HAS_BIAS", False)))  # a bias tile is staged like a per-row mask


def _configs(block_d: int) -> list:
    # The pre-hook sizes the K/V descriptors' boxes (TMA) for the configuration the autotuner runs.
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=set_kv_block_shape)
            for bm, bn, w, s in CONFIGS[block_d]]


@functools.lru_cache(maxsize=None)
def _tuned_kernel(block_d: int):
    """The autotuned kernel for one padded head dim (built lazily: nothing compiles at import)."""
    return triton.autotune(
        configs=_configs(block_d),
        key=["N_BUCKET", "HEAD_DIM", "IS_CAUSAL", "IS_VARLEN", "MASK_KIND", "MASK_PER_ROW", "PRECISION", "KV_TMA",
             "HAS_BIAS", "STORE_LSE", "DROPOUT"],
        prune_configs_by={"early_config_prune": _early_prune},
    )(_attn_fwd_kernel)


def rows64_needed(n_q: int, q_row_strides, n_k: int, k_row_strides) -> bool:
    """Whether a row index x its row stride inside one sequence can reach 2**31 elements: n_q query (output) rows
    with the largest of ``q_row_strides``, or n_k key rows with the largest of ``k_row_strides``. The kernels then
    take 64-bit row offsets and loop steps (ROWS64); only then: 64-bit products unconditionally spill and serialise
    the wgmma of sm_90 builds (the backward's launcher takes the same rule from here)."""
    return max(n_q * max(map(abs, q_row_strides)), n_k * max(map(abs, k_row_strides))) >= 2 ** 31


def _launch(q, k, v, out, mask, cu_q, cu_k, scale, strides, h, n_q, n_k, grid_m, batch, *, head_dim, causal,
            varlen, mask_kind, mask_per_row, config, kv_tma, bias, lse, lse_strides, dropout):
    block_d = block_d_of(head_dim)
    if config is None and interpreting():
        config = INTERPRETER_CONFIG
    elif config is None and q.dtype == torch.float32:
        config = FP32_CONFIGS[block_d]
    elif config is None and dropout is not None:
        config = DROPOUT_CONFIGS[block_d]
    kv_tma = use_kv_tma(k, v) if kv_tma is None else kv_tma
    descs = kv_descriptors(k, v, config[1] if config else CONFIGS[block_d][0][1], block_d) if kv_tma else (None,) * 2
    args = (q, k, v, out, mask, cu_q, cu_k, *descs, scale * LOG2E, *strides, h, n_q, n_k, seqlen_bucket(grid_m))
    flags = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, IS_VARLEN=varlen, MASK_KIND=mask_kind,
                 MASK_PER_ROW=mask_per_row, PRECISION=precision(q.dtype), KV_TMA=kv_tma)
    if bias is not None and config is not None and config[1] > MAX_BLOCK_N:
        raise ValueError(f"a relative position bias needs BLOCK_N <= {MAX_BLOCK_N} (the shifted table's padding); "
                         f"got config {config}")
    flags.update(bias_args(bias, "Bias", shifted=True))
    if lse is not None:
        flags.update(LSE=lse, stride_lp=lse.stride(0), stride_lz=lse_strides[0], stride_lh=lse_strides[1],
                     STORE_LSE=True)
    if dropout is not None:
        flags.update(seed=dropout[0], dropout_p=dropout[1], DROPOUT=True)
    # Rows per sequence: at most grid_m queries; keys: n_k (dense), else at most the packed total (the varlen
    # forward is not told the longest key sequence).
    if rows64_needed(grid_m, (strides[2], strides[14]), n_k if not varlen else k.shape[0], (strides[6], strides[10])):
        flags["ROWS64"] = True
    if config is not None:
        bm, bn, warps, stages = config
        if interpreting() and q.dtype == torch.bfloat16:
            # Triton's interpreter multiplies bf16 tiles as raw uint16 bits; do the dots in fp32 there
            # (operands are still rounded to bf16 first, as on the GPU).
            flags["DOT_UPCAST"] = True
        grid = (triton.cdiv(grid_m, bm), batch * h)
        launch(_attn_fwd_kernel, grid, *args, **flags, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
               num_stages=stages)
    else:
        grid = lambda meta: (triton.cdiv(grid_m, meta["BLOCK_M"]), batch * h)  # noqa: E731
        launch(_tuned_kernel(block_d), grid, *args, **flags)
    return out


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, *,
                  mask: torch.Tensor | None, causal: bool, scale: float,
                  config: tuple[int, int, int, int] | None = None, kv_tma: bool | None = None,
                  relative_position_bias: torch.Tensor | None = None, lse: torch.Tensor | None = None,
                  dropout: tuple[int, float] | None = None) -> torch.Tensor:
    """Dense attention into ``out``. q, out: (B, H, Nq, D); k, v: (B, H, Nk, D); any strides.

    mask: None, or a view of shape (B, H, Nq, Nk) (stride 0 on broadcast dims), bool or floating (additive).
    relative_position_bias: None, or a floating (H, 2L - 1) table with L >= max(Nq, Nk): table[h, L - 1 + j - i]
    is added to the score of query i and key j after the scale (top-left positions; engine.ops.position_bias).
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to skip autotuning (tests); None = autotune
    (the interpreter always uses ``INTERPRETER_CONFIG``). kv_tma: load K/V tiles by TMA (True), through
    pointers (False), or as ``common.use_kv_tma`` decides (None). lse: None, or a contiguous (2, B, H, Nq) fp32
    buffer that receives each row's softmax statistics, which the backward (``bwd.attention_bwd``) needs: the
    maximum of the scaled scores in base 2 (+inf for a row that sees no key) and log2 of the sum of exp2(score -
    maximum). dropout: None, or (seed, p): drop each probability with probability p
    (``common.dropout_keep``'s Philox mask), scaling the kept ones by 1 / (1 - p). Validation is the caller's job.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    mask_arg, mask_kind, per_row, mstr = mask_launch_args(mask, q)
    strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *mstr)
    return _launch(q, k, v, out, mask_arg, q, q, scale, strides, h, n_q, n_k, n_q, b, head_dim=d, causal=causal,
                   varlen=False, mask_kind=mask_kind, mask_per_row=per_row, config=config, kv_tma=kv_tma,
                   bias=relative_position_bias, lse=lse, lse_strides=(h * n_q, n_q), dropout=dropout)


def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, cu_q: torch.Tensor,
               cu_k: torch.Tensor, max_seqlen_q: int, *, causal: bool, scale: float,
               config: tuple[int, int, int, int] | None = None, kv_tma: bool | None = None,
               relative_position_bias: torch.Tensor | None = None, lse: torch.Tensor | None = None,
               dropout: tuple[int, float] | None = None) -> torch.Tensor:
    """Packed attention into ``out``. q, out: (total_q, H, D); k, v: (total_k, H, D); cu_q, cu_k: (B + 1,) int32.

    Causal is bottom-right aligned per sequence (FlashAttention). config, kv_tma, dropout: as for
    ``attention_fwd``; lse: None or a contiguous (2, H, total_q) fp32 buffer.
    relative_position_bias: None, or a floating (H, 2L - 1) table with L >= every sequence's query and key
    lengths, aligned bottom-right as the causal mask: query i of a sequence sits at i + len_k - len_q.
    Validation is the caller's job (the table's length included: ops.varlen_attention checks it).
    """
    _, h, d = q.shape
    batch = cu_q.shape[0] - 1

    def s4(t):  # (total, H, D) strides as (z, h, m, d) with no batch stride
        return (0, t.stride(1), t.stride(0), t.stride(2))

    strides = (*s4(q), *s4(k), *s4(v), *s4(out), 0, 0, 0, 0)
    return _launch(q, k, v, out, q, cu_q, cu_k, scale, strides, h, 0, 0, max_seqlen_q, batch, head_dim=d,
                   causal=causal, varlen=True, mask_kind=0, mask_per_row=False, config=config, kv_tma=kv_tma,
                   bias=relative_position_bias, lse=lse, lse_strides=(0, q.shape[0]), dropout=dropout)
