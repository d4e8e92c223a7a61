"""The attention launches that ``engine.kernels.aot`` compiles for sm_90 (and tests/kernels gates).

Each list calls the real launchers on meta tensors inside ``aot.recording()``, in the layouts the models pass
(views of a fused qkv projection, B=2, H=16, N=4096), with the K/V path a Hopper launch takes (TMA) unless
named otherwise. ``fwd_specs`` for the dense/varlen kernel, ``bwd_specs`` for its backward, ``decode_specs`` for
flash-decoding.
"""
from __future__ import annotations

import torch

from engine.kernels.aot import H200_MAX_SHARED_BYTES, TRITON_DTYPES, meta, recording
from engine.kernels.attention import bwd, decode, fwd


def _fused_qkv(b: int, h: int, n: int, d: int, dtype: torch.dtype):
    """q, k, v as the models pass them: views of a fused (B, N, 3, H, D) projection, each (B, H, N, D); and an
    output in the layout ``engine.ops`` allocates for such a q ((B, N, H, D) storage)."""
    qkv = meta((b, n, 3, h, d), dtype).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2], meta((b, n, h, d), dtype).transpose(1, 2)


def _kept(block_d: int, per_row: bool = False) -> list[tuple[int, int, int, int]]:
    """The 16-bit configurations the autotuner keeps on an H200 for long sequences (under a per-row mask)."""
    kept = fwd.prune_configs(fwd._configs(block_d), block_d=block_d, elem=2, bucket=16384,
                             smem_limit=H200_MAX_SHARED_BYTES, mask_per_row=per_row)
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]


