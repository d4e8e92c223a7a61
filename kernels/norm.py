"""Fused LayerNorm and RMSNorm forward (optionally with the residual add in front): one Triton kernel family.

    LayerNorm:  y = (v - mean(v)) / sqrt(var(v) + eps) * weight + bias
    RMSNorm:    y = v / sqrt(mean(v * v) + eps) * weight                 (IS_RMS: no mean, no bias; T5's norm)
    where v = x (layer_norm / rms_norm) or v = x + residual (add_layer_norm / add_rms_norm; v is stored too).

Statistics are fp32; inputs and outputs are fp32, fp16 or bf16. Rows of up to ``MAX_BLOCK_N`` elements are held
in registers (one read of every input, one write of every output); longer rows take the looped variant (a
constexpr flag), which reads the inputs twice: once for the statistics (chunked; LayerNorm merges the chunks
with Chan's parallel variance formula so a large mean does not cancel), once to normalise.

Backward (``_norm_bwd_kernel``, launcher ``norm_bwd``): from the saved normalised input v (x, or the stored
x + residual) and the weight it recomputes the row statistics (the forward saves nothing else), then

    xhat = (v - mean) * rstd   (RMSNorm: v * rstd),   g = dy * weight
    dv   = rstd * (g - xhat * mean(g * xhat) - mean(g))   (RMSNorm: without the mean(g) term)   [+ ds, HAS_DRES]
    dweight = sum over rows of dy * xhat,   dbias = sum over rows of dy

dweight / dbias are a two-stage reduction: a fixed number of programs each walk a strided set of row tiles and
keep fp32 partial sums (in registers; the looped variant adds into its own row of the buffer), written to a
(programs, N) fp32 buffer that the host sums over its first dimension. ``HAS_DRES``: the add + norm ops also
return s = x + residual, whose incoming gradient ds is added to dv (dx = dresidual = dv).

The host launchers take 2-D row views; argument checking and dispatch live in ``engine.ops.norm``.
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
def _row_stats(v, mask, N, eps, IS_RMS: tl.constexpr):
    """Statistics of the (ROWS, BLOCK_N) fp32 tile ``v`` (masked lanes 0): (mean (0 for RMS), rstd, v - mean
    with masked lanes 0)."""
    if IS_RMS:
        mean = tl.zeros_like(tl.sum(v, axis=1))
        d = v
    else:
        mean = tl.sum(v, axis=1) / N
        d = tl.where(mask, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
    return mean, rstd, d


@triton.jit
def _merge_chunk(v, mask, start, N, BLOCK_N: tl.constexpr, mean, m2, IS_RMS: tl.constexpr):
    """Fold the chunk ``v`` (ROWS, BLOCK_N) fp32 at column ``start`` (masked lanes 0) into the running (mean, m2)
    (ROWS,) of the earlier, full chunks: Chan's parallel formula for LayerNorm, a sum of squares for RMSNorm."""
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
    return mean, m2


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
        _, rstd, d = _row_stats(v, mask, N, eps, IS_RMS)
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
            mean, m2 = _merge_chunk(v, mask, start, N, BLOCK_N, mean, m2, IS_RMS)
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


