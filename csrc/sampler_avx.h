// AVX2 / AVX-512 twins of the sampler's vector loops (x86 with GCC / Clang, chosen at run time). Included by
// sampler_simd.h only, after the base loops: each twin runs its base loop's operations in the same order, so results
// are bit-identical (tests/test_sampling.py compares them).
#pragma once

#include <immintrin.h>

namespace sampler_simd {
#define ENGINE_AVX2 __attribute__((target("avx2")))
ENGINE_AVX2 inline __m256 exp_nonpos8(__m256 d) {
  const __m256 c = _mm256_max_ps(d, _mm256_set1_ps(kExpMin));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(c, _mm256_set1_ps(1.44269504088896341f)), magic), magic);
  __m256 r = _mm256_sub_ps(c, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(_mm256_cmp_ps(d, _mm256_set1_ps(kExpMin), _CMP_LT_OQ),
                          _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

ENGINE_AVX2 inline __m256 div_float8(__m256 v, __m256d r) {
  const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), r));
  const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), r));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

ENGINE_AVX2 inline float scan_avx2(const float* x, int64_t n, int64_t* bad) {
  int64_t i = 0;
  __m256 m0 = _mm256_set1_ps(-kInf), m1 = m0;
  __m256i nb = _mm256_setzero_si256();
  const __m256 inf = _mm256_set1_ps(kInf);
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    m0 = _mm256_max_ps(v0, m0);
    m1 = _mm256_max_ps(v1, m1);
    nb = _mm256_sub_epi32(nb, _mm256_castps_si256(_mm256_cmp_ps(v0, inf, _CMP_NLT_UQ)));
    nb = _mm256_sub_epi32(nb, _mm256_castps_si256(_mm256_cmp_ps(v1, inf, _CMP_NLT_UQ)));
  }
  float ml[8];
  int32_t cl[8];
  _mm256_storeu_ps(ml, _mm256_max_ps(m0, m1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(cl), nb);
  float m = -kInf;
  int64_t count = 0;
  for (int l = 0; l < 8; ++l) { m = ml[l] > m ? ml[l] : m; count += cl[l]; }
  *bad += count;
  const float rest = scan_base(x + i, n - i, bad);
  return rest > m ? rest : m;
}

ENGINE_AVX2 inline float block_max_avx2(const float* src, float* dst, int64_t n, float div, float* bmax,
                                        int64_t* bad) {
  const bool divide = div != 1.0f;
  const __m256d rv = _mm256_set1_pd(1.0 / static_cast<double>(div));
  const __m256 inf = _mm256_set1_ps(kInf);
  __m256i nb = _mm256_setzero_si256();
  float m = -kInf;
  int64_t i = 0, k = 0;
  for (; i + kBlockMax <= n; i += kBlockMax, ++k) {
    __m256 v[8];
    for (int q = 0; q < 8; ++q) {
      v[q] = _mm256_loadu_ps(src + i + 8 * q);
      if (divide) v[q] = div_float8(v[q], rv);
      _mm256_storeu_ps(dst + i + 8 * q, v[q]);
      nb = _mm256_sub_epi32(nb, _mm256_castps_si256(_mm256_cmp_ps(v[q], inf, _CMP_NLT_UQ)));
    }
    const __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])),
                                   _mm256_max_ps(_mm256_max_ps(v[4], v[5]), _mm256_max_ps(v[6], v[7])));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float b = _mm_cvtss_f32(h);
    bmax[k] = b;
    m = b > m ? b : m;
  }
  int32_t cl[8];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(cl), nb);
  for (int l = 0; l < 8; ++l) *bad += cl[l];
  if (i < n) {
    const float b = div_scan_base(src + i, dst + i, n - i, div, bad);
    bmax[k] = b;
    m = b > m ? b : m;
  }
  return m;
}

ENGINE_AVX2 inline void exp_masked_avx2(const float* x, float* y, int64_t n, float m, float theta) {
  int64_t i = 0;
  const __m256 mv = _mm256_set1_ps(m), tv = _mm256_set1_ps(theta);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_and_ps(_mm256_cmp_ps(v, tv, _CMP_GE_OQ), exp_nonpos8(_mm256_sub_ps(v, mv))));
  }
  exp_masked_base(x + i, y + i, n - i, m, theta);
}

ENGINE_AVX2 inline double masked_sum_avx2(const float* x, const float* y, int64_t n, float theta) {
  int64_t i = 0;
  const __m256 tv = _mm256_set1_ps(theta);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_GE_OQ), _mm256_loadu_ps(y + i));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double lanes[8];
  _mm256_storeu_pd(lanes, a0);
  _mm256_storeu_pd(lanes + 4, a1);
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  for (; i < n; ++i) s += x[i] >= theta ? static_cast<double>(y[i]) : 0.0;
  return s;
}

