"""The relative position bias gathered inside the flash kernels (HAS_BIAS), launchers called directly with poisoned
outputs, against float64 references built with ``bias_scores`` (the PyTorch paths' own gather, clamping included).

Dense (top-left positions, Nq != Nk, every mask kind, causal), varlen (bottom-right per sequence, lengths 1 to past a
block, empty sequences), decode (Tq = 1 and > 1, ragged and too-short cache lengths, one and several splits), tables
that just cover the call and longer ones, head dims 16 and 80, fp32 / fp16 / bf16 and their tables. Under the
interpreter the dense/varlen kernel tiles by 32 x 16 (INTERPRETER_CONFIG), so N = 33 crosses blocks and diagonals.
The routing (ops -> these kernels) is checked in test_position_bias.py.
"""
import sys

import pytest
import torch

from engine.kernels.attention import decode as kdec
from engine.kernels.attention import fwd as kfwd
from engine.ops.position_bias import bias_scores

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: 2e-4, F16: 4e-3, BF16: 3e-2}


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("ENGINE_BACKEND", "triton")


def _rand(*shape, gen, dtype=F32, scale=1.0, device="cpu"):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _attend(q, k, v, table, q_pos, keep, scale, add=None):
    """float64: softmax(scale * q.k + table[h, L - 1 + j - q_pos[i]] (+ add), hidden where ~keep) @ v; rows that
    see no key are zeros. q (B, H, Nq, D), k/v (B, H, Nk, D), q_pos (B or 1, Nq), keep / add broadcast to
    (B, H, Nq, Nk)."""
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    s = s + bias_scores(table.cpu().double(), q_pos, k.shape[2], dtype=torch.float64)  # (B or 1, H, Nq, Nk)
    if add is not None:
        s = s + add.double()
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v.double()


def _close(out, ref, dtype):
    assert torch.isfinite(out).all(), "poisoned output left unwritten (or NaN produced)"
    torch.testing.assert_close(out.cpu().double(), ref, atol=TOL[dtype], rtol=TOL[dtype])


DENSE = [  # (B, H, Nq, Nk, D, extra table length, causal, mask, dtype, scale)
    (1, 2, 1, 1, 16, 0, False, "none", F32, 1.0),
    (2, 2, 7, 7, 16, 0, True, "keypad", F32, 1.0),
    (1, 2, 33, 33, 80, 5, True, "none", BF16, 1.0),
    (2, 1, 33, 7, 16, 0, False, "bool", F16, 1.0),
    (1, 2, 7, 33, 16, 3, True, "additive", F32, 1.0),
    (2, 2, 33, 33, 16, 0, False, "keypad-additive", F32, 0.3),
    (1, 3, 33, 20, 16, 40, True, "keypad", BF16, 1.0),
]


