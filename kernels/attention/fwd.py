"""Flash attention forward, host side: the tile tables, autotuning and launch of the forward kernel
(``fwd_kernels``: the algorithm, masks, bias, TMA and causal alignments are described there), and the public
``attention_fwd`` (dense (B, H, N, D)) and ``varlen_fwd`` (packed (total, H, D)).
"""
from __future__ import annotations

import functools

import torch
import triton

from engine.backend import interpreting
from engine.kernels.attention.common import (
    LOG2E, MAX_BLOCK_N, bias_args, kv_descriptors, mask_launch_args, precision, set_kv_block_shape, use_kv_tma,
)
from engine.kernels.attention.fwd_kernels import _attn_fwd_kernel
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