def fwd_specs() -> list:
    """Launches of ``attention_fwd`` / ``varlen_fwd``:

    - every 16-bit configuration the autotuner keeps on an H200 per padded head dim, bf16, causal, no mask;
    - the fp32 configuration of each head dim (three TF32 products per dot), causal; fp16 once (D=128);
    - the padded-batch paths of the models, bf16 additive masks: GPT-2's (B, 1, N, N) per-row mask with the
      causal triangle folded in (D = 64 and 128: every configuration kept under it; D = 256: the first),
      BERT's (B, 1, 1, N) key-padding mask, bidirectional (D = 64, 128); the heaviest mask tile, a per-row
      fp32 additive mask on a causal call (D = 64, 128); a boolean per-row mask once (fp16, D=64);
    - varlen (packed (total, H, D) views of a fused qkv): bidirectional at D=64 (BERT packed), causal at
      D=128, and a padded head dim (80 in a 128 tile);
    - the pointer (cp.async) path that GPUs before Hopper and older Tritons take: bf16 D = 64 and 128, fp32 D=64;
    - T5's relative position bias (``_bias``: a (H, 2N - 1) table in the model's dtype, gathered per tile):
      bidirectional bf16 in every configuration kept at D = 64 and 128, with the encoder's boolean key-padding
      mask (D=64), causal (the decoder, D=64), varlen (the packed encoder, D=64), fp32 (D=64) and the pointer
      path (bf16, D=64).
    - training (inputs that require grad): the forward that also stores the softmax statistics (STORE_LSE), bf16
      D = 64, 128 causal and fp32 D=64; with dropout in the kernel (DROPOUT, its own fixed tiles) on BERT's
      key-padding call (D = 64, 128, 256) and on varlen (D=64).
    """
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    b, h, n = 2, 16, 4096

    def dense(tag, dtype, d, cfg, *, causal=True, mask=None, kv_tma=True, bias=False, lse=False, dropout=None):
        q, k, v, out = _fused_qkv(b, h, n, d, dtype)
        bm, bn, w, st = cfg
        kind = "causal" if causal else "bidir"
        tag += "_bias" if bias else ""
        with rec.name(f"attn_{TRITON_DTYPES[dtype]}_d{d}_{kind}{tag}{'' if kv_tma else '_ptr'}_m{bm}n{bn}w{w}s{st}"):
            fwd.attention_fwd(q, k, v, out, mask=None if mask is None else mask.expand(b, h, n, n), causal=causal,
                              scale=1.0 if bias else d ** -0.5, config=cfg, kv_tma=kv_tma,
                              relative_position_bias=meta((h, 2 * n - 1), dtype) if bias else None,
                              lse=meta((2, b, h, n), torch.float32) if lse else None, dropout=dropout)

    def varlen(d, cfg, *, causal, tag="", bias=False, lse=False, dropout=None):
        total = b * n
        qkv = meta((total, 3, h, d), bf16)
        bm, bn, w, st = cfg
        tag += "_bias" if bias else ""
        with rec.name(f"attn_bf16_d{d}_{'causal' if causal else 'bidir'}_varlen{tag}_m{bm}n{bn}w{w}s{st}"):
            fwd.varlen_fwd(qkv[:, 0], qkv[:, 1], qkv[:, 2], meta((total, h, d), bf16),
                           meta((b + 1,), torch.int32), meta((b + 1,), torch.int32), n, causal=causal,
                           scale=1.0 if bias else d ** -0.5, config=cfg, kv_tma=True,
                           relative_position_bias=meta((h, 2 * n - 1), bf16) if bias else None,
                           lse=meta((2, h, total), torch.float32) if lse else None, dropout=dropout)

    with recording() as rec:
        for bd in fwd.CONFIGS:
            for cfg in _kept(bd):
                dense("", bf16, bd, cfg)
            dense("", fp32, bd, fwd.FP32_CONFIGS[bd])
        dense("", fp16, 128, _kept(128)[0])
        for d in (64, 128, 256):
            for cfg in _kept(d, per_row=True)[: None if d < 256 else 1]:
                dense("_addmask", bf16, d, cfg, causal=False, mask=meta((b, 1, n, n), bf16))
        for d in (64, 128):
            dense("_keypad", bf16, d, _kept(d)[0], causal=False, mask=meta((b, 1, 1, n), bf16))
            dense("_addmask32", bf16, d, _kept(d, per_row=True)[0], mask=meta((b, 1, n, n), fp32))
        dense("_boolmask", fp16, 64, _kept(64, per_row=True)[0], causal=False,
              mask=meta((b, 1, n, n), torch.bool))
        varlen(64, _kept(64)[0], causal=False)
        varlen(128, _kept(128)[0], causal=True)
        varlen(80, _kept(128)[0], causal=True)
        dense("", bf16, 64, _kept(64)[0], kv_tma=False)
        dense("", bf16, 128, _kept(128)[0], kv_tma=False)
        dense("", fp32, 64, fwd.FP32_CONFIGS[64], kv_tma=False)
        for d in (64, 128):  # a bias tile stages through shared memory as a per-row mask does: pruned alike
            for cfg in _kept(d, per_row=True):
                dense("", bf16, d, cfg, causal=False, bias=True)
        biased = _kept(64, per_row=True)[0]
        dense("_keypadbool", bf16, 64, biased, causal=False, mask=meta((b, 1, 1, n), torch.bool), bias=True)
        dense("", bf16, 64, biased, bias=True)
        varlen(64, biased, causal=False, bias=True)
        dense("", fp32, 64, fwd.FP32_CONFIGS[64], causal=False, bias=True)
        dense("", bf16, 64, biased, causal=False, kv_tma=False, bias=True)
        for d in (64, 128):
            dense("_lse", bf16, d, _kept(d)[0], lse=True)
        dense("_lse", fp32, 64, fwd.FP32_CONFIGS[64], lse=True)
        for d in (64, 128, 256):  # BERT's key-padding call, the dropout configuration of each head dim
            dense("_keypad_lse_dropout", bf16, d, fwd.DROPOUT_CONFIGS[d], causal=False, mask=meta((b, 1, 1, n), bf16),
                  lse=True, dropout=(12345, 0.1))
        varlen(64, fwd.DROPOUT_CONFIGS[64], causal=False, tag="_lse_dropout", lse=True, dropout=(12345, 0.1))
    return rec.launches


def _cfg(c: tuple[int, int, int, int]) -> str:
    return "m{}n{}w{}s{}".format(*c)