@pytest.mark.parametrize("case", DENSE, ids=lambda c: "-".join(map(str, c[:8])) + f"-{str(c[8])[6:]}-s{c[9]}")
def test_dense_kernel_bias(case, device):
    B, H, Nq, Nk, D, extra, causal, mask_kind, dtype, scale = case
    gen = torch.Generator().manual_seed(Nq * 100 + Nk)
    q = _rand(B, H, Nq, D, gen=gen, dtype=dtype, device=device)
    k, v = (_rand(B, H, Nk, D, gen=gen, dtype=dtype, device=device) for _ in range(2))
    L = max(Nq, Nk) + extra
    table = _rand(H, 2 * L - 1, gen=gen, scale=2.0, dtype=F32 if dtype == F32 else dtype, device=device)
    keep = torch.ones(B, 1, Nq, Nk, dtype=torch.bool)
    mask, add = None, None
    if mask_kind == "keypad":  # T5's encoder padding: (B, 1, 1, Nk) bool; sequence 0 loses its first key
        mask = torch.ones(B, 1, 1, Nk, dtype=torch.bool)
        mask[0, ..., 0] = False
        mask[-1, ..., Nk // 2:] = False
        keep = keep & mask
    elif mask_kind == "bool":  # full (B, H, Nq, Nk), one query row sees nothing
        mask = torch.rand(B, H, Nq, Nk, generator=gen) > 0.3
        mask[0, 0, 3] = False
        keep = keep & mask
    elif mask_kind == "additive":
        add = _rand(B, H, Nq, Nk, gen=gen)
        add[..., 1] = float("-inf")
        mask = add.to(dtype)
        keep = keep & (add != float("-inf"))
    elif mask_kind == "keypad-additive":
        add = torch.zeros(B, 1, 1, Nk, dtype=torch.float64)
        add[1, ..., 5:9] = float("-inf")
        add[0, ..., 2] = -3.0
        mask = add.to(dtype)
        keep = keep & (add != float("-inf"))
    if causal:
        keep = keep & torch.ones(Nq, Nk, dtype=torch.bool).tril()
    out = torch.full((B, H, Nq, D), float("nan"), dtype=dtype, device=device)
    m4 = None if mask is None else mask.to(device).expand(B, H, Nq, Nk)
    kfwd.attention_fwd(q, k, v, out, mask=m4, causal=causal, scale=scale, relative_position_bias=table)
    ref = _attend(q.cpu(), k.cpu(), v.cpu(), table, torch.arange(Nq)[None], keep,
                  scale, None if add is None else add.to(dtype).double())
    _close(out, ref, dtype)


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,extra", [(F32, 0), (BF16, 6)])
def test_varlen_kernel_bias(causal, dtype, extra, device):
    """Per sequence, query i sits at i + len_k - len_q (bottom-right): lengths 1, 7, 33 (past a 32-row block), an
    empty query sequence, len_q > len_k and len_q < len_k."""
    gen = torch.Generator().manual_seed(23)
    H, D = 2, 16
    lq, lk = [1, 7, 33, 0, 9], [4, 7, 35, 3, 5]
    q = _rand(sum(lq), H, D, gen=gen, dtype=dtype, device=device)
    k, v = (_rand(sum(lk), H, D, gen=gen, dtype=dtype, device=device) for _ in range(2))
    L = max(max(lq), max(lk)) + extra
    table = _rand(H, 2 * L - 1, gen=gen, scale=2.0, dtype=dtype, device=device)
    cu_q, cu_k = _cu(lq).to(device), _cu(lk).to(device)
    out = torch.full_like(q, float("nan"))
    kfwd.varlen_fwd(q, k, v, out, cu_q, cu_k, max(lq), causal=causal, scale=1.0, relative_position_bias=table)
    for b in range(len(lq)):
        if lq[b] == 0:
            continue
        qs, ks = int(cu_q[b]), int(cu_k[b])
        qb = q[qs:qs + lq[b]].transpose(0, 1)[None].cpu()
        kb, vb = (t[ks:ks + lk[b]].transpose(0, 1)[None].cpu() for t in (k, v))
        q_pos = torch.arange(lq[b]) + lk[b] - lq[b]
        keep = torch.ones(1, 1, lq[b], lk[b], dtype=torch.bool)
        if causal:
            keep = keep & (torch.arange(lk[b])[None, :] <= q_pos[:, None])
        ref = _attend(qb, kb, vb, table, q_pos[None], keep, 1.0)[0].transpose(0, 1)
        _close(out[qs:qs + lq[b]], ref, dtype)


DECODE = [  # (Tq, D, extra table length, num_splits, dtype, lengths)
    (1, 16, 0, None, F32, [9, 40, 1]),
    (1, 80, 7, 3, BF16, [40, 23, 17]),
    (3, 16, 0, 3, F32, [3, 40, 26]),
    (17, 16, 2, None, F16, [17, 40, 30]),   # Tq past one 16-row block
    (3, 16, 0, 2, F32, [0, 2, 40]),         # unvalidated lengths below Tq: rows with no key are zeros
]


@pytest.mark.parametrize("case", DECODE, ids=lambda c: f"Tq{c[0]}-d{c[1]}-x{c[2]}-s{c[3]}-{str(c[4])[6:]}")
def test_decode_kernel_bias(case, device):
    """Query i of row b sits at cache_seqlens[b] - Tq + i; keys 0 .. cache_seqlens[b] - 1."""
    Tq, D, extra, splits, dtype, lens = case
    gen = torch.Generator().manual_seed(29 + Tq)
    B, H, Tmax = len(lens), 2, 40
    q = _rand(B, H, Tq, D, gen=gen, dtype=dtype, device=device)
    kc, vc = (_rand(B, H, Tmax, D, gen=gen, dtype=dtype, device=device) for _ in range(2))
    L = Tmax + extra
    table = _rand(H, 2 * L - 1, gen=gen, scale=2.0, dtype=dtype, device=device)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))
    kdec.decode_attention_fwd(q, kc, vc, seqlens, scale=1.0, out=out, num_splits=splits,
                              relative_position_bias=table)
    q_pos = torch.tensor(lens)[:, None] - Tq + torch.arange(Tq)[None]  # (B, Tq)
    keep = (torch.arange(Tmax)[None, None, :] <= q_pos[:, :, None])[:, None]
    ref = _attend(q.cpu(), kc.cpu(), vc.cpu(), table, q_pos, keep, 1.0)
    _close(out, ref, dtype)
    dead = q_pos < 0
    assert (out.cpu()[dead[:, None].expand(B, H, Tq)] == 0).all()


