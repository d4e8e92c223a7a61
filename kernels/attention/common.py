"""What the attention kernels share: jit helpers for tiles and masks, and the one host-side choice of how K/V
tiles reach shared memory.

K/V tiles come in one of two ways, chosen by ``use_kv_tma`` (the only place that decides):

* TMA (``KV_TMA=True``): Hopper's tensor-memory accelerator copies whole tiles into shared memory, described by
  host-side tensor descriptors (``kv_descriptors``; dense (B, H, N, D) tensors as rank-4 descriptors with
  (1, 1, BLOCK_N, BLOCK_D) boxes, packed (total, H, D) ones as rank-3 with (BLOCK_N, 1, BLOCK_D) boxes). Rows
  past the end of the tensor and head-dim columns past D read as zeros, so the loads need no masks and no
  per-thread addresses (fewer registers, two copies per tile instead of one cp.async per 16 bytes per thread).
  Needs a CUDA device of compute capability >= 9, a Triton with ``triton.tools.tensor_descriptor``, and tensors
  TMA can address: 16-byte aligned base and strides, unit stride on D.
* pointers (``KV_TMA=False``): per-thread masked loads, which Triton pipelines with cp.async. Everything else
  (older GPUs and Tritons, odd strides, and Triton's CPU interpreter by default) takes this path.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4 (tested: 3.6 and 3.9)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

from engine.backend import interpreting

# exp(x) = exp2(x * LOG2E): the kernels work in base 2 with log2(e) folded into the score scale.
LOG2E = 1.4426950408889634
# Copies of a relative position table, each shifted by one more entry (``shifted_table``): 8 16-bit values = 16 bytes.
TABLE_SHIFTS = 8
SHIFTS = tl.constexpr(TABLE_SHIFTS)
MAX_BLOCK_N = 128  # the widest key tile of any configuration: a shifted table's padding past its last entry


@triton.jit
def masked_load(ptrs, mask_a, mask_b, USE_A: tl.constexpr, USE_B: tl.constexpr):
    """tl.load with only the masks that are needed (an unmasked load vectorises best); masked-off values are 0."""
    if USE_A and USE_B:
        x = tl.load(ptrs, mask=mask_a & mask_b, other=0.0)
    elif USE_A:
        x = tl.load(ptrs, mask=mask_a, other=0.0)
    elif USE_B:
        x = tl.load(ptrs, mask=mask_b, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def kv_tile(ptrs, desc, off_z, off_h, row, row_ok, d_ok,
            MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr, KV_TMA: tl.constexpr, PACKED: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (BLOCK_N, BLOCK_D) tile of K or V starting at key ``row`` of head ``off_h`` (of sequence ``off_z``).

    KV_TMA: through ``desc`` (rank 4 (B, H, N, D), or rank 3 (total, H, D) when PACKED, where ``row`` counts
    packed tokens); out-of-range rows and columns read as zeros. Else through ``ptrs`` (the tile's pointers at
    key ``row``), masked by ``row_ok`` (BLOCK_N,) if MASK_ROWS and ``d_ok`` (BLOCK_D,) if MASK_D.
    """
    if KV_TMA:
        if PACKED:
            t = desc.load([row, off_h, 0]).reshape(BLOCK_N, BLOCK_D)
        else:
            t = desc.load([off_z, off_h, row, 0]).reshape(BLOCK_N, BLOCK_D)
    else:
        t = masked_load(ptrs, row_ok[:, None], d_ok[None, :], MASK_ROWS, MASK_D)
    return t


@triton.jit
def widen_rows(x, ROWS64: tl.constexpr):
    """A row index (scalar or tensor) as int64 under ROWS64, else as it is: the launchers set ROWS64
    (fwd.rows64_needed) only where row x row stride can pass 2**31, as 64-bit products everywhere cost sm_90 builds
    spills and serialised wgmma."""
    if ROWS64:
        x = tl.cast(x, tl.int64)
    return x