@triton.jit
def _norm_bwd_kernel(
    V,  # (n_rows, N) the normalised input (x, or x + residual as stored by the forward)
    DY,  # (n_rows, N) gradient of the output
    DS,  # (n_rows, N) gradient of the returned x + residual; read only when HAS_DRES
    W,  # (N,) weight
    DV,  # (n_rows, N) gradient of v (of x and of residual alike)
    DW,  # (programs, N) fp32 partial sums of dy * xhat, one row per program
    DB,  # (programs, N) fp32 partial sums of dy; written only when not IS_RMS
    stride_v_row,
    stride_dy_row,
    stride_ds_row,
    stride_dv_row,
    n_rows,
    N,
    eps,
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_DRES: tl.constexpr,
    LOOPED: tl.constexpr,
    IS_RMS: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    dw_row = DW + pid.to(tl.int64) * N
    db_row = DB + pid.to(tl.int64) * N
    if not LOOPED:
        col_mask = cols < N
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        db = tl.zeros([BLOCK_N], dtype=tl.float32)
        for tile in range(pid, tl.cdiv(n_rows, ROWS), n_prog):
            rows = (tile * ROWS + tl.arange(0, ROWS)).to(tl.int64)
            mask = (rows < n_rows)[:, None] & col_mask[None, :]
            v = tl.load(V + rows[:, None] * stride_v_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            _, rstd, d = _row_stats(v, mask, N, eps, IS_RMS)
            xhat = d * rstd[:, None]
            g = dy * w[None, :]
            c1 = tl.sum(g * xhat, axis=1) / N
            if IS_RMS:
                dv = (g - xhat * c1[:, None]) * rstd[:, None]
            else:
                c2 = tl.sum(g, axis=1) / N
                dv = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
            if HAS_DRES:
                dv += tl.load(DS + rows[:, None] * stride_ds_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(DV + rows[:, None] * stride_dv_row + cols[None, :], dv.to(DV.dtype.element_ty), mask=mask)
            dw += tl.sum(dy * xhat, axis=0)
            if not IS_RMS:
                db += tl.sum(dy, axis=0)
        tl.store(dw_row + cols, dw, mask=col_mask)
        if not IS_RMS:
            tl.store(db_row + cols, db, mask=col_mask)
    else:
        # One row at a time (ROWS == 1), three passes over it in chunks: statistics (Chan's merge, as the forward),
        # the two row sums, then dv and the partial sums (added into this program's rows of DW / DB).
        for start in range(0, N, BLOCK_N):
            c = start + cols
            tl.store(dw_row + c, tl.zeros([BLOCK_N], dtype=tl.float32), mask=c < N)
            if not IS_RMS:
                tl.store(db_row + c, tl.zeros([BLOCK_N], dtype=tl.float32), mask=c < N)
        for row in range(pid, n_rows, n_prog):
            rows = (row + tl.arange(0, 1)).to(tl.int64)  # (1,): the tiles are (1, BLOCK_N), as the helpers take
            v_rows = V + rows[:, None] * stride_v_row
            dy_rows = DY + rows[:, None] * stride_dy_row
            mean = tl.zeros([1], dtype=tl.float32)
            m2 = tl.zeros([1], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = (c < N)[None, :]
                v = tl.load(v_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                mean, m2 = _merge_chunk(v, mask, start, N, BLOCK_N, mean, m2, IS_RMS)
            rstd = 1.0 / tl.sqrt(m2 / N + eps)
            c1 = tl.zeros([1], dtype=tl.float32)
            c2 = tl.zeros([1], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = (c < N)[None, :]
                v = tl.load(v_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                g = (tl.load(dy_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                     * tl.load(W + c, mask=c < N, other=0.0).to(tl.float32)[None, :])
                c1 += tl.sum(g * tl.where(mask, v - mean[:, None], 0.0), axis=1)
                c2 += tl.sum(g, axis=1)
            c1 = c1 * rstd / N
            c2 = c2 / N
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = (c < N)[None, :]
                v = tl.load(v_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                g = dy * tl.load(W + c, mask=c < N, other=0.0).to(tl.float32)[None, :]
                xhat = tl.where(mask, v - mean[:, None], 0.0) * rstd[:, None]
                if IS_RMS:
                    dv = (g - xhat * c1[:, None]) * rstd[:, None]
                else:
                    dv = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
                if HAS_DRES:
                    dv += tl.load(DS + rows[:, None] * stride_ds_row + c[None, :], mask=mask,
                                  other=0.0).to(tl.float32)
                tl.store(DV + rows[:, None] * stride_dv_row + c[None, :], dv.to(DV.dtype.element_ty), mask=mask)
                tl.store(dw_row + c, tl.load(dw_row + c, mask=c < N, other=0.0) + tl.sum(dy * xhat, axis=0),
                         mask=c < N)
                if not IS_RMS:
                    tl.store(db_row + c, tl.load(db_row + c, mask=c < N, other=0.0) + tl.sum(dy, axis=0),
                             mask=c < N)


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



def _programs(tiles: int, device: torch.device) -> int:
    """Programs of the backward's reduction grid: about two per SM on CUDA (each keeps (N,) fp32 partial sums),
    a few elsewhere (the interpreter, meta tensors); never more than the row tiles."""
    if device.type == "cuda":
        return max(1, min(tiles, 2 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(tiles, 4))


def norm_bwd(
    v: torch.Tensor,
    dy: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    ds: torch.Tensor | None = None,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of ``norm_fwd``: v (M, N) the normalised input (x, or x + residual as the forward stored it),
    dy (M, N) the output's gradient, ds (M, N) or None the gradient of the returned x + residual; all with unit
    column stride, one dtype. weight (N,) or None (ones). ``programs``: the reduction grid (default: see
    ``_programs``). Returns (dv (M, N) in v's dtype, dweight (N,) fp32, dbias (N,) fp32 or None for RMSNorm);
    dv is the gradient of x and, with a residual, of the residual too."""
    m, n = v.shape
    dv = torch.empty((m, n), dtype=v.dtype, device=v.device)
    if m == 0 or n == 0:
        z = torch.zeros(n, dtype=torch.float32, device=v.device)
        return dv, z, None if rms else z.clone()
    if weight is None:
        weight = torch.ones(n, dtype=v.dtype, device=v.device)
    block_n, rows, num_warps, looped = config_for(n)
    if programs is None:
        programs = _programs(triton.cdiv(m, rows), v.device)
    dw = torch.empty((programs, n), dtype=torch.float32, device=v.device)
    db = dw if rms else torch.empty((programs, n), dtype=torch.float32, device=v.device)
    d_s = ds if ds is not None else dy
    launch(_norm_bwd_kernel, (programs,),
        v, dy, d_s, weight, dv, dw, db,
        v.stride(0), dy.stride(0), d_s.stride(0), dv.stride(0),
        m, n, eps,
        BLOCK_N=block_n, ROWS=rows, HAS_DRES=ds is not None, LOOPED=looped, IS_RMS=rms,
        num_warps=num_warps,
    )  # fmt: skip
    return dv, dw.sum(0), None if rms else db.sum(0)


def aot_specs() -> list:
    """The launches ``norm_fwd`` and ``norm_bwd`` make for every configuration ``config_for`` can pick, LayerNorm
    and RMSNorm, with and without a residual (its gradient ds for the backward), per dtype (for ``engine.kernels.aot``): 8192 contiguous rows of N = the configuration's
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
                        with rec.name(f"{'rms' if rms else 'layer'}_norm_bwd_{ty}_n{block_n}_r{rows}"
                                      f"{'_loop' if looped else ''}{'_dres' if res else ''}"):
                            norm_bwd(meta((8192, n), dtype), meta((8192, n), dtype), meta((n,), dtype), 1e-5,
                                     rms=rms, ds=meta((8192, n), dtype) if res else None, programs=132)
    return rec.launches