def test_shifted_table_holds_every_entry_aligned():
    """shifted_table(t)[h, r, x] == t[h, x + r] wherever x + r is in the table; rows are 16 entries wide multiples,
    so any start index s is copy s % 8 at the aligned offset s - s % 8."""
    from engine.kernels.attention.common import MAX_BLOCK_N, TABLE_SHIFTS, shifted_table

    gen = torch.Generator().manual_seed(37)
    for L in (1, 4, 9, 17):
        t = _rand(3, 2 * L - 1, gen=gen, dtype=BF16)
        s = shifted_table(t)
        assert s.shape[:2] == (3, TABLE_SHIFTS) and s.shape[2] % 16 == 0
        assert s.shape[2] >= 2 * L - 1 + MAX_BLOCK_N  # a ragged last key tile reads padding, not past the end
        assert s.is_contiguous()
        for start in range(2 * L - 1):
            r, a = start % TABLE_SHIFTS, start - start % TABLE_SHIFTS
            n = 2 * L - 1 - start
            assert torch.equal(s[:, r, a:a + n], t[:, start:])


def test_every_key_tile_fits_the_table_padding():
    """The bias loads of a ragged last key tile are unmasked: no configuration's BLOCK_N may exceed the padding."""
    from engine.kernels.attention.common import MAX_BLOCK_N

    tiles = [c[1] for cs in kfwd.CONFIGS.values() for c in cs] + [c[1] for c in kfwd.FP32_CONFIGS.values()]
    assert max(tiles + [kfwd.INTERPRETER_CONFIG[1]]) <= MAX_BLOCK_N


def test_autotuner_prunes_bias_calls_as_per_row_masks(monkeypatch):
    """The bias tile is staged through shared memory like a per-row mask: the autotuner's pruning counts it (calls
    without a bias pass no HAS_BIAS at all: the kernel's default)."""
    from engine.kernels import aot

    monkeypatch.setattr(kfwd, "_device_smem", lambda index: aot.H200_MAX_SHARED_BYTES)
    configs = kfwd._configs(128)
    q = torch.empty(1, 1, 1, 128, dtype=BF16)

    def kept(**flags):
        args = dict(BLOCK_D=128, N_BUCKET=16384, MASK_KIND=0, MASK_PER_ROW=False, **flags)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kfwd._early_prune(configs, {"Q": q}, **args)]

    per_row = kfwd.prune_configs(configs, block_d=128, elem=2, bucket=16384, smem_limit=aot.H200_MAX_SHARED_BYTES,
                                 mask_per_row=True)
    assert kept(HAS_BIAS=True) == [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in per_row]
    assert len(kept()) > len(kept(HAS_BIAS=True))  # without the bias the widest tile fits


