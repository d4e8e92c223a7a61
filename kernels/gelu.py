"""GELU, fused bias + GELU and GeGLU as one elementwise Triton kernel family.

    y = gelu(x)                      exact:  0.5 * x * (1 + erf(x / sqrt(2)))
    y = gelu(x + bias)               tanh:   0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
    y = gelu(gate) * up              GATED (GeGLU, T5 v1.1's feed-forward): x = [gate | up] along the row

Math is fp32 with one cast at the store; inputs and outputs are fp32, fp16 or bf16. The tanh form is written as
x * sigmoid(2u) = x / (1 + exp(-2u)), which is the same function, needs no tanh from libdevice (whose spelling
differs between Triton versions and the interpreter), and saturates safely: exp overflowing to inf gives -0.0.

The backward is the same kernel with ``BACKWARD``: it reads x (+ bias) and dy and writes dx = dy * gelu'(x + bias)
(GATED: [dy * up * gelu'(gate) | dy * gelu(gate)], the gradient of both halves); the launcher ``gelu_bwd``.
The kernel works on a (rows, cols) view in (BLOCK_M, BLOCK_N) tiles, so the bias of a tile is loaded once and no
per-element modulo is needed; without a bias the whole tensor is one long row. GATED reads both halves of each input
row (gate at column c, up at column n_cols + c) and writes rows of n_cols: the activation and the product cost one
read of the projection output and one write of half its size. The host launcher ``gelu_fwd``
takes those views; argument checking and dispatch live in ``engine.ops.activation``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.launch import launch

# Elements per program and the warps that cover them (16 per thread: two 16-byte vectors in fp16/bf16).
TILE = 4096
NUM_WARPS = 8
# Column block for bias + GELU: the next power of two of the row length, clamped to this range.
MIN_BLOCK_N = 256
MAX_BLOCK_N = 1024



@triton.jit
def _gelu_kernel(
    X,  # (n_rows, n_cols) input, or (n_rows, 2 * n_cols) [gate | up] when GATED; row stride stride_x_row, unit columns
    BIAS,  # (n_cols,) bias; read only when HAS_BIAS
    Y,  # (n_rows, n_cols) output; BACKWARD: the output's gradient dy (read). Row stride stride_y_row, unit columns
    DX,  # BACKWARD: X-shaped gradient of the input (written); row stride stride_dx_row, unit columns
    n_rows,
    n_cols,
    stride_x_row,
    stride_y_row,
    stride_dx_row,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    APPROX_TANH: tl.constexpr,  # False: erf form, True: tanh form
    GATED: tl.constexpr,  # y = gelu(gate) * up with gate, up the two halves of each row of X
    BACKWARD: tl.constexpr,  # dx = dy * gelu'(x + bias); GATED: [dy * up * gelu'(gate) | dy * gelu(gate)]
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
    x_ptrs = X + col_start + rows[:, None] * stride_x_row + cols[None, :]
    y_ptrs = Y + col_start + rows[:, None] * stride_y_row + cols[None, :]
    v = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(BIAS + col_start + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if APPROX_TANH:
        k = 0.7978845608028654  # sqrt(2 / pi)
        sig = 1.0 / (1.0 + tl.exp(-2.0 * k * (v + 0.044715 * v * v * v)))  # sigmoid(2u) = (1 + tanh(u)) / 2
        y = v * sig
    else:
        cdf = 0.5 * (1.0 + tl.erf(v * 0.7071067811865476))
        y = v * cdf
    if not BACKWARD:
        if GATED:
            y = y * tl.load(x_ptrs + n_cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        if APPROX_TANH:  # d/dv v * sigmoid(2u) = sig + v * 2 sig (1 - sig) * du/dv
            dgelu = sig + v * 2.0 * sig * (1.0 - sig) * (k * (1.0 + 3.0 * 0.044715 * v * v))
        else:  # Phi(v) + v * phi(v)
            dgelu = cdf + v * 0.3989422804014327 * tl.exp(-0.5 * v * v)
        dy = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
        dx_ptrs = DX + col_start + rows[:, None] * stride_dx_row + cols[None, :]
        if GATED:
            up = tl.load(x_ptrs + n_cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptrs, (dy * up * dgelu).to(DX.dtype.element_ty), mask=mask)
            tl.store(dx_ptrs + n_cols, (dy * y).to(DX.dtype.element_ty), mask=mask)
        else:
            tl.store(dx_ptrs, (dy * dgelu).to(DX.dtype.element_ty), mask=mask)


def config_for(n_cols: int, tiled: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a view with rows of ``n_cols`` output elements; ``tiled``: row-aware tiles (bias or
    gated); otherwise the view is one long row. Always one of ``configs()``."""
    if not tiled:
        return 1, TILE
    block_n = min(MAX_BLOCK_N, max(MIN_BLOCK_N, triton.next_power_of_2(n_cols)))
    return TILE // block_n, block_n