def bwd_specs() -> list:
    """Launches of ``attention_bwd`` / ``varlen_bwd`` (each: the Delta preprocess, the dK/dV kernel, the dQ kernel,
    named ``.../attn_bwd_preprocess``, ``.../attn_bwd_dkdv``, ``.../attn_bwd_dq``), in the layouts autograd passes
    (q, k, v views of a fused projection, dO in the output's (B, N, H, D) layout, fresh contiguous gradients):

    - bf16 causal at every padded head dim, and bidirectional at D = 64 and 128 (the FlashAttention grid);
    - fp16 D=128 causal; fp32 (three TF32 products per dot) causal at every head dim it runs (<= 64);
    - masks (bf16 / fp16, D=64, bidirectional): GPT-2's per-row additive mask, BERT's key-padding mask (also with
      dropout), a per-row boolean mask;
    - varlen (packed (total, H, D)): bidirectional at D=64 (also with dropout), causal at D=128, and D=80.
    """
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    b, h, n = 2, 16, 4096

    def configs(dtype, d):
        bd = fwd.block_d_of(d)
        if dtype == fp32:
            return bwd.FP32_DKDV_CONFIGS[bd], bwd.FP32_DQ_CONFIGS[bd]
        return bwd.DKDV_CONFIGS[bd], bwd.DQ_CONFIGS[bd]

    def dense(tag, dtype, d, *, causal=True, mask=None, dropout=None):
        q, k, v, out = _fused_qkv(b, h, n, d, dtype)
        do = meta((b, n, h, d), dtype).transpose(1, 2)
        grads = [meta((b, h, n, d), dtype) for _ in range(3)]
        kv, dq = configs(dtype, d)
        kind = "causal" if causal else "bidir"
        with rec.name(f"attnbwd_{TRITON_DTYPES[dtype]}_d{d}_{kind}{tag}_kv{_cfg(kv)}_q{_cfg(dq)}"):
            bwd.attention_bwd(do, q, k, v, out, meta((2, b, h, n), fp32), *grads,
                              mask=None if mask is None else mask.expand(b, h, n, n), causal=causal,
                              scale=d ** -0.5, dropout=dropout)

    def varlen(d, *, causal, tag="", dropout=None):
        total = b * n
        qkv = meta((total, 3, h, d), bf16)
        kv, dq = configs(bf16, d)
        with rec.name(f"attnbwd_bf16_d{d}_{'causal' if causal else 'bidir'}_varlen{tag}_kv{_cfg(kv)}_q{_cfg(dq)}"):
            bwd.varlen_bwd(meta((total, h, d), bf16), qkv[:, 0], qkv[:, 1], qkv[:, 2], meta((total, h, d), bf16),
                           meta((2, h, total), fp32), *[meta((total, h, d), bf16) for _ in range(3)],
                           meta((b + 1,), torch.int32), meta((b + 1,), torch.int32), n, n, causal=causal,
                           scale=d ** -0.5, dropout=dropout)

    with recording() as rec:
        for d in bwd.DKDV_CONFIGS:
            dense("", bf16, d)
        for d in bwd.FP32_DKDV_CONFIGS:
            dense("", fp32, d)
        for d in (64, 128):
            dense("", bf16, d, causal=False)
        dense("", fp16, 128)
        dense("_addmask", bf16, 64, causal=False, mask=meta((b, 1, n, n), bf16))
        dense("_keypad", bf16, 64, causal=False, mask=meta((b, 1, 1, n), bf16))
        dense("_keypad_dropout", bf16, 64, causal=False, mask=meta((b, 1, 1, n), bf16), dropout=(12345, 0.1))
        dense("_boolmask", fp16, 64, causal=False, mask=meta((b, 1, n, n), torch.bool))
        varlen(64, causal=False)
        varlen(64, causal=False, tag="_dropout", dropout=(12345, 0.1))
        varlen(128, causal=True)
        varlen(80, causal=True)
    return rec.launches


def decode_specs() -> list:
    """Launches of ``decode_attention_fwd`` per dtype and head dim: one new token per sequence (q a view of a
    fused (B, 1, 3, H, D) projection, as the models pass it) against a (B=4, H=12, Tmax=4096, D) cache, split in
    two so both the split kernel (one build for one split and for several) and the combine kernel launch; and
    with T5's relative position bias (``_bias``: a (H, 2 Tmax - 1) table in the model's dtype) per dtype at
    D = 64 and bf16 at D = 128 (the combine kernel is the same build: not repeated)."""
    b, h, t = 4, 12, 4096

    def one(dtype, d, bias):
        ty = TRITON_DTYPES[dtype]
        q = meta((b, 1, 3, h, d), dtype).permute(2, 0, 3, 1, 4)[0]
        with rec.name(f"decode_{ty}_d{d}{'_bias' if bias else ''}"):
            decode.decode_attention_fwd(q, meta((b, h, t, d), dtype), meta((b, h, t, d), dtype),
                                        meta((b,), torch.int32), scale=1.0 if bias else d ** -0.5,
                                        num_splits=1 if bias else 2,
                                        relative_position_bias=meta((h, 2 * t - 1), dtype) if bias else None)

    with recording() as rec:
        for dtype in TRITON_DTYPES:
            for d in decode.HEAD_DIMS:
                one(dtype, d, False)
        for dtype in TRITON_DTYPES:
            one(dtype, 64, True)
        one(torch.bfloat16, 128, True)
    return rec.launches
