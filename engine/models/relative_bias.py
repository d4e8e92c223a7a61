"""T5's bucketed relative position bias, as the (H, 2L - 1) table the attention ops take.

T5 (and mT5, UMT5) learn one value per (bucket, head); the bucket of a query-key pair depends only on the distance
j - i: exact for small distances, logarithmic up to ``max_distance``, then constant. Bidirectional (the encoder)
spends half the buckets on each sign; causal (the decoder) maps every j > i to bucket 0. Transformers looks the
bucket up for every (i, j) pair and materialises a (1, H, Nq, Nk) tensor; here it is looked up once per distance:

    table = bias_table(embedding_weight, bidirectional=..., num_buckets=..., max_distance=..., length=L)
    # table[h, L - 1 + d] = embedding_weight[bucket(d), h]  for d = j - i in [-(L - 1), L - 1]

``relative_position_bucket`` runs exactly the tensor operations of transformers' ``_relative_position_bucket``
(fp32 log, the same order of operations, truncation towards zero), so the buckets, and therefore the table
values, are bit-identical to transformers' ``compute_bias`` on the same device.
"""
from __future__ import annotations

import math

import torch

__all__ = ["bias_table", "relative_position_bucket"]


def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """int64 distances j - i (any shape) -> int64 buckets in [0, num_buckets) (Mesh TensorFlow's scheme)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    # relative_position is now >= 0: half the buckets are exact steps, the rest logarithmic up to max_distance
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    log_ratio = torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, large)


def bias_table(weight: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int,
               length: int) -> torch.Tensor:
    """The relative-position-bias table of one attention layer.

    weight: (num_buckets, H), the layer's ``relative_attention_bias`` embedding. length: L >= 1, the longest
    query or key sequence the table must serve. Returns (H, 2L - 1) in weight's dtype and device, contiguous:
    entry [h, L - 1 + d] is the bias of distance d = j - i.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1; got {length}")
    distances = torch.arange(-(length - 1), length, dtype=torch.long, device=weight.device)  # (2L - 1,)
    buckets = relative_position_bucket(distances, bidirectional=bidirectional, num_buckets=num_buckets,
                                       max_distance=max_distance)
    return weight[buckets].t().contiguous()
