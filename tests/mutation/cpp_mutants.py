"""Hand-written mutations of the C++ sampler (csrc/), each rebuilt and judged by ``targets.CPP_TESTS``.

One realistic bug per entry, in code this machine runs (the AVX-512 twins are left out: a CPU without AVX-512 never
executes them). ``old`` must occur in ``path``; ``nth`` picks the occurrence (0 = first).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CppMutant:
    name: str
    path: str
    old: str
    new: str
    why: str  # the bug it models
    nth: int = 0

    @property
    def id(self) -> str:
        return f"{self.path}::{self.name}"

    def apply(self, source: str) -> str:
        at = -1
        for _ in range(self.nth + 1):
            at = source.find(self.old, at + 1)
            if at < 0:
                raise ValueError(f"{self.id}: {self.old!r} (occurrence {self.nth}) not found in {self.path}")
        return source[:at] + self.new + source[at + len(self.old):]


CPP = "csrc/sampler.cpp"
ROW = "csrc/sampler_row.h"
SIMD = "csrc/sampler_simd.h"
AVX = "csrc/sampler_avx.h"

CPP_MUTANTS: tuple[CppMutant, ...] = (
    CppMutant("penalty_sign", CPP, "x[id] = v < 0.0f ? v * pf : v / pf;", "x[id] = v < 0.0f ? v / pf : v * pf;",
              "repetition penalty applied the wrong way round for negative logits"),
    CppMutant("topk_prefilter_tie", CPP, "if (s.bmax[blk] < tau) continue;", "if (s.bmax[blk] <= tau) continue;",
              "top-k pre-filter drops the block whose maximum equals the threshold"),
    CppMutant("topk_kth_off_by_one", CPP, "theta = t[k - 1];", "theta = t[k];",
              "large-k top-k reads the (k+1)-th slot after nth_element"),
    CppMutant("minp_with_topp_ignored", CPP,
              "if (min_p > 0.0) theta = std::max(theta, min_p_threshold(m, min_p));",
              "if (min_p > 0.0) theta = std::min(theta, min_p_threshold(m, min_p));",
              "min-p is lost when top-p runs on the candidate path (an option combination)"),
    CppMutant("temperature_max_multiplied", CPP,
              "const float m = sampler_simd::div_float(raw, 1.0 / static_cast<double>(tf));",
              "const float m = sampler_simd::div_float(raw, static_cast<double>(tf));",
              "top-p's max is multiplied by T instead of divided"),
    CppMutant("topp_ties_kept", CPP, "for (size_t e = d; e < c.size() && c[e].v == cut; ++e) y[c[e].id] = 0.0f;",
              "", "ties past the top-p cut are kept (documented: the lower id wins)"),
    CppMutant("prev_token_bound", CPP, "if (id < 0 || id >= V)", "if (id < 0 || id > V)",
              "prev_tokens id == V is read out of bounds instead of rejected"),
    CppMutant("thread_rows_skipped", CPP, "for (int64_t b = B * t / n, e", "for (int64_t b = B * t / n + (t > 0), e",
              "each worker thread but the first skips its first row"),
    CppMutant("exp_poly_constant", SIMD, "p = p * r + 5.0000001201e-1f;", "p = p * r + 5.0001201e-1f;",
              "a typo in the scalar exp polynomial (tails of the vector loops)"),
    CppMutant("half_rebias", ROW, "bits_to_float(em << 13) * 0x1p112f", "bits_to_float(em << 13) * 0x1p111f",
              "float16 logits decoded at half their value"),
    CppMutant("uniform_bits", ROW, "static_cast<double>(z >> 11) * 0x1p-53", "static_cast<double>(z >> 12) * 0x1p-53",
              "the per-row uniform covers [0, 0.5) only"),
    CppMutant("strided_f32_load", ROW, "else for (int64_t i = 0; i < V; ++i) x[i] = p[i * sv];",
              "else for (int64_t i = 0; i < V; ++i) x[i] = p[i];", "strided float32 logits read as contiguous"),
    CppMutant("masked_sum_tail_tie", AVX, "for (; i < n; ++i) s += x[i] >= theta ? static_cast<double>(y[i]) : 0.0;",
              "for (; i < n; ++i) s += x[i] > theta ? static_cast<double>(y[i]) : 0.0;",
              "the AVX2 kept-mass tail drops the token equal to the cut (the k-th of top-k)"),
)
