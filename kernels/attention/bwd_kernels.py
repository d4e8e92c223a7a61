"""Flash attention backward kernels in Triton: dense (B, H, N, D) and packed varlen (total, H, D), the forward's
masks, causal alignments and dropout. ``bwd`` launches them (tile tables, attention_bwd / varlen_bwd).

The forward saves only its output O and two softmax statistics per query row, ``lse`` (``fwd`` with ``lse=``:
(2, B, H, Nq) / (2, H, total_q) fp32, base 2, scores scaled by scale * log2(e)): the row maximum m (+inf for a row
that sees no key) and log2 of the row sum l. The backward recomputes the probabilities tile by tile,
P = exp2(s - m - log2(l)), never an N x N matrix. (One log-sum-exp m + log2(l) would be cheaper by a subtraction
per score, but loses log2(l) to rounding when m is huge: a row whose every key is masked by a most-negative finite
additive mask, which PyTorch keeps finite (it averages those keys), as Hugging Face's padding masks make.)

  1. ``_attn_bwd_preprocess``: Delta = rowsum(dO * O) per query row (fp32, the layout of one plane of lse);
  2. ``_attn_bwd_dkdv_kernel``: one program per BLOCK_N keys of one (batch, head) loops over the query blocks that
     can see them and accumulates dV += P^T dO and dK += scale * dS^T Q, dS = P * (dP - Delta), dP = dO V^T;
  3. ``_attn_bwd_dq_kernel``: one program per BLOCK_M queries loops over the key blocks it sees (the forward's
     two stages: full tiles, then the diagonal / ragged tile with element masks) and accumulates dQ += scale * dS K.

dQ gets its own kernel rather than atomic adds from (2): every gradient element is written once by one program,
so results are deterministic (bit-identical run to run), need no zero-filled fp32 buffer and no conversion pass;
the price is computing q . k and dO . v twice. The dK/dV kernel works on transposed tiles (keys as rows: S^T =
K Q^T) so that its accumulators stay in the layout of the dots that feed them.

Rows that see no key (m = +inf) have P = 0: zero dQ, no contribution to dK / dV, as on the PyTorch path (which
zeroes those outputs after the product). Masks get no gradient. Dropout regenerates the forward's keep mask
(``common.dropout_keep``, same seed): with Z the kept entries scaled by 1 / (1 - p), dV = (P * Z)^T dO and
dP = (dO V^T) * Z; Delta = rowsum(dO * O) is still rowsum(P * dP).

K/V, Q and dO tiles are loaded through pointers (cp.async pipelined); the TMA path of the forward is not used here.
"""
from __future__ import annotations

import triton
import triton.language as tl

from engine.kernels.attention.common import dropout_keep, mask_bias, mask_units, masked_load, widen_rows