ENGINE_AVX2 inline void exp_bins_avx2(const float* x, float* y, int32_t* bin, int64_t n, float m, float theta,
                                      float scale, float top) {
  int64_t i = 0;
  const __m256 mv = _mm256_set1_ps(m), tv = _mm256_set1_ps(theta), sv = _mm256_set1_ps(scale),
               topv = _mm256_set1_ps(top);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_and_ps(_mm256_cmp_ps(v, tv, _CMP_GE_OQ), exp_nonpos8(_mm256_sub_ps(v, mv))));
    const __m256 d = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(mv, v), sv), topv);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bin + i), _mm256_cvttps_epi32(d));
  }
  exp_bins_base(x + i, y + i, bin + i, n - i, m, theta, scale, top);
}

// Byte j of kCompact[mask] is the lane of the j-th set bit of mask: a permutation that packs the selected lanes.
struct CompactTable {
  uint64_t v[256];
  constexpr CompactTable() : v() {
    for (int mask = 0; mask < 256; ++mask) {
      uint64_t p = 0;
      for (int l = 0, j = 0; l < 8; ++l)
        if (mask >> l & 1) p |= static_cast<uint64_t>(l) << (8 * j++);
      v[mask] = p;
    }
  }
};
constexpr CompactTable kCompact{};

ENGINE_AVX2 inline double exp_select_avx2(const float* src, int64_t n, float div, float m, float lo, float* cx,
                                          float* cy, int32_t* cid, int64_t* nc) {
  const bool divide = div != 1.0f;
  const double rdiv = 1.0 / static_cast<double>(div);
  const __m256 dv = _mm256_set1_ps(div);  // correctly rounded, so equal to div_float (and cheaper here)
  const __m256 mv = _mm256_set1_ps(m), lov = _mm256_set1_ps(lo);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0;
  __m256i id = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  int64_t i = 0, c = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(src + i);
    if (divide) x = _mm256_div_ps(x, dv);
    const __m256 y = exp_nonpos8(_mm256_sub_ps(x, mv));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(y)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)));
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, lov, _CMP_GE_OQ));
    const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(kCompact.v + mask)));
    _mm256_storeu_ps(cx + c, _mm256_permutevar8x32_ps(x, perm));
    _mm256_storeu_ps(cy + c, _mm256_permutevar8x32_ps(y, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cid + c), _mm256_permutevar8x32_epi32(id, perm));
    c += __builtin_popcount(static_cast<unsigned>(mask));
    id = _mm256_add_epi32(id, eight);
  }
  double lanes[8];
  _mm256_storeu_pd(lanes, a0);
  _mm256_storeu_pd(lanes + 4, a1);
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  exp_select_tail(src, i, n, rdiv, divide, m, lo, cx, cy, cid, &c, &s);
  *nc = c;
  return s;
}

// AVX-512F twin of exp_select (the top-p pass, the hottest loop): 16 lanes, the same operations in the same order.
#define ENGINE_AVX512 __attribute__((target("avx2,avx512f")))
ENGINE_AVX512 inline __m512 exp_nonpos16(__m512 d) {
  const __m512 c = _mm512_max_ps(d, _mm512_set1_ps(kExpMin));
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
  __m512 r = _mm512_sub_ps(c, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __mmask16 low = _mm512_cmp_ps_mask(d, _mm512_set1_ps(kExpMin), _CMP_LT_OQ);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~low), p, _mm512_castsi512_ps(e));
}

ENGINE_AVX512 inline double exp_select_avx512(const float* src, int64_t n, float div, float m, float lo, float* cx,
                                              float* cy, int32_t* cid, int64_t* nc) {
  const bool divide = div != 1.0f;
  const __m512 dv = _mm512_set1_ps(div), mv = _mm512_set1_ps(m), lov = _mm512_set1_ps(lo);
  __m512d acc = _mm512_setzero_pd();  // lane l sums elements i % 8 == l in index order, as the 8-lane loops do
  __m512i id = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t i = 0, c = 0;
  for (; i + 8 <= n; i += 16) {
    const __mmask16 in = i + 16 <= n ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>(0xff);
    __m512 x = _mm512_maskz_loadu_ps(in, src + i);
    if (divide) x = _mm512_div_ps(x, dv);
    const __m512 y = exp_nonpos16(_mm512_sub_ps(x, mv));
    const __m512 yh = _mm512_castpd_ps(_mm512_shuffle_f64x2(_mm512_castps_pd(y), _mm512_castps_pd(y), 0xee));
    acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(y)));
    if (in == 0xffff) acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(yh)));
    const __mmask16 k = static_cast<__mmask16>(_mm512_cmp_ps_mask(x, lov, _CMP_GE_OQ) & in);
    const int count = __builtin_popcount(static_cast<unsigned>(k));
    const __mmask16 out = static_cast<__mmask16>((1u << count) - 1u);
    _mm512_mask_storeu_ps(cx + c, out, _mm512_maskz_compress_ps(k, x));
    _mm512_mask_storeu_ps(cy + c, out, _mm512_maskz_compress_ps(k, y));
    _mm512_mask_storeu_epi32(cid + c, out, _mm512_maskz_compress_epi32(k, id));
    c += count;
    id = _mm512_add_epi32(id, _mm512_set1_epi32(16));
    if (in != 0xffff) { i += 8; break; }
  }
  double lanes[8];
  _mm512_storeu_pd(lanes, acc);
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  exp_select_tail(src, i, n, 1.0 / static_cast<double>(div), divide, m, lo, cx, cy, cid, &c, &s);
  *nc = c;
  return s;
}