def configs() -> list[tuple[int, int, bool, bool]]:
    """Every (BLOCK_M, BLOCK_N, HAS_BIAS, GATED) the launcher can pick."""
    out = [(*config_for(1, False), False, False)]
    block_n = MIN_BLOCK_N
    while block_n <= MAX_BLOCK_N:
        out.append((*config_for(block_n, True), True, False))
        out.append((*config_for(block_n, True), False, True))
        block_n *= 2
    return out


def gelu_fwd(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    approximate: str = "none",
    gated: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """gelu(x), gelu(x + bias) or (``gated``) gelu(x[:, :N]) * x[:, N:] over a 2-D view.

    x: (M, N), or (M, 2N) when gated, with unit column stride (any row stride); bias: (N,) or None (never with
    gated), x's dtype (fp32, fp16 or bf16), same device. out: optional (M, N) buffer with unit column stride
    (contiguous is fastest without a bias). approximate: "none" (erf) or "tanh".
    Returns y (M, N) in x's dtype. Arguments are assumed checked (engine.ops.activation does that).
    """
    m, n = x.shape
    if gated:
        n //= 2
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    xv, yv = x, out
    tiled = bias is not None or gated
    if not tiled:  # elementwise: one long contiguous row, whatever the row length
        xv = x.contiguous().view(1, m * n)
        yv = out.view(1, m * n) if out.is_contiguous() else None
    if yv is None:
        y = gelu_fwd(x, bias, approximate=approximate)
        out.copy_(y)
        return out
    _launch(xv, bias, yv, None, tiled=tiled, approximate=approximate, gated=gated)
    return out


def _launch(xv: torch.Tensor, bias: torch.Tensor | None, yv: torch.Tensor, dxv: torch.Tensor | None, *, tiled: bool,
            approximate: str, gated: bool) -> None:
    """One launch over the (rows, cols) views: the forward writes yv; the backward (``dxv`` given) reads yv as dy
    and writes dxv (x's shape)."""
    block_m, block_n = config_for(yv.shape[1], tiled)
    grid = (triton.cdiv(yv.shape[0], block_m) * triton.cdiv(yv.shape[1], block_n),)
    dx = dxv if dxv is not None else yv
    launch(_gelu_kernel, grid,
        xv, bias if bias is not None else xv, yv, dx,
        yv.shape[0], yv.shape[1], xv.stride(0), yv.stride(0), dx.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_BIAS=bias is not None, APPROX_TANH=approximate == "tanh",
        GATED=gated, BACKWARD=dxv is not None, num_warps=NUM_WARPS,
    )  # fmt: skip


def gelu_bwd(
    x: torch.Tensor,
    dy: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    approximate: str = "none",
    gated: bool = False,
) -> torch.Tensor:
    """Gradient of ``gelu_fwd`` with respect to x (the same views and conventions): x (M, N) or (M, 2N) gated,
    dy (M, N) the output's gradient, bias (N,) or None. Returns dx in x's shape and dtype (contiguous); the bias
    gradient is dx summed over rows (the caller reduces it)."""
    m, n = dy.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return dx
    tiled = bias is not None or gated
    xv, dyv, dxv = x, dy, dx
    if not tiled:  # one long contiguous row, as the forward
        xv, dyv, dxv = x.contiguous().view(1, m * n), dy.contiguous().view(1, m * n), dx.view(1, m * n)
    _launch(xv, bias, dyv, dxv, tiled=tiled, approximate=approximate, gated=gated)
    return dx


def aot_specs() -> list:
    """The launches ``gelu_fwd`` and ``gelu_bwd`` make for every (tile, bias / gated / plain) ``config_for`` can
    pick, erf and tanh, per dtype (for ``engine.kernels.aot``): 8192 contiguous rows of a width that picks each tile (three times
    the widest tile for that one, which then spans several column blocks)."""
    from engine.kernels.aot import TRITON_DTYPES, meta, recording

    def width(block_n: int, tiled: bool) -> int:
        return block_n if tiled and block_n < MAX_BLOCK_N else 3 * MAX_BLOCK_N

    widths = {cfg: width(cfg[1], cfg[2] or cfg[3]) for cfg in configs()}
    assert all((*config_for(n, c[2] or c[3]), c[2], c[3]) == c for c, n in widths.items()), "a tile is not picked"
    with recording() as rec:
        for dtype, ty in TRITON_DTYPES.items():
            for (block_m, block_n, has_bias, gated), n in widths.items():
                kind = "bias_gelu" if has_bias else "geglu" if gated else "gelu"
                for approx in ("none", "tanh"):
                    with rec.name(f"{kind}{'_tanh' if approx == 'tanh' else ''}_{ty}_{block_m}x{block_n}"):
                        gelu_fwd(meta((8192, 2 * n if gated else n), dtype), meta((n,), dtype) if has_bias else None,
                                 approximate=approx, gated=gated)
                    with rec.name(f"{kind}_bwd{'_tanh' if approx == 'tanh' else ''}_{ty}_{block_m}x{block_n}"):
                        gelu_bwd(meta((8192, 2 * n if gated else n), dtype), meta((8192, n), dtype),
                                 meta((n,), dtype) if has_bias else None, approximate=approx, gated=gated)
    return rec.launches
