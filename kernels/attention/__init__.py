"""Attention kernels: one family, one owner per file.

    common.py       jit helpers the kernels share (tile loads, masks) and the one host-side choice of how K/V
                    tiles are loaded (TMA on Hopper, else pointers); the dot precision per dtype
    fwd_kernels.py  the flash attention forward's @triton.jit kernels, dense (B, H, N, D) and packed varlen
                    (total, H, D), optionally storing the log-sum-exp for the backward, and with dropout
    fwd.py          their host side: tile tables, autotuning, launch; attention_fwd, varlen_fwd
    bwd_kernels.py  the flash attention backward's @triton.jit kernels (Delta preprocess, dK/dV, dQ) of both
    bwd.py          their host side: tile tables, launches; attention_bwd, varlen_bwd
    decode.py       flash-decoding against a KV cache: decode_attention_fwd
    specs.py        the launches engine.kernels.aot compiles for sm_90 (and tests/kernels gates)

Importing this package compiles nothing.
"""
from engine.kernels.attention.bwd import attention_bwd, varlen_bwd
from engine.kernels.attention.decode import decode_attention_fwd
from engine.kernels.attention.fwd import attention_fwd, varlen_fwd

__all__ = ["attention_bwd", "attention_fwd", "decode_attention_fwd", "varlen_bwd", "varlen_fwd"]