// AVX-512F twin of exp_hist: the scalar scatter of each 16 lanes runs beside the next vectors' exp.
ENGINE_AVX512 inline void exp_hist_avx512(const float* src, int64_t n, float div, float m, float scale, float top,
                                          float* x, float* y, int32_t* bin, double* h0, double* h1) {
  const bool divide = div != 1.0f;
  const __m512 dv = _mm512_set1_ps(div), mv = _mm512_set1_ps(m), sv = _mm512_set1_ps(scale),
               tv = _mm512_set1_ps(top);
  auto block = [&](int64_t i) ENGINE_AVX512 {
    __m512 v = _mm512_loadu_ps(src + i);
    if (divide) v = _mm512_div_ps(v, dv);
    _mm512_storeu_ps(x + i, v);
    _mm512_storeu_ps(y + i, exp_nonpos16(_mm512_sub_ps(v, mv)));
    _mm512_storeu_si512(bin + i, _mm512_cvttps_epi32(_mm512_min_ps(_mm512_mul_ps(_mm512_sub_ps(mv, v), sv), tv)));
  };
  auto scatter = [&](int64_t q, int64_t e) {
    for (; q < e; q += 2) {
      h0[bin[q]] += static_cast<double>(y[q]);
      h1[bin[q + 1]] += static_cast<double>(y[q + 1]);
    }
  };
  // 32 entries a step (two independent exp chains); the scalar scatter trails two steps behind, so its loads never
  // wait on a failed forward from a 64-byte store.
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    block(i);
    block(i + 16);
    if (i >= 64) scatter(i - 64, i - 32);
  }
  scatter(i < 64 ? 0 : i - 64, i);
  const double rdiv = 1.0 / static_cast<double>(div);
  for (; i < n; ++i) {
    x[i] = divide ? div_float(src[i], rdiv) : src[i];
    y[i] = exp_nonpos(x[i] - m);
    const float d = (m - x[i]) * scale;
    bin[i] = static_cast<int32_t>(d < top ? d : top);
    (i & 1 ? h1 : h0)[bin[i]] += static_cast<double>(y[i]);
  }
}

inline bool use_avx512() {  // ENGINE_SAMPLER_NO_AVX512=1 keeps the AVX2 loops (tests compare the three)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
                          !std::getenv("ENGINE_SAMPLER_NO_AVX2") && !std::getenv("ENGINE_SAMPLER_NO_AVX512");
  return yes;
}

ENGINE_AVX2 inline int64_t find_int_avx2(const int32_t* a, int64_t from, int64_t n, int32_t v) {
  int64_t i = from;
  const __m256i vv = _mm256_set1_epi32(v);
  for (; i + 8 <= n; i += 8) {
    const __m256i e = _mm256_cmpeq_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)), vv);
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(e));
    if (mask) return i + __builtin_ctz(static_cast<unsigned>(mask));
  }
  return find_int_base(a, i, n, v);
}

ENGINE_AVX2 inline void write_probs_avx2(const float* x, const float* y, float* out, int64_t n, float theta,
                                         float inv) {
  int64_t i = 0;
  const __m256 tv = _mm256_set1_ps(theta), iv = _mm256_set1_ps(inv);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(out + i, _mm256_and_ps(_mm256_cmp_ps(v, tv, _CMP_GE_OQ),
                                            _mm256_mul_ps(_mm256_loadu_ps(y + i), iv)));
  }
  write_probs_base(x + i, y + i, out + i, n - i, theta, inv);
}

inline bool use_avx2() {  // ENGINE_SAMPLER_NO_AVX2=1 forces the base loops (tests compare the two)
  static const bool yes = __builtin_cpu_supports("avx2") && !std::getenv("ENGINE_SAMPLER_NO_AVX2");
  return yes;
}

}  // namespace sampler_simd
