"""GELU and fused bias + GELU as one elementwise Triton kernel.

    y = gelu(x)           exact:  0.5 * x * (1 + erf(x / sqrt(2)))
    y = gelu(x + bias)    tanh:   0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))

Math is fp32 with one cast at the store; inputs and outputs are fp32, fp16 or bf16. The tanh form is written as
x * sigmoid(2u) = x / (1 + exp(-2u)), which is the same function, needs no tanh from libdevice (whose spelling
differs between Triton versions and the interpreter), and saturates safely: exp overflowing to inf gives -0.0.

The kernel works on a (rows, cols) view in (BLOCK_M, BLOCK_N) tiles, so the bias of a tile is loaded once and no
per-element modulo is needed; without a bias the whole tensor is one long row. The host launcher ``gelu_fwd``
takes those views; argument checking and dispatch live in ``engine.ops.activation``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program and the warps that cover them (16 per thread: two 16-byte vectors in fp16/bf16).
TILE = 4096
NUM_WARPS = 8
# Column block for bias + GELU: the next power of two of the row length, clamped to this range.
MIN_BLOCK_N = 256
MAX_BLOCK_N = 1024



@triton.jit
def _gelu_fwd_kernel(
    X,  # (n_rows, n_cols) input; row stride stride_x_row, unit column stride
    BIAS,  # (n_cols,) bias; read only when HAS_BIAS
    Y,  # (n_rows, n_cols) output; row stride stride_y_row, unit column stride
    n_rows,
    n_cols,
    stride_x_row,
    stride_y_row,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    APPROX_TANH: tl.constexpr,  # False: erf form, True: tanh form
):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(n_cols, BLOCK_N)
    pid_m = pid // n_col_blocks
    pid_n = pid % n_col_blocks
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: rows * stride may exceed 2**31
    col_start = pid_n.to(tl.int64) * BLOCK_N  # int64: one row may hold all 2**31+ elements
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols - col_start
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    v = tl.load(X + col_start + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(BIAS + col_start + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if APPROX_TANH:
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)  # sqrt(2 / pi) * (...)
        y = v / (1.0 + tl.exp(-2.0 * u))
    else:
        y = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    tl.store(Y + col_start + rows[:, None] * stride_y_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def config_for(n_cols: int, has_bias: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a view with rows of ``n_cols`` elements; always one of ``configs()``."""
    if not has_bias:
        return 1, TILE
    block_n = min(MAX_BLOCK_N, max(MIN_BLOCK_N, triton.next_power_of_2(n_cols)))
    return TILE // block_n, block_n


def configs() -> list[tuple[int, int, bool]]:
    """Every (BLOCK_M, BLOCK_N, HAS_BIAS) the launcher can pick."""
    out = [(*config_for(1, False), False)]
    block_n = MIN_BLOCK_N
    while block_n <= MAX_BLOCK_N:
        out.append((*config_for(block_n, True), True))
        block_n *= 2
    return out


def gelu_fwd(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    approximate: str = "none",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """gelu(x) or gelu(x + bias) over a 2-D view.

    x: (M, N) with unit column stride (any row stride); bias: (N,) or None, x's dtype (fp32, fp16 or bf16), same
    device. out: optional (M, N) buffer with unit column stride (contiguous is fastest without a bias).
    approximate: "none" (erf) or "tanh".
    Returns y (M, N) in x's dtype. Arguments are assumed checked (engine.ops.activation does that).
    """
    m, n = x.shape
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    xv, yv = x, out
    if bias is None:  # elementwise: one long contiguous row, whatever the row length
        xv = x.contiguous().view(1, m * n)
        yv = out.view(1, m * n) if out.is_contiguous() else None
    if yv is None:
        y = gelu_fwd(x, bias, approximate=approximate)
        out.copy_(y)
        return out
    block_m, block_n = config_for(yv.shape[1], bias is not None)
    grid = (triton.cdiv(yv.shape[0], block_m) * triton.cdiv(yv.shape[1], block_n),)
    _gelu_fwd_kernel[grid](
        xv, bias if bias is not None else xv, yv,
        yv.shape[0], yv.shape[1], xv.stride(0), yv.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_BIAS=bias is not None, APPROX_TANH=approximate == "tanh",
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def aot_specs() -> list:
    """The launches ``gelu_fwd`` makes for every (tile, bias or not) ``config_for`` can pick, erf and tanh, per
    dtype (for ``engine.kernels.aot``): 8192 contiguous rows of a width that picks each tile (3072 for the widest
    bias tile, which then spans several column blocks)."""
    from engine.kernels.aot import TRITON_DTYPES, meta, recording

    widths = {(*config_for(n, True), True): n for n in (MIN_BLOCK_N, 512, 3072)}
    widths[(*config_for(1, False), False)] = 3072
    assert set(widths) == set(configs()), "a tile the launcher can pick has no representative width"
    with recording() as rec:
        for dtype, ty in TRITON_DTYPES.items():
            for (block_m, block_n, has_bias), n in widths.items():
                for approx in ("none", "tanh"):
                    with rec.name(f"{'bias_' if has_bias else ''}gelu{'_tanh' if approx == 'tanh' else ''}_{ty}_"
                                  f"{block_m}x{block_n}"):
                        gelu_fwd(meta((8192, n), dtype), meta((n,), dtype) if has_bias else None,
                                 approximate=approx)
    return rec.launches
