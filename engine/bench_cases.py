"""The ops ``python -m engine bench`` checks: for each, engine's op, PyTorch's own op and a float64 reference on
the same random inputs (sizes per device, ``quick`` or full), as ``Case`` objects. ``engine.bench`` checks,
times and reports them; an op engine does not have (yet) gives a case whose ``engine`` is None.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass
class Case:
    """One op check: ``engine()`` and ``torch()`` give outputs compared against ``reference()`` (float64)."""

    op: str
    shape: str
    dtype: torch.dtype
    engine: Callable[[], Any] | None
    torch: Callable[[], Any]
    reference: Callable[[], Any]
    tensors: tuple = ()
    note: str = ""
    backend: str | None = None  # fixed backend name for ops that do not dispatch through engine.backend


def _op(name: str) -> Callable | None:
    try:
        ops = importlib.import_module("engine.ops")
    except Exception:
        return None
    return getattr(ops, name, None)


def _sampling_probs() -> Callable | None:
    try:
        mod = importlib.import_module("engine.sampling")
    except Exception:
        return None
    return getattr(mod, "probs", None)


def _sizes(device: torch.device, quick: bool) -> dict[str, tuple]:
    if device.type == "cuda":
        if quick:
            return {"rows": (4096, 1024), "elems": 1 << 22, "attn": (2, 8, 512, 64), "decode": (4, 12, 2048, 64),
                    "vocab": (8, 50257)}
        return {"rows": (16384, 4096), "elems": 1 << 26, "attn": (4, 16, 2048, 128), "decode": (16, 12, 8192, 64),
                "vocab": (64, 50257)}
    if quick:
        return {"rows": (64, 768), "elems": 1 << 14, "attn": (1, 2, 64, 32), "decode": (2, 2, 128, 32),
                "vocab": (2, 1000)}
    return {"rows": (1024, 1024), "elems": 1 << 20, "attn": (2, 4, 256, 64), "decode": (4, 12, 1024, 64),
            "vocab": (8, 50257)}


def make_cases(device: torch.device, dtype: torch.dtype, quick: bool, seed: int) -> list[Case]:
    """One ``Case`` per op row of ``python -m engine bench``, on random inputs drawn from ``seed`` on ``device``
    (``quick``: small sizes); ``dtype`` for the ops' inputs (the sampler's logits are fp32 on the CPU)."""
    sz = _sizes(device, quick)
    gens: dict[torch.device, torch.Generator] = {}

    def rand(*shape: int, scale: float = 1.0, on: torch.device = device, dt: torch.dtype = dtype) -> torch.Tensor:
        g = gens.setdefault(on, torch.Generator(device=on).manual_seed(seed))  # made where the data lives
        return (torch.randn(*shape, generator=g, device=on, dtype=torch.float32) * scale).to(dtype=dt)

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float64)

    cases: list[Case] = []
    rows, hidden = sz["rows"]
    x, r = rand(rows, hidden), rand(rows, hidden)
    w, b = rand(hidden, scale=0.5) + 1, rand(hidden, scale=0.5)
    ln, aln = _op("layer_norm"), _op("add_layer_norm")
    cases.append(Case(
        "layer_norm", f"{rows}x{hidden}", dtype,
        (lambda: ln(x, (hidden,), w, b, 1e-5)) if ln else None,
        lambda: F.layer_norm(x, (hidden,), w, b, 1e-5),
        lambda: F.layer_norm(f64(x), (hidden,), f64(w), f64(b), 1e-5), (x, w, b)))

    def add_ln_torch() -> tuple[torch.Tensor, torch.Tensor]:
        s = x + r
        return F.layer_norm(s, (hidden,), w, b, 1e-5), s

    def add_ln_ref() -> tuple[torch.Tensor, torch.Tensor]:
        s = f64(x) + f64(r)
        return F.layer_norm(s, (hidden,), f64(w), f64(b), 1e-5), s

    cases.append(Case("add_layer_norm", f"{rows}x{hidden}", dtype,
                      (lambda: aln(x, r, w, b, 1e-5)) if aln else None, add_ln_torch, add_ln_ref, (x, r, w, b)))
    rms, arms = _op("rms_norm"), _op("add_rms_norm")
    cases.append(Case(
        "rms_norm", f"{rows}x{hidden}", dtype, (lambda: rms(x, (hidden,), w, 1e-6)) if rms else None,
        lambda: F.rms_norm(x, (hidden,), w, 1e-6), lambda: F.rms_norm(f64(x), (hidden,), f64(w), 1e-6), (x, w)))
    cases.append(Case(
        "add_rms_norm", f"{rows}x{hidden}", dtype, (lambda: arms(x, r, w, 1e-6)) if arms else None,
        lambda: (F.rms_norm(x + r, (hidden,), w, 1e-6), x + r),
        lambda: (F.rms_norm(f64(x) + f64(r), (hidden,), f64(w), 1e-6), f64(x) + f64(r)), (x, r, w)))

    n = sz["elems"]
    width = 3072 if n >= 3072 * 64 else 768
    g = rand(n // width, width, scale=2.0)
    gb = rand(width)
    gelu, bias_gelu = _op("gelu"), _op("bias_gelu")
    for approx in ("none", "tanh"):
        cases.append(Case(
            "gelu" if approx == "none" else "gelu tanh", f"{n // width}x{width}", dtype,
            (lambda a=approx: gelu(g, approximate=a)) if gelu else None,
            lambda a=approx: F.gelu(g, approximate=a),
            lambda a=approx: F.gelu(f64(g), approximate=a), (g,)))
    cases.append(Case("bias_gelu", f"{n // width}x{width}", dtype,
                      (lambda: bias_gelu(g, gb)) if bias_gelu else None,
                      lambda: F.gelu(g + gb), lambda: F.gelu(f64(g) + f64(gb)), (g, gb)))
    geglu, half = _op("gelu_and_mul"), width // 2  # g as [gate | up] halves

    def geglu_ref(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t[:, :half], approximate="tanh") * t[:, half:]

    cases.append(Case("gelu_and_mul tanh", f"{n // width}x{width}", dtype,
                      (lambda: geglu(g, "tanh")) if geglu else None, lambda: geglu_ref(g),
                      lambda: geglu_ref(f64(g)), (g,)))

    bsz, heads, seq, hd = sz["attn"]
    q, k, v = (rand(bsz, heads, seq, hd) for _ in range(3))
    sdpa = _op("scaled_dot_product_attention")
    for causal in (False, True):
        cases.append(Case(
            "sdpa causal" if causal else "sdpa", f"{bsz}x{heads}x{seq}x{hd}", dtype,
            (lambda c=causal: sdpa(q, k, v, is_causal=c)) if sdpa else None,
            lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c),
            lambda c=causal: F.scaled_dot_product_attention(f64(q), f64(k), f64(v), is_causal=c), (q, k, v)))

    bsz, heads, tmax, hd = sz["decode"]
    dq = rand(bsz, heads, 1, hd)
    kc, vc = rand(bsz, heads, tmax, hd), rand(bsz, heads, tmax, hd)
    lens = torch.randint(1, tmax + 1, (bsz,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    lens[0] = tmax  # one full row
    lens = lens.to(device)
    keep = (torch.arange(tmax, device=device)[None, :] < lens[:, None].long())[:, None, None, :]  # (B, 1, 1, Tmax)
    decode = _op("decode_attention")
    cases.append(Case(
        "decode_attention", f"{bsz}x{heads}x1x{hd} cache {tmax}", dtype,
        (lambda: decode(dq, kc, vc, lens)) if decode else None,
        lambda: F.scaled_dot_product_attention(dq, kc, vc, attn_mask=keep),
        lambda: F.scaled_dot_product_attention(f64(dq), f64(kc), f64(vc), attn_mask=keep), (dq, kc, vc)))

    bsz, vocab = sz["vocab"]
    logits = rand(bsz, vocab, scale=3.0, on=torch.device("cpu"), dt=torch.float32)  # the sampler runs on the CPU
    probs = _sampling_probs()

    def probs_ref(lg: torch.Tensor, temperature: float = 0.8, top_k: int = 50) -> torch.Tensor:
        scaled = lg / temperature
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        return torch.softmax(scaled.masked_fill(scaled < kth, -math.inf), dim=-1)

    cases.append(Case(
        "sampling.probs", f"{bsz}x{vocab} T=0.8 top_k=50", torch.float32,
        (lambda: probs(logits, temperature=0.8, top_k=50)) if probs else None,
        lambda: probs_ref(logits), lambda: probs_ref(f64(logits)), (logits,), note="cpu", backend="c++"))
    return cases
