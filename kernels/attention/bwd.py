"""Flash attention backward, host side: the tile tables and launches of the backward's three kernels
(``bwd_kernels``: the Delta preprocess, the dK/dV kernel and the dQ kernel; the algorithm is described there), and
the public ``attention_bwd`` (dense (B, H, N, D)) and ``varlen_bwd`` (packed (total, H, D)).
"""
from __future__ import annotations

import torch
import triton

from engine.backend import interpreting
from engine.kernels.attention.bwd_kernels import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_bwd_preprocess
from engine.kernels.attention.common import LOG2E, mask_launch_args, precision
from engine.kernels.attention.fwd import block_d_of, rows64_needed
from engine.kernels.launch import launch

# Per padded head dim, 16-bit inputs: (BLOCK_M, BLOCK_N, num_warps, num_stages) of the dK/dV kernel and of the dQ
# kernel. The dK/dV kernel keeps two (BLOCK_N, BLOCK_D) fp32 accumulators, the dQ kernel one (BLOCK_M, BLOCK_D),
# besides the tiles of the dots. Every product of the dK/dV kernel has BLOCK_N rows and every product of the dQ
# kernel BLOCK_M rows: at least 64 per warpgroup for wgmma. Chosen from sm_90 builds (Triton 3.9, the AOT table)
# as the largest tiles without spills; at D=256 the dK/dV accumulators alone take 128 registers per thread and even
# the smallest wgmma tile spills (tests/kernels/test_sm90_gate.py's allowance).
DKDV_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (32, 128, 8, 2), 128: (32, 128, 8, 2), 256: (16, 64, 8, 1),
}
DQ_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (128, 64, 8, 2), 128: (128, 64, 8, 2), 256: (64, 16, 4, 1),
}
# fp32 (three TF32 products per dot, fp32-accurate) up to head dim 64 only: the split operands double the
# registers of every tile, and at D=128 the smallest wgmma tiles spill kilobytes (measured: 1.4 to 4.5 KB).
# Larger fp32 head dims with grad run PyTorch (engine.ops.attention checks FP32_MAX_HEAD_DIM).
FP32_MAX_HEAD_DIM = 64
FP32_DKDV_CONFIGS: dict[int, tuple[int, int, int, int]] = {16: (32, 64, 4, 2), 32: (32, 64, 4, 2), 64: (16, 64, 4, 2)}
FP32_DQ_CONFIGS: dict[int, tuple[int, int, int, int]] = {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (64, 32, 4, 2)}
# Triton's CPU interpreter: small tiles, BLOCK_M != BLOCK_N so both kernels cross tiles in both directions.
INTERPRETER_DKDV_CONFIG = (16, 32, 4, 1)
INTERPRETER_DQ_CONFIG = (32, 16, 4, 1)
PREPROCESS_BLOCK_M = 64


def _configs(dtype: torch.dtype, block_d: int, dkdv, dq) -> tuple[tuple, tuple]:
    if dkdv is not None and dq is not None:
        return dkdv, dq
    if interpreting():
        pick = (INTERPRETER_DKDV_CONFIG, INTERPRETER_DQ_CONFIG)
    elif dtype == torch.float32:
        pick = (FP32_DKDV_CONFIGS[block_d], FP32_DQ_CONFIGS[block_d])
    else:
        pick = (DKDV_CONFIGS[block_d], DQ_CONFIGS[block_d])
    return dkdv or pick[0], dq or pick[1]