@triton.jit
def _attn_bwd_preprocess(
    O, DO, Delta,  # O, dO: (Z, H, M, D) with any strides (varlen: (1, H, total, D) views); Delta: lse's layout
    stride_oz, stride_oh, stride_om, stride_ok,
    stride_dz, stride_dh, stride_dm, stride_dk,
    stride_lz, stride_lh,
    H, N_ROWS,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Delta[z, h, m] = sum_d O[z, h, m, d] * dO[z, h, m, d] in fp32."""
    off_zh = tl.program_id(1)
    off_z = (off_zh // H).to(tl.int64)
    off_h = (off_zh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = rows < N_ROWS
    r64 = rows[:, None].to(tl.int64)  # packed rows x token stride (varlen) can pass 2**31
    o = masked_load(O + off_z * stride_oz + off_h * stride_oh + r64 * stride_om + offs_d[None, :] * stride_ok,
                    ok[:, None], offs_d[None, :] < HEAD_DIM, True, HEAD_DIM != BLOCK_D)
    do = masked_load(DO + off_z * stride_dz + off_h * stride_dh + r64 * stride_dm
                     + offs_d[None, :] * stride_dk, ok[:, None], offs_d[None, :] < HEAD_DIM, True, HEAD_DIM != BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + off_z * stride_lz + off_h * stride_lh + rows, delta, mask=ok)


@triton.jit
def _sequence(CU_Q, CU_K, H, N_Q, N_K, IS_VARLEN: tl.constexpr):
    """This program's (batch * H + head, batch and head as int64, first query row, first key row, n_q, n_k, causal
    shift) for grid axis 1 = batch * H + head (varlen: packed tokens from cu_seqlens, bottom-right causal; dense:
    (0, 0, N_Q, N_K), top-left causal), as the forward kernel computes them."""
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    if IS_VARLEN:
        q_start = tl.load(CU_Q + off_z)
        n_q = tl.load(CU_Q + off_z + 1) - q_start
        k_start = tl.load(CU_K + off_z)
        n_k = tl.load(CU_K + off_z + 1) - k_start
        shift = n_k - n_q
    else:
        q_start = 0
        k_start = 0
        n_q = N_Q
        n_k = N_K
        shift = 0
    return off_zh, off_z.to(tl.int64), (off_zh % H).to(tl.int64), q_start, k_start, n_q, n_k, shift


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_ptrs, mask_col,  # mask_col: (BLOCK_N, BLOCK_M) key-pad
    stride_qm, stride_dom, stride_mm, stride_lp,
    offs_n, offs_m0, offs_d, lo, hi, n_q, n_k, causal_shift, qk_scale, bias_floor, inv_scale,
    seed, drop_base, dropout_p, inv_keep,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL_MASK: tl.constexpr, MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr, DOT_UPCAST: tl.constexpr, ROWS64: tl.constexpr,
):
    """dK, dV (BLOCK_N, BLOCK_D) fp32 += the contributions of query rows [lo, hi) (BLOCK_M at a time)."""
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m0
        row_ok = rows < n_q
        step = widen_rows(start_m, ROWS64)  # row x row stride can pass 2**31
        # Rows past the end: q = dO = 0, m = +inf, so P = 0 there and they add nothing.
        q = masked_load(q_ptrs + step * stride_qm, row_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
        do = masked_load(do_ptrs + step * stride_dom, row_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
        m = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
        log2l = tl.load(lse_ptr + stride_lp + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
        if DOT_UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # S^T (BLOCK_N, BLOCK_M) = K Q^T + mask^T / scale, in log2 units
        if MASK_PER_ROW and MASK_KIND != 0:
            # A per-row tile is added to the scaled scores: as the start of the product (or added to it, which
            # Triton folds into the start) it makes ptxas serialize this kernel's wgmma (Triton 3.9).
            mval = tl.load(mask_ptrs + tl.minimum(rows, n_q - 1)[None, :].to(tl.int64) * stride_mm)
            sT = (tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
                  + mask_units(mval, bias_floor, inv_scale, MASK_KIND) * qk_scale)
        elif MASK_KIND != 0:  # a key-padding mask, read once before the loop, starts the product
            sT = tl.dot(k, tl.trans(q), mask_col, input_precision=PRECISION) * qk_scale
        else:
            sT = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        pT = tl.math.exp2(sT - m[None, :] - log2l[None, :])
        if CAUSAL_MASK:
            pT = tl.where(offs_n[:, None] <= rows[None, :] + causal_shift, pT, 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO V^T)^T
        if DROPOUT:
            keep = dropout_keep(seed, drop_base, rows[None, :], offs_n[:, None], n_k, dropout_p)
            pdT = tl.where(keep, pT, 0.0)  # the 1 / (1 - p) of dV is applied once at the store
            dpT = tl.where(keep, dpT * inv_keep, 0.0)
        else:
            pdT = pT
        pdT = pdT.to(q_ptrs.dtype.element_ty)
        if DOT_UPCAST:
            pdT = pdT.to(tl.float32)
        dv = tl.dot(pdT, do, dv, input_precision=PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(q_ptrs.dtype.element_ty)
        if DOT_UPCAST:
            dsT = dsT.to(tl.float32)
        dk = tl.dot(dsT, q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV,  # dense: (B, H, N, D) with any strides; varlen: (total, H, D)
    LSE, Delta,  # (2, B, H, Nq) / varlen (2, H, total_q) fp32 (stride_lp, stride_lz, stride_lh, 1); Delta: 1 plane
    Mask,  # dense only: broadcast view of (B, H, Nq, Nk), uint8 (bool) or float (additive); else unused
    CU_Q, CU_K,  # varlen only: (B + 1,) int32 cumulative lengths
    sm_scale, qk_scale,  # softmax scale; softmax scale * log2(e)
    seed, dropout_p,  # DROPOUT only
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_doz, stride_doh, stride_dom, stride_dok,
    stride_dkz, stride_dkh, stride_dkn, stride_dkk,
    stride_dvz, stride_dvh, stride_dvn, stride_dvk,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_lp, stride_lz, stride_lh,
    H, N_Q, N_K,  # heads; dense sequence lengths (varlen: ignored)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr, PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_UPCAST: tl.constexpr = False, ROWS64: tl.constexpr = False,
):
    off_zh, zi, hi, q_start, k_start, n_q, n_k, shift = _sequence(CU_Q, CU_K, H, N_Q, N_K, IS_VARLEN)
    n0 = tl.program_id(0) * BLOCK_N
    if n0 >= n_k:
        return
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < n_k
    d_ok = offs_d < HEAD_DIM
    rows_k = k_start + offs_n  # packed rows (varlen) or positions (dense, k_start = 0)
    k = masked_load(K + zi * stride_kz + hi * stride_kh + rows_k[:, None].to(tl.int64) * stride_kn
                    + offs_d[None, :] * stride_kk, col_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
    v = masked_load(V + zi * stride_vz + hi * stride_vh + rows_k[:, None].to(tl.int64) * stride_vn
                    + offs_d[None, :] * stride_vk, col_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
    if DOT_UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_row0 = q_start.to(tl.int64)
    q_ptrs = Q + zi * stride_qz + hi * stride_qh + (q_row0 + offs_m0[:, None]) * stride_qm + offs_d[None, :] * stride_qk
    do_ptrs = (DO + zi * stride_doz + hi * stride_doh + (q_row0 + offs_m0[:, None]) * stride_dom
               + offs_d[None, :] * stride_dok)
    l_off = zi * stride_lz + hi * stride_lh + q_row0
    lse_ptr = LSE + l_off
    delta_ptr = Delta + l_off

    inv_scale = 1.4426950408889634 / qk_scale
    bias_floor = -2.0e38 * tl.minimum(1.0, qk_scale / 1.4426950408889634)
    mask_ptrs = Mask
    mask_col = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    if MASK_KIND != 0:  # (BLOCK_N, 1) pointers of this block's keys (clamped: keys past the end are never stored)
        cols = tl.minimum(offs_n, n_k - 1).to(tl.int64)
        mask_ptrs = Mask + zi * stride_mz + hi * stride_mh + cols[:, None] * stride_mn
        if not MASK_PER_ROW:  # a key-padding mask is the same for every query block: read it once
            mask_col = tl.broadcast_to(mask_units(tl.load(mask_ptrs), bias_floor, inv_scale, MASK_KIND),
                                       (BLOCK_N, BLOCK_M))
    inv_keep = 1.0 / (1.0 - dropout_p)
    drop_base = off_zh.to(tl.int64) << 32

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if IS_CAUSAL:
        # Query i sees key j when j <= i + shift: blocks from m_lo can see this key block; from m_full every row
        # of a block sees every key of it (no element mask).
        m_lo = (tl.maximum(n0 - shift, 0) // BLOCK_M) * BLOCK_M
        m_full = tl.maximum(tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M, m_lo)
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_ptrs, mask_col, stride_qm, stride_dom, stride_mm,
            stride_lp, offs_n, offs_m0, offs_d, m_lo, tl.minimum(m_full, n_q), n_q, n_k, shift, qk_scale, bias_floor, inv_scale,
            seed, drop_base, dropout_p, inv_keep, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, True, MASK_KIND, MASK_PER_ROW,
            PRECISION, DROPOUT, DOT_UPCAST, ROWS64,
        )
    else:
        m_full = 0
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, mask_ptrs, mask_col, stride_qm, stride_dom, stride_mm,
        stride_lp, offs_n, offs_m0, offs_d, m_full, n_q, n_q, n_k, shift, qk_scale, bias_floor, inv_scale,
        seed, drop_base, dropout_p, inv_keep, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, MASK_KIND, MASK_PER_ROW,
        PRECISION, DROPOUT, DOT_UPCAST, ROWS64,
    )
    if DROPOUT:
        dv = dv * inv_keep
    dk = dk * sm_scale
    ok = col_ok[:, None] & d_ok[None, :]
    dk_ptrs = DK + zi * stride_dkz + hi * stride_dkh + rows_k[:, None].to(tl.int64) * stride_dkn + offs_d[None, :] * stride_dkk
    dv_ptrs = DV + zi * stride_dvz + hi * stride_dvh + rows_k[:, None].to(tl.int64) * stride_dvn + offs_d[None, :] * stride_dvk
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, m, log2l, delta, k_ptrs, v_ptrs, mask_ptrs, stride_kn, stride_vn, stride_mn,
    offs_m, offs_n, offs_d, lo, hi, n_k, causal_shift, qk_scale, bias_floor, inv_scale,
    seed, drop_base, dropout_p, inv_keep,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BOUNDARY: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, DOT_UPCAST: tl.constexpr, ROWS64: tl.constexpr,
):
    """dQ (BLOCK_M, BLOCK_D) fp32 += dS K over keys [lo, hi); BOUNDARY: the tiles that need element masks."""
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < n_k
        step = widen_rows(start_n, ROWS64)  # key x key stride can pass 2**31
        k = masked_load(k_ptrs + step * stride_kn, col_ok[:, None], d_ok[None, :], BOUNDARY, HEAD_DIM != BLOCK_D)
        v = masked_load(v_ptrs + step * stride_vn, col_ok[:, None], d_ok[None, :], BOUNDARY, HEAD_DIM != BLOCK_D)
        if DOT_UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if MASK_KIND != 0:
            qk = tl.dot(q, tl.trans(k), mask_bias(mask_ptrs, cols, col_ok, stride_mn, bias_floor, inv_scale,
                                                  MASK_KIND, MASK_PER_ROW, BOUNDARY, BLOCK_M, BLOCK_N),
                        input_precision=PRECISION)
        else:
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.math.exp2(qk * qk_scale - m[:, None] - log2l[:, None])
        if BOUNDARY:
            ok = cols[None, :] < n_k
            if IS_CAUSAL:
                ok = ok & (cols[None, :] <= offs_m[:, None] + causal_shift)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            keep = dropout_keep(seed, drop_base, offs_m[:, None], cols[None, :], n_k, dropout_p)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = (p * (dp - delta[:, None])).to(k_ptrs.dtype.element_ty)
        if DOT_UPCAST:
            ds = ds.to(tl.float32)
        dq = tl.dot(ds, k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, Delta, Mask, CU_Q, CU_K,  # as _attn_bwd_dkdv_kernel; DQ: q's shape, any strides
    sm_scale, qk_scale, seed, dropout_p,
    stride_qz, stride_qh, stride_qm, stride_qk,
    stride_kz, stride_kh, stride_kn, stride_kk,
    stride_vz, stride_vh, stride_vn, stride_vk,
    stride_doz, stride_doh, stride_dom, stride_dok,
    stride_dqz, stride_dqh, stride_dqm, stride_dqk,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_lp, stride_lz, stride_lh,
    H, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr,
    MASK_KIND: tl.constexpr, MASK_PER_ROW: tl.constexpr, PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_UPCAST: tl.constexpr = False, ROWS64: tl.constexpr = False,
):
    if IS_CAUSAL:  # heaviest query blocks first, as the forward
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    off_zh, zi, hi, q_start, k_start, n_q, n_k, shift = _sequence(CU_Q, CU_K, H, N_Q, N_K, IS_VARLEN)
    m0 = start_m * BLOCK_M
    if m0 >= n_q:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n_q
    d_ok = offs_d < HEAD_DIM
    rows_q = (q_start + offs_m).to(tl.int64)
    q = masked_load(Q + zi * stride_qz + hi * stride_qh + rows_q[:, None] * stride_qm + offs_d[None, :] * stride_qk,
                    row_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
    do = masked_load(DO + zi * stride_doz + hi * stride_doh + rows_q[:, None] * stride_dom
                     + offs_d[None, :] * stride_dok, row_ok[:, None], d_ok[None, :], True, HEAD_DIM != BLOCK_D)
    l_off = zi * stride_lz + hi * stride_lh + rows_q
    m = tl.load(LSE + l_off, mask=row_ok, other=float("inf"))
    log2l = tl.load(LSE + stride_lp + l_off, mask=row_ok, other=0.0)
    delta = tl.load(Delta + l_off, mask=row_ok, other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    k_row0 = k_start.to(tl.int64)
    k_ptrs = K + zi * stride_kz + hi * stride_kh + (k_row0 + offs_n[:, None]) * stride_kn + offs_d[None, :] * stride_kk
    v_ptrs = V + zi * stride_vz + hi * stride_vh + (k_row0 + offs_n[:, None]) * stride_vn + offs_d[None, :] * stride_vk
    mask_ptrs = Mask
    if MASK_KIND != 0:
        mask_ptrs = Mask + zi * stride_mz + hi * stride_mh
        if MASK_PER_ROW:
            mask_ptrs = mask_ptrs + tl.minimum(offs_m, n_q - 1)[:, None].to(tl.int64) * stride_mm
    inv_scale = 1.4426950408889634 / qk_scale
    bias_floor = -2.0e38 * tl.minimum(1.0, qk_scale / 1.4426950408889634)
    inv_keep = 1.0 / (1.0 - dropout_p)
    drop_base = off_zh.to(tl.int64) << 32

    if IS_CAUSAL:
        hi_n = tl.maximum(tl.minimum(n_k, m0 + BLOCK_M + shift), 0)
        full_end = tl.maximum(tl.minimum(n_k, m0 + 1 + shift), 0)
    else:
        hi_n = n_k
        full_end = n_k
    full_end = (full_end // BLOCK_N) * BLOCK_N
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _bwd_dq_inner(
        dq, q, do, m, log2l, delta, k_ptrs, v_ptrs, mask_ptrs, stride_kn, stride_vn, stride_mn, offs_m, offs_n, offs_d,
        0, full_end, n_k, shift, qk_scale, bias_floor, inv_scale, seed, drop_base, dropout_p, inv_keep,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, IS_CAUSAL, MASK_KIND, MASK_PER_ROW, PRECISION, DROPOUT, DOT_UPCAST,
        ROWS64,
    )
    dq = _bwd_dq_inner(
        dq, q, do, m, log2l, delta, k_ptrs, v_ptrs, mask_ptrs, stride_kn, stride_vn, stride_mn, offs_m, offs_n, offs_d,
        full_end, hi_n, n_k, shift, qk_scale, bias_floor, inv_scale, seed, drop_base, dropout_p, inv_keep,
        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, True, IS_CAUSAL, MASK_KIND, MASK_PER_ROW, PRECISION, DROPOUT, DOT_UPCAST,
        ROWS64,
    )
    dq = dq * sm_scale
    dq_ptrs = DQ + zi * stride_dqz + hi * stride_dqh + rows_q[:, None] * stride_dqm + offs_d[None, :] * stride_dqk
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
