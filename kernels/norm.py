"""Fused LayerNorm and RMSNorm forward (optionally with the residual add in front): one Triton kernel family.

    LayerNorm:  y = (v - mean(v)) / sqrt(var(v) + eps) * weight + bias
    RMSNorm:    y = v / sqrt(mean(v * v) + eps) * weight                 (IS_RMS: no mean, no bias; T5's norm)
    where v = x (layer_norm / rms_norm) or v = x + residual (add_layer_norm / add_rms_norm; v is stored too).

Statistics are fp32; inputs and outputs are fp32, fp16 or bf16. Rows of up to ``MAX_BLOCK_N`` elements are held
in registers (one read of every input, one write of every output); longer rows take the looped variant (a
constexpr flag), which reads the inputs twice: once for the statistics (chunked; LayerNorm merges the chunks
with Chan's parallel variance formula so a large mean does not cancel), once to normalise.

The host launchers ``layer_norm_fwd`` and ``rms_norm_fwd`` take 2-D row views; argument checking and dispatch
live in ``engine.ops.norm``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.launch import launch

# Longest row kept in registers; longer rows loop over chunks of LOOP_BLOCK_N.
MAX_BLOCK_N = 8192
LOOP_BLOCK_N = 4096
# Shortest block: rows shorter than this are padded (hidden sizes < 128 are rare; fewer configurations to build).
MIN_BLOCK_N = 128
# Elements one program works on (rows per program = TILE // BLOCK_N for short rows).
TILE = 4096



@triton.jit
def _norm_fwd_kernel(
    X,  # (n_rows, N) input; row stride stride_x_row, unit column stride
    R,  # (n_rows, N) residual; read only when HAS_RESIDUAL
    W,  # (N,) weight
    B,  # (N,) bias; read only when not IS_RMS
    Y,  # (n_rows, N) output
    S,  # (n_rows, N) x + residual in the input dtype; written only when HAS_RESIDUAL
    stride_x_row,
    stride_r_row,
    stride_y_row,
    stride_s_row,
    n_rows,
    N,
    eps,
    BLOCK_N: tl.constexpr,  # power of two >= N (one pass), or the chunk length (LOOPED)
    ROWS: tl.constexpr,  # rows per program
    HAS_RESIDUAL: tl.constexpr,
    LOOPED: tl.constexpr,  # the row does not fit in BLOCK_N: loop over chunks
    IS_RMS: tl.constexpr,  # RMSNorm: no mean subtraction, no bias
):
    pid = tl.program_id(0)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # int64: n_rows * stride may exceed 2**31
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    x_rows = X + rows[:, None] * stride_x_row  # (ROWS, 1) pointers
    r_rows = R + rows[:, None] * stride_r_row
    y_rows = Y + rows[:, None] * stride_y_row
    s_rows = S + rows[:, None] * stride_s_row
    if not LOOPED:
        col_mask = cols < N
        mask = row_mask[:, None] & col_mask[None, :]
        # weight and bias first: their loads are in flight while the row loads and reduces.
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        v = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            v += tl.load(r_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(s_rows + cols[None, :], v.to(S.dtype.element_ty), mask=mask)
        if IS_RMS:
            d = v  # masked lanes are already 0
        else:
            mean = tl.sum(v, axis=1) / N
            d = tl.where(mask, v - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
        y = d * rstd[:, None] * w[None, :]
        if not IS_RMS:
            y += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Pass 1: LayerNorm merges per-chunk means and sums of squared deviations into the running ones;
        # RMSNorm only sums squares.
        mean = tl.zeros([ROWS], dtype=tl.float32)
        m2 = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = row_mask[:, None] & (c < N)[None, :]
            v = tl.load(x_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                v += tl.load(r_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                tl.store(s_rows + c[None, :], v.to(S.dtype.element_ty), mask=mask)
            if IS_RMS:
                m2 += tl.sum(v * v, axis=1)
            else:
                n_a = start * 1.0  # elements merged so far (all earlier chunks are full), as fp32
                n_b = tl.minimum(N - start, BLOCK_N) * 1.0
                mean_b = tl.sum(v, axis=1) / n_b
                d = tl.where(mask, v - mean_b[:, None], 0.0)
                delta = mean_b - mean
                mean += delta * (n_b / (n_a + n_b))
                m2 += tl.sum(d * d, axis=1) + delta * delta * (n_a * n_b / (n_a + n_b))
        rstd = 1.0 / tl.sqrt(m2 / N + eps)
        # Pass 2: normalise (the row was just read, so this mostly hits L2).
        for start in range(0, N, BLOCK_N):
            c = start + cols
            c_mask = c < N
            mask = row_mask[:, None] & c_mask[None, :]
            v = tl.load(x_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                v += tl.load(r_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + c, mask=c_mask, other=0.0).to(tl.float32)
            if IS_RMS:
                y = v * rstd[:, None] * w[None, :]
            else:
                b = tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)
                y = (v - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
            tl.store(y_rows + c[None, :], y.to(Y.dtype.element_ty), mask=mask)


def config_for(n: int) -> tuple[int, int, int, bool]:
    """(BLOCK_N, ROWS, num_warps, LOOPED) for rows of ``n`` elements; always one of ``configs()``."""
    if n > MAX_BLOCK_N:
        return LOOP_BLOCK_N, 1, 8, True
    block_n = max(MIN_BLOCK_N, triton.next_power_of_2(n))
    rows = max(1, TILE // block_n)
    # About 16 elements per thread: 8 warps for a 4096-element tile, 16 for a single 8192-wide row.
    num_warps = max(4, min(16, rows * block_n // 512))
    return block_n, rows, num_warps, False


def configs() -> list[tuple[int, int, int, bool]]:
    """Every configuration ``config_for`` can return."""
    out = []
    block_n = MIN_BLOCK_N
    while block_n <= MAX_BLOCK_N:
        out.append(config_for(block_n))
        block_n *= 2
    out.append(config_for(MAX_BLOCK_N + 1))
    return out


def norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LayerNorm (``rms=False``) or RMSNorm (``rms=True``, ``bias`` must be None) over the rows of ``x`` (M, N),
    optionally of ``x + residual``.

    x, residual: (M, N) with unit column stride (any row stride); weight, bias: (N,) or None (1 / 0), all one
    dtype (fp32, fp16 or bf16) on one device. out, residual_out: optional (M, N) buffers with unit column stride
    to write into. Returns (y, s): y (M, N) the normalised rows, s (M, N) = x + residual in x's dtype (None
    without a residual). Arguments are assumed checked (engine.ops.norm does that).
    """
    m, n = x.shape
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if residual is not None and residual_out is None:
        residual_out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out, residual_out
    # A missing weight / bias is a ones / zeros vector: one compiled kernel serves all four cases.
    if weight is None:
        weight = torch.ones(n, dtype=x.dtype, device=x.device)
    if bias is None and not rms:
        bias = torch.zeros(n, dtype=x.dtype, device=x.device)
    block_n, rows, num_warps, looped = config_for(n)
    r = residual if residual is not None else x
    s = residual_out if residual_out is not None else out
    grid = (triton.cdiv(m, rows),)
    launch(_norm_fwd_kernel, grid,
        x, r, weight, bias if bias is not None else weight, out, s,
        x.stride(0), r.stride(0), out.stride(0), s.stride(0),
        m, n, eps,
        BLOCK_N=block_n, ROWS=rows, HAS_RESIDUAL=residual is not None, LOOPED=looped, IS_RMS=rms,
        num_warps=num_warps,
    )  # fmt: skip
    return out, residual_out


def aot_specs() -> list:
    """The launches ``norm_fwd`` makes for every configuration ``config_for`` can pick, LayerNorm and RMSNorm, with
    and without a residual, per dtype (for ``engine.kernels.aot``): 8192 contiguous rows of N = the configuration's
    block (12288 for the looped one), so N and the row strides are multiples of 16, as for the usual hidden sizes."""
    from engine.kernels.aot import TRITON_DTYPES, meta, recording

    with recording() as rec:
        for dtype, ty in TRITON_DTYPES.items():
            for block_n, rows, _, looped in configs():
                n = MAX_BLOCK_N + LOOP_BLOCK_N if looped else block_n
                for rms in (False, True):
                    for res in (False, True):
                        with rec.name(f"{'rms' if rms else 'layer'}_norm_{ty}_n{block_n}_r{rows}"
                                      f"{'_loop' if looped else ''}{'_res' if res else ''}"):
                            norm_fwd(meta((8192, n), dtype), meta((n,), dtype), None if rms else meta((n,), dtype),
                                     1e-5, rms=rms, residual=meta((8192, n), dtype) if res else None)
    return rec.launches
