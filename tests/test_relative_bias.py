"""engine.models.relative_bias: the (H, 2L - 1) tables are bit-identical to transformers' compute_bias.

transformers builds the (1, H, Nq, Nk) bias from its bucket function for every query-key pair; engine looks each
distance up once. Gathered back into (H, Nq, Nk) by the ops' own gather (``bias_scores``), every value must be
exactly transformers' (torch.equal, no tolerance), for the encoder (bidirectional), the decoder (causal, incl.
decode steps with cached tokens) and several bucket counts and maximum distances, for T5 and UMT5.
"""
import pytest
import torch
import transformers as T

from engine.models.relative_bias import bias_table, relative_position_bucket
from engine.ops.position_bias import bias_scores

# (num_buckets, max_distance): T5's default, small, wide, and odd ones (max_distance barely above max_exact).
BUCKETS = [(32, 128), (16, 64), (8, 20), (64, 256), (32, 33), (10, 37)]
# (query length, key length, tokens already cached): an encoder pass, a decode step late in a long cache, a chunk.
SHAPES = [(200, 200, 0), (1, 520, 519), (5, 160, 155)]


def _hf_attention(cls: str, num_buckets: int, max_distance: int, decoder: bool) -> torch.nn.Module:
    cfg_cls, mod = (T.T5Config, T.models.t5.modeling_t5.T5Attention) if cls == "t5" else \
        (T.UMT5Config, T.models.umt5.modeling_umt5.UMT5Attention)
    cfg = cfg_cls(num_heads=3, d_model=12, d_kv=4, relative_attention_num_buckets=num_buckets,
                  relative_attention_max_distance=max_distance, is_decoder=decoder)
    torch.manual_seed(num_buckets * 1000 + max_distance)
    att = mod(cfg, has_relative_attention_bias=True, layer_idx=0)
    torch.nn.init.normal_(att.relative_attention_bias.weight)
    return att


@pytest.mark.parametrize("cls", ["t5", "umt5"])
@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("num_buckets,max_distance", BUCKETS)
def test_table_is_bit_identical_to_transformers(cls, decoder, num_buckets, max_distance):
    att = _hf_attention(cls, num_buckets, max_distance, decoder)
    w = att.relative_attention_bias.weight.detach()
    for n_q, n_k, past in SHAPES:
        with torch.no_grad():
            ref = att.compute_bias(n_q, n_k, past_seen_tokens=past)[0]  # (H, Nq, Nk)
        table = bias_table(w, bidirectional=not decoder, num_buckets=num_buckets, max_distance=max_distance,
                           length=max(n_q + past, n_k))
        assert table.shape == (3, 2 * max(n_q + past, n_k) - 1) and table.is_contiguous()
        ours = bias_scores(table, torch.arange(n_q) + past, n_k)
        assert torch.equal(ours, ref), f"{(ours != ref).sum()} values differ for {(n_q, n_k, past)}"


@pytest.mark.parametrize("num_buckets,max_distance", BUCKETS)
def test_buckets_match_transformers_function(num_buckets, max_distance):
    d = torch.arange(-2000, 2001)
    for bidirectional in (False, True):
        ref = T.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            d, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
        ours = relative_position_bucket(d, bidirectional=bidirectional, num_buckets=num_buckets,
                                        max_distance=max_distance)
        assert torch.equal(ours, ref)
        assert 0 <= int(ours.min()) and int(ours.max()) < num_buckets


def test_table_dtype_and_half_precision():
    w = torch.randn(32, 4).to(torch.bfloat16)
    t = bias_table(w, bidirectional=True, num_buckets=32, max_distance=128, length=5)
    assert t.dtype == torch.bfloat16 and t.shape == (4, 9)
    b = relative_position_bucket(torch.arange(-4, 5), bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(t, w[b].t())
    with pytest.raises(ValueError, match="length"):
        bias_table(w, bidirectional=True, num_buckets=32, max_distance=128, length=0)


@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "decoder"])
def test_one_token_table(decoder):
    """length=1 (a one-token input, the first decode step) is the smallest valid table: (H, 1), transformers'
    bias of a single query-key pair at distance 0."""
    att = _hf_attention("t5", 32, 128, decoder)
    w = att.relative_attention_bias.weight.detach()
    table = bias_table(w, bidirectional=not decoder, num_buckets=32, max_distance=128, length=1)
    with torch.no_grad():
        ref = att.compute_bias(1, 1)[0]  # (H, 1, 1)
    assert table.shape == (3, 1) and torch.equal(bias_scores(table, torch.arange(1), 1), ref)
