"""The static KV cache of generation (engine/generate.py): preallocated per-layer keys/values that GPT-2's attention
writes the new tokens into and reads through ``ops.decode_attention``; fixed shapes, so a decode step can be
captured in a CUDA graph."""
from __future__ import annotations

import torch

from engine import ops
from engine.models import blocks

__all__ = ["StaticKVCache"]


class StaticKVCache:
    """Preallocated keys/values (B, H, Tmax, D) per layer, rows left-aligned; the GPT-2 model's cache hook.

    ``positions`` (B, 1) int64: where each row's next token goes (= its position id). ``seqlens`` (B,) int32:
    valid positions including the token being decoded (what ``ops.decode_attention`` reads). With ``prefilling``
    set, ``attend`` writes k/v of the prompt at 0..T-1 and runs causal attention over them alone; otherwise it
    takes one new token per row (T == 1), scatters it at ``positions`` and attends over the cache.
    """

    def __init__(self, *, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        B, H, D = batch_size, num_heads, head_dim
        self.k = [torch.zeros(B, H, max_len, D, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(B, H, max_len, D, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.positions = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.seqlens = torch.zeros(B, dtype=torch.int32, device=device)
        self._index = self.positions.view(B, 1, 1, 1).expand(B, H, 1, D)  # a view: follows positions in place
        self.prefilling = False

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
               relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v (B, H, T, D) of the new tokens -> attention output (B, H, T, D). relative_position_bias: None, or
        T5's (H, 2L - 1) table with L >= max_len (see engine.ops.position_bias)."""
        kc, vc = self.k[layer_idx], self.v[layer_idx]
        bias = relative_position_bias
        if self.prefilling:
            T = k.shape[2]
            kc[:, :, :T].copy_(k)
            vc[:, :, :T].copy_(v)
            return blocks.sdpa(q, k, v, mask=None, causal=True, scale=scale, relative_position_bias=bias)
        kc.scatter_(2, self._index, k)
        vc.scatter_(2, self._index, v)
        # 1 <= seqlens <= Tmax
        return ops.decode_attention(q, kc, vc, self.seqlens, scale=scale, validate=False, relative_position_bias=bias)