def _launch_bwd(do, q, k, v, o, lse, dq, dk, dv, mask, cu_q, cu_k, strides4, lse_strides, h, n_q, n_k, grid_m,
                grid_n, batch, *, rows4, scale, causal, varlen, mask_kind, mask_per_row, dropout, dkdv_config,
                dq_config):
    """strides4: (z, h, m, d) strides of q, k, v, dO, dQ, dK, dV, mask (8 x 4); rows4: (O, dO) as (Z, H, M, D)
    views for the preprocess (with M rows each)."""
    head_dim = q.shape[-1]
    block_d = block_d_of(head_dim)
    sq, sk, sv, sdo, sdq, sdk, sdv, sm = strides4
    delta = torch.empty_like(lse[0])
    (o4, do4), m_rows = rows4
    z = o4.shape[0]
    interp = interpreting()
    bm = 32 if interp else PREPROCESS_BLOCK_M
    launch(_attn_bwd_preprocess, (triton.cdiv(m_rows, bm), z * h), o4, do4, delta, *o4.stride(), *do4.stride(),
           *lse_strides, h, m_rows, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=bm, num_warps=4)
    dkdv_cfg, dq_cfg = _configs(q.dtype, block_d, dkdv_config, dq_config)
    seed, p = dropout if dropout is not None else (0, 0.0)
    flags = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=causal, IS_VARLEN=varlen, MASK_KIND=mask_kind,
                 MASK_PER_ROW=mask_per_row, PRECISION=precision(q.dtype), DROPOUT=dropout is not None)
    if interp and q.dtype == torch.bfloat16:
        flags["DOT_UPCAST"] = True  # see fwd._launch: the interpreter's bf16 dots are wrong
    if rows64_needed(grid_m, (sq[2], sdo[2]), grid_n, (sk[2], sv[2])):
        flags["ROWS64"] = True  # a row (key) index x its stride inside one sequence can pass 2**31: 64-bit steps
    common = (scale, scale * LOG2E, seed, p)
    bm, bn, warps, stages = dkdv_cfg
    launch(_attn_bwd_dkdv_kernel, (triton.cdiv(grid_n, bn), batch * h), q, k, v, do, dk, dv, lse, delta, mask, cu_q,
           cu_k, *common, *sq, *sk, *sv, *sdo, *sdk, *sdv, *sm, lse.stride(0), *lse_strides, h, n_q, n_k, **flags, BLOCK_M=bm,
           BLOCK_N=bn, num_warps=warps, num_stages=stages)
    bm, bn, warps, stages = dq_cfg
    launch(_attn_bwd_dq_kernel, (triton.cdiv(grid_m, bm), batch * h), q, k, v, do, dq, lse, delta, mask, cu_q,
           cu_k, *common, *sq, *sk, *sv, *sdo, *sdq, *sm, lse.stride(0), *lse_strides, h, n_q, n_k, **flags, BLOCK_M=bm,
           BLOCK_N=bn, num_warps=warps, num_stages=stages)
    return dq, dk, dv


def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, *,
                  mask: torch.Tensor | None, causal: bool, scale: float, dropout: tuple[int, float] | None = None,
                  dkdv_config: tuple[int, int, int, int] | None = None,
                  dq_config: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Gradients of dense attention into dq, dk, dv (shapes of q, k, v; any strides).

    do, o, q: (B, H, Nq, D); k, v: (B, H, Nk, D); lse: the contiguous (2, B, H, Nq) fp32 statistics the forward
    stored (``fwd.attention_fwd(..., lse=)``); mask, causal, scale, dropout: the forward's (same seed: the same
    keep mask). dkdv_config / dq_config: (BLOCK_M, BLOCK_N, num_warps, num_stages) of each kernel (tests, AOT);
    None = the table for the head dim and dtype. Validation is the caller's job. Returns (dq, dk, dv).
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    mask_arg, mask_kind, per_row, mstr = mask_launch_args(mask, q)
    strides4 = tuple(tuple(t.stride()) for t in (q, k, v, do, dq, dk, dv)) + (mstr,)
    return _launch_bwd(do, q, k, v, o, lse, dq, dk, dv, mask_arg, q, q, strides4, (h * n_q, n_q), h, n_q, n_k, n_q,
                       n_k, b, rows4=((o, do), n_q), scale=scale, causal=causal, varlen=False, mask_kind=mask_kind,
                       mask_per_row=per_row, dropout=dropout, dkdv_config=dkdv_config, dq_config=dq_config)


def varlen_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
               lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cu_q: torch.Tensor,
               cu_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool, scale: float,
               dropout: tuple[int, float] | None = None, dkdv_config: tuple[int, int, int, int] | None = None,
               dq_config: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Gradients of packed attention into dq, dk, dv. do, o, q, dq: (total_q, H, D); k, v, dk, dv: (total_k, H, D);
    lse: the contiguous (2, H, total_q) fp32 buffer of ``fwd.varlen_fwd(..., lse=)``; cu_q, cu_k: (B + 1,) int32.
    The rest as ``attention_bwd``. Returns (dq, dk, dv)."""
    total_q, h, d = q.shape
    batch = cu_q.shape[0] - 1

    def s4(t):  # (total, H, D) strides as (z, h, m, d) with no batch stride
        return (0, t.stride(1), t.stride(0), t.stride(2))

    strides4 = tuple(s4(t) for t in (q, k, v, do, dq, dk, dv)) + ((0, 0, 0, 0),)

    def rows(t):  # (total, H, D) as a (1, H, total, D) view for the preprocess
        return t.transpose(0, 1).unsqueeze(0)

    return _launch_bwd(do, q, k, v, o, lse, dq, dk, dv, q, cu_q, cu_k, strides4, (0, total_q), h, 0, 0, max_seqlen_q,
                       max_seqlen_k, batch, rows4=((rows(o), rows(do)), total_q), scale=scale, causal=causal,
                       varlen=True, mask_kind=0, mask_per_row=False, dropout=dropout, dkdv_config=dkdv_config,
                       dq_config=dq_config)