@triton.jit
def mask_bias(mask_ptrs, cols, col_ok, stride_mn, bias_floor, inv_scale, MASK_KIND: tl.constexpr,
              MASK_PER_ROW: tl.constexpr, BOUNDARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The attention mask of one (BLOCK_M, BLOCK_N) score tile for keys ``cols``, in the units of q . k (fp32), to
    start the q @ k^T accumulator with: scores = (mask / scale + q . k) * scale.

    MASK_KIND 1 = boolean (uint8, nonzero = attend: 0 or -inf), 2 = additive (any float dtype; values below
    ``bias_floor`` are raised to it, so a most-negative finite mask stays finite after the division, as PyTorch
    keeps such rows finite (they average all keys), while a true -inf stays -inf). ``inv_scale`` = 1 / scale.
    ``mask_ptrs``: (BLOCK_M, 1) row pointers when MASK_PER_ROW, else the one row of a key-padding mask.
    BOUNDARY: keys past the end (``col_ok`` False) exist in this tile; their mask entries are not read.
    Starting the product from the mask (instead of adding it to the scores after) keeps the wgmma accumulator
    defined by ordinary instructions only before the product, which Triton 3.6's code needs to stay asynchronous.
    """
    if MASK_PER_ROW:
        mval = masked_load(mask_ptrs + cols[None, :].to(tl.int64) * stride_mn, col_ok[None, :], col_ok[None, :],
                           BOUNDARY, False)
    else:
        mval = masked_load(mask_ptrs + cols.to(tl.int64) * stride_mn, col_ok, col_ok, BOUNDARY, False)[None, :]
    return tl.broadcast_to(mask_units(mval, bias_floor, inv_scale, MASK_KIND), (BLOCK_M, BLOCK_N))


@triton.jit
def mask_units(mval, bias_floor, inv_scale, MASK_KIND: tl.constexpr):
    """Loaded mask values (any shape) in the units of q . k (fp32): boolean (MASK_KIND 1) -> 0 or -inf; additive
    (2) -> raised to ``bias_floor`` (a true -inf stays -inf) and multiplied by ``inv_scale`` (see ``mask_bias``)."""
    if MASK_KIND == 1:
        bias = tl.where(mval != 0, 0.0, float("-inf"))
    else:
        bias = mval.to(tl.float32)
        bias = tl.where(bias == float("-inf"), bias, tl.maximum(bias, bias_floor) * inv_scale)
    return bias


@triton.jit
def dropout_keep(seed, base, rows, cols, n_k, dropout_p):
    """Attention dropout's keep mask of one score tile, (rows x cols) in the orientation of ``rows[:, None]`` and
    ``cols[None, :]`` (pass ``rows[None, :]`` and ``cols[:, None]`` for the transposed tile): True where the score
    of query ``row`` and key ``col`` of one (batch, head) survives. One Philox draw per score, keyed by
    ``seed + base`` with ``base`` = (batch * H + head) << 32 (one key per head), at the 32-bit counter
    ``row * n_k + col`` (rows and keys counted from the start of their sequence), so the draw does not depend on
    tiles, layout or the kernel: the forward and both backward kernels regenerate the same mask. 32-bit counters
    keep the tile's registers low; they need Nq * Nk < 2**31 per sequence (engine.ops checks).
    """
    return tl.rand(seed + base, rows * n_k + cols) >= dropout_p


@triton.jit
def shifted_rows(Bias, off_h, stride_bh, stride_bs, bias_len, pos):
    """(BLOCK_M,) pointers into ``shifted_table``'s copies for query positions ``pos`` (BLOCK_M,): row i reads key
    j's entry table[h, L - 1 + j - pos_i] at pointer + j, and every row pointer is 8-element aligned, so a tile's
    rows load as 16-byte vectors. Needs L - 1 - pos_i >= 0 (the call's positions within the table)."""
    start = bias_len - 1 - pos  # table index of key 0 for each row
    return Bias + off_h.to(tl.int64) * stride_bh + (start % SHIFTS) * stride_bs + (start // SHIFTS) * SHIFTS


@triton.jit
def relative_bias(bias_rows, cols, inv_scale):
    """The relative position bias of one (BLOCK_M, BLOCK_N) score tile for keys ``cols``, in the units of q . k
    (fp32, divided by the softmax scale like ``mask_bias``), gathered from the table of the tile's head.

    ``bias_rows`` (BLOCK_M,): ``shifted_rows`` of the tile's query rows (key j's entry at bias_rows[i] + j). The
    entries read stay in the shifted table when every row's position lies in the call's range (L >= the op's
    lengths; the caller clamps rows past the end) and the tile starts at a key < n_k: keys past the end of a
    ragged last tile read the table's padding (``MAX_BLOCK_N`` entries), never used (their scores are masked out
    afterwards). No load mask, so every row loads as 16-byte vectors.
    """
    return tl.load(bias_rows[:, None] + cols[None, :]).to(tl.float32) * inv_scale


# ----------------------------------------------------------------------------------------------------------------
# Host side: dot precision, and the one place that decides how K/V tiles are loaded.

def bias_args(table: torch.Tensor | None, pointer: str, *, shifted: bool = False) -> dict:
    """The kernel arguments of a relative position table (H, 2L - 1): {} for None (the kernels' defaults: no bias),
    else HAS_BIAS=True, L as ``bias_len`` and, passed as ``pointer``, the table with its head stride ``stride_bh``
    (distances with unit stride: an odd view of the small table is copied first), or with ``shifted`` its
    ``shifted_table`` with the head and copy strides ``stride_bh``, ``stride_bs``."""
    if table is None:
        return {}
    length = (table.shape[1] + 1) // 2
    if shifted:
        t = shifted_table(table)
        return {pointer: t, "stride_bh": t.stride(0), "stride_bs": t.stride(1), "bias_len": length, "HAS_BIAS": True}
    table = table if table.stride(1) == 1 else table.contiguous()
    return {pointer: table, "stride_bh": table.stride(0), "bias_len": length, "HAS_BIAS": True}


def shifted_table(table: torch.Tensor) -> torch.Tensor:
    """(H, 2L - 1) -> (H, SHIFTS, W) with [h, r, x] = table[h, x + r] (W: 2L - 1 + MAX_BLOCK_N rounded up to 16;
    entries past the table are zeros, read only for keys past the end of a tile): the flash kernel's form of the
    table. Any entry x of a row is some copy's entry at a multiple of SHIFTS, so each query row of a tile loads its
    contiguous run of keys as aligned vectors (one gathered value per score would cost a scalar load and its 64-bit
    address each). One small copy per call: H * SHIFTS * W values."""
    h, width = table.shape
    w = (width + MAX_BLOCK_N + 15) // 16 * 16
    padded = torch.nn.functional.pad(table, (0, w + TABLE_SHIFTS - 1 - width))  # (H, W + SHIFTS - 1)
    return padded.unfold(1, w, 1).contiguous()  # (H, SHIFTS, W)


def mask_launch_args(mask: torch.Tensor | None, q: torch.Tensor) -> tuple:
    """(Mask argument, MASK_KIND, MASK_PER_ROW, its 4 strides) of a dense launch for ``mask``: None, or a
    (B, H, Nq, Nk) view (stride 0 on broadcast dims), bool (passed as uint8) or floating (additive). q (B, H, Nq, D)
    stands in for a missing mask. MASK_PER_ROW: the mask varies along the query rows (not a key-padding mask)."""
    if mask is None:
        return q, 0, False, (0, 0, 0, 0)
    kind = 1 if mask.dtype == torch.bool else 2
    arg = mask.view(torch.uint8) if kind == 1 else mask
    strides = tuple(arg.stride())
    return arg, kind, strides[2] != 0 and q.shape[2] > 1, strides


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for ``dtype``: fp32 runs three TF32 products per dot ("tf32x3", fp32-accurate),
    or one ("tf32") when ``torch.backends.cuda.matmul.allow_tf32`` allows; ignored for 16-bit inputs."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def tma_addressable(t: torch.Tensor) -> bool:
    """TMA can read ``t``: 16-byte aligned base, unit last stride, every other stride a multiple of 16 bytes."""
    elem = t.element_size()
    return (t.data_ptr() % 16 == 0 and t.stride(-1) == 1
            and all(s * elem % 16 == 0 for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n > 1)
            and all(n > 0 for n in t.shape))


def use_kv_tma(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether K/V tiles are loaded by TMA (see the module docstring): a CUDA device of compute capability >= 9,
    a Triton with host tensor descriptors, not the interpreter, and TMA-addressable K and V."""
    if TensorDescriptor is None or k.device.type != "cuda" or interpreting():
        return False
    index = k.device.index if k.device.index is not None else torch.cuda.current_device()
    return _capability(index)[0] >= 9 and tma_addressable(k) and tma_addressable(v)


def kv_block_shape(rank: int, block_n: int, block_d: int) -> list[int]:
    """The TMA box of one K/V tile: (1, 1, BLOCK_N, BLOCK_D) for (B, H, N, D), (BLOCK_N, 1, BLOCK_D) for packed."""
    return [1, 1, block_n, block_d] if rank == 4 else [block_n, 1, block_d]


def kv_descriptors(k: torch.Tensor, v: torch.Tensor, block_n: int, block_d: int) -> tuple:
    """Host tensor descriptors of K and V ((B, H, N, D) or packed (total, H, D)) with the box of a
    (BLOCK_N, BLOCK_D) tile; ``set_kv_block_shape`` re-sizes the box when the autotuner picks BLOCK_N."""
    def desc(t):
        # Size-1 dims are never stepped along: give them a 16-byte stride, whatever torch reports.
        strides = [s if n > 1 else 16 // t.element_size() for n, s in zip(t.shape[:-1], t.stride()[:-1])] + [1]
        return TensorDescriptor(t, list(t.shape), strides, kv_block_shape(t.dim(), block_n, block_d))

    return desc(k), desc(v)


def set_kv_block_shape(nargs: dict) -> None:
    """Autotuner pre-hook: size the K/V descriptors' boxes for the configuration about to run."""
    for name in ("K_DESC", "V_DESC"):
        d = nargs.get(name)
        if d is not None:
            d.block_shape = kv_block_shape(len(d.shape), nargs["BLOCK_N"], nargs["BLOCK_D"])
