"""The relative-position-bias argument of the attention ops: its check, and the PyTorch paths' gather.

A relative position bias by distance is one learned value per (head, j - i): T5 (and mT5, UMT5, ...) add it to
every attention score. The ops take it as a table, never as the (B, H, Nq, Nk) tensor transformers materialises:

    relative_position_bias: (H, 2 * L - 1) floating tensor, L >= 1
    score(h, i, j) += relative_position_bias[h, (L - 1) + (pos_j - pos_i)]      (after the softmax scale)

where pos_j = j is the key's position and pos_i the query's, aligned as each op aligns causal masks:
``scaled_dot_product_attention`` top-left (pos_i = i), ``varlen_attention`` bottom-right per sequence
(pos_i = i + len_k - len_q), ``decode_attention`` bottom-right per row (pos_i = cache_seqlens[b] - Tq + i). L
must cover every distance the call can see: L >= max(Nq, Nk) (sdpa), >= max(max_seqlen_q, max_seqlen_k) (varlen),
>= Tmax (decode). Entries for distances a causal mask hides are never used. The table is shared by the batch.

The flash kernels (engine.kernels.attention) read the table itself, tile by tile: nothing of size Nq x Nk is built
(the dense / varlen kernel reads it as 8 shifted copies, ``common.shifted_table``, one small copy per call, so every
row of a tile loads as aligned vectors). The PyTorch paths gather only the (H, Nq, Nk) block each call needs, in
fp32: ``bias_block`` for queries at consecutive positions (SDPA, varlen: the block's rows are overlapping windows
of the table, read as one strided view and copied once, or one ``torch.take`` through a cached index for small
CPU blocks), ``bias_scores`` for any positions (decode: one position per batch row).
"""
from __future__ import annotations

import functools

import torch

from engine.ops._checks import FAST_FLOAT_DTYPES, check_floating, same_cuda_device
from engine.ops._checks import compiling as _compiling  # torch.compiler.is_compiling, cheaper

__all__ = ["bias_block", "bias_scores", "check_relative_position_bias", "relative_position_bias_ok"]

_Tensor = torch.Tensor
# CPU blocks of at most this many (Nq x Nk) entries gather through a cached index (one tensor op per call: at batch 1
# the few ops of the windowed copy cost more than the gather itself); larger ones take the windows (no index tensor).
CACHED_INDEX_MAX = 1 << 14


def check_relative_position_bias(table: object, *, heads: int, min_length: int,
                                 device: torch.device) -> torch.Tensor | None:
    """None, or a floating (heads, 2 * L - 1) table on ``device`` with L >= ``min_length``."""
    if table is None:
        return None
    table = check_floating("relative_position_bias", table)
    if table.dim() != 2 or table.shape[0] != heads or table.shape[1] % 2 == 0:
        raise ValueError(f"relative_position_bias must be (H, 2 * L - 1) = ({heads}, odd) (one value per head and "
                         f"distance j - i); got shape {tuple(table.shape)}")
    length = (table.shape[1] + 1) // 2
    if length < min_length:
        raise ValueError(f"relative_position_bias covers distances up to {length - 1} (L = {length}), but this call "
                         f"needs L >= {min_length}: shape (H, 2 * L - 1) = ({heads}, {2 * min_length - 1}) or wider")
    if table.device != device:
        raise ValueError(f"relative_position_bias must be on the query's device {device}; got {table.device}")
    return table


def relative_position_bias_ok(table: object, lead: torch.Tensor, heads: int, min_length: int) -> bool:
    """The ops' O(1) pre-check: True implies ``check_relative_position_bias(table, heads=heads,
    min_length=min_length, device=lead.device)`` passes (a float (heads, 2L - 1) table, L >= min_length, on
    ``lead``'s device); False means "not shown": run the full check."""
    return (isinstance(table, _Tensor) and table.dtype in FAST_FLOAT_DTYPES and len(s := table.shape) == 2
            and s[0] == heads and s[1] % 2 == 1 and s[1] >= 2 * min_length - 1
            and ((lead.is_cpu and table.is_cpu) or same_cuda_device(lead, table)))


def bias_scores(table: torch.Tensor, q_pos: torch.Tensor, n_k: int, *,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The bias block of one call: table (H, 2L - 1); q_pos (..., Nq) int64 query positions (keys at 0..Nk-1).

    Returns (..., H, Nq, Nk) in ``dtype`` (float32, or float64 for float64 attention). Distances outside the table
    (only possible for pairs a mask hides) are clamped to its ends.
    """
    length = (table.shape[1] + 1) // 2
    keys = torch.arange(n_k, device=q_pos.device)
    idx = (keys - q_pos[..., None] + (length - 1)).clamp_(0, 2 * length - 2)  # (..., Nq, Nk)
    return table.to(dtype)[:, idx].movedim(0, -3)


def bias_block(table: torch.Tensor, q_offset: int, n_q: int, n_k: int, *,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The bias block of queries at positions q_offset .. q_offset + n_q - 1 against keys 0 .. n_k - 1:
    (1, H, Nq, Nk) in ``dtype`` (the additive mask SDPA takes), equal to
    ``bias_scores(table, torch.arange(n_q) + q_offset, n_k)[None]``.

    Row i is ``table[:, s_i : s_i + n_k]`` with s_i = L - 1 - q_offset - i, so the rows are windows of the table
    (``unfold``) in reverse order: one copy instead of an index tensor and a gather. Falls back to ``bias_scores``
    when a distance lies outside the table (then clamped, as there) or the block is empty. Small CPU blocks
    (``CACHED_INDEX_MAX``) gather with ``torch.take`` through an index cached per (H, L, q_offset, Nq, Nk) instead:
    one op a call, which gives the 4-D block itself (callgrind: ~13k instructions, against ~28k for
    ``index_select``, ``view`` and ``[None]``)."""
    heads, width = table.shape
    length = (width + 1) // 2
    if 0 < n_q * n_k <= CACHED_INDEX_MAX and table.is_cpu and not _compiling():
        block = torch.take(table, _block_index(heads, length, q_offset, n_q, n_k))
        return block if block.dtype is dtype else block.to(dtype)
    lo = length - q_offset - n_q  # s_i of the last row
    if n_q <= 0 or n_k <= 0 or lo < 0 or length - 1 - q_offset + n_k > 2 * length - 1:
        return bias_scores(table, torch.arange(n_q, device=table.device) + q_offset, n_k, dtype=dtype)[None]
    return table.to(dtype).unfold(1, n_k, 1)[None, :, lo:lo + n_q].flip(2)


@functools.lru_cache(maxsize=32)
def _block_index(heads: int, length: int, q_offset: int, n_q: int, n_k: int) -> torch.Tensor:
    """(1, H, Nq, Nk) int64 CPU index for ``torch.take`` on a (H, 2L - 1) table (which reads any strides as the
    row-major flat tensor): entry (0, h, i, j) is h * (2L - 1) + L - 1 + j - (q_offset + i), the distance clamped to
    the table as ``bias_scores`` clamps. Read-only (shared by every call of these sizes). CPU only: a CUDA tensor
    made here during graph capture would hold no values until a replay."""
    col = (torch.arange(n_k) - (torch.arange(n_q) + q_offset)[:, None] + (length - 1)).clamp_(0, 2 * length - 2)
    return (col + (2 * length - 1) * torch.arange(heads)[:, None, None])[None]