@pytest.mark.skipif(torch.cuda.is_available() or sys.platform == "win32", reason="a CPU page guard (POSIX mmap)")
@pytest.mark.parametrize("after", [True, False], ids=["guard-after", "guard-before"])
def test_bias_loads_stay_inside_the_table(monkeypatch, after):
    """Every table the kernels read lies flush against an unreadable page, after its end or before its start, so a
    load outside it crashes, though such a load could not change a stored value (it feeds only scores that are
    masked out, or rows that are never stored). Decode: the (H, 2L - 1) table itself; the padding rows of a 16-row
    block and the keys of a ragged tile past the cache length have distances outside the table, whose indices are
    clamped to it. Dense (varlen shares the code): the shifted copy the launcher builds (``common.shifted_table``);
    rows past the last query are clamped to it (their positions would start before the table). L just covers each
    call."""
    from ops_util import at_page_end, at_page_start

    from engine.kernels.attention import common as kcommon

    place = at_page_end if after else at_page_start
    build = kcommon.shifted_table
    monkeypatch.setattr(kcommon, "shifted_table", lambda t: place(build(t)))
    gen = torch.Generator().manual_seed(41)
    H, D = 1, 16
    # decode: row 0 sees 3 keys of a 40-key cache (keys past 3 in its 64-key tile lie past the table's end), row 1
    # the full cache (the block's padding rows sit past position 40 + 12, before the table's start)
    Tq, Tmax = 3, 40
    q = _rand(2, H, Tq, D, gen=gen)
    kc, vc = (_rand(2, H, Tmax, D, gen=gen) for _ in range(2))
    table = place(_rand(H, 2 * Tmax - 1, gen=gen, scale=2.0))
    lens = [3, 40]
    for splits in (None, 2):
        out = torch.full_like(q, float("nan"))
        kdec.decode_attention_fwd(q, kc, vc, torch.tensor(lens, dtype=torch.int32), scale=1.0, out=out,
                                  num_splits=splits, relative_position_bias=table)
        q_pos = torch.tensor(lens)[:, None] - Tq + torch.arange(Tq)[None]
        keep = (torch.arange(Tmax)[None, None, :] <= q_pos[:, :, None])[:, None]
        _close(out, _attend(q, kc, vc, table, q_pos, keep, 1.0), F32)
    # dense: 33 queries (two 32-row blocks: the second block's padding rows reach position 63 > L - 1 = 32)
    n = 33
    q, k, v = (_rand(1, H, n, D, gen=gen) for _ in range(3))
    table = _rand(H, 2 * n - 1, gen=gen, scale=2.0)
    for causal in (False, True):
        out = torch.full_like(q, float("nan"))
        kfwd.attention_fwd(q, k, v, out, mask=None, causal=causal, scale=1.0, relative_position_bias=table)
        keep = torch.ones(n, n, dtype=torch.bool)
        keep = keep.tril() if causal else keep
        _close(out, _attend(q, k, v, table, torch.arange(n)[None], keep[None, None], 1.0), F32)


def test_a_bias_of_minus_inf_hides_keys():
    """A table may hold -inf (a distance that is never attended, like a mask): the kernels take the -inf-safe
    softmax update for every bias call, so a whole unmasked key tile at -inf for a row (the first stage's full
    tiles: rows 16..32 of 33 see keys 0..15 only through -inf) leaves that row finite, as the float64 softmax."""
    gen = torch.Generator().manual_seed(43)
    n, H, D = 33, 1, 16
    q, k, v = (_rand(1, H, n, D, gen=gen) for _ in range(3))
    table = _rand(H, 2 * n - 1, gen=gen)
    table[:, :n - 1] = float("-inf")  # key j before query i (j - i < 0): hidden
    out = torch.full_like(q, float("nan"))
    kfwd.attention_fwd(q, k, v, out, mask=None, causal=False, scale=1.0, relative_position_bias=table)
    keep = torch.ones(n, n, dtype=torch.bool).triu()[None, None]
    _close(out, _attend(q, k, v, table.nan_to_num(neginf=0.0), torch.arange(n)[None], keep, 1.0), F32)
