"""Flash attention forward kernels in Triton: one kernel for dense (B, H, N, D) and packed varlen (total, H, D)
inputs. ``fwd`` launches them (tile tables, autotuning, the public attention_fwd / varlen_fwd).

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

import triton
import triton.language as tl

from engine.kernels.attention.common import (
    dropout_keep, kv_tile, mask_bias, masked_load, relative_bias, shifted_rows, widen_rows,
)


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
