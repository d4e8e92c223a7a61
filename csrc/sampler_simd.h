// Vector loops of the sampler (csrc/sampler.cpp): SSE2 on x86, plain C++ elsewhere, with AVX2 / AVX-512 twins
// chosen at run time. All paths run the same IEEE float/double operations in the same order (max, compare, add, mul,
// correctly rounded divides, truncating converts; sums in 8 fixed lanes), so their results are bit-identical: a seed
// draws the same ids on every platform.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#define ENGINE_SAMPLER_SSE2 1
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ENGINE_SAMPLER_AVX2 1  // AVX2 twins of the hottest loops, chosen at run time (no FMA: same results)
#endif

namespace sampler_simd {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kExpMin = -87.0f;  // exp of anything lower is taken as 0 (2^n stays a normal float above it)

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// exp(d) for d <= 0: Cephes' range reduction and polynomial (~1 ulp); 0 below kExpMin and for -inf.
inline float exp_nonpos(float d) {
  const float c = d > kExpMin ? d : kExpMin;
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest integer
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return d < kExpMin ? 0.0f : p * scale;
}

#ifdef ENGINE_SAMPLER_SSE2
inline __m128 exp_nonpos(__m128 d) {
  const __m128 c = _mm_max_ps(d, _mm_set1_ps(kExpMin));
  const __m128 magic = _mm_set1_ps(12582912.0f);
  const __m128 n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(c, _mm_set1_ps(1.44269504088896341f)), magic), magic);
  __m128 r = _mm_sub_ps(c, _mm_mul_ps(n, _mm_set1_ps(0.693359375f)));
  r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(-2.12194440e-4f)));
  __m128 p = _mm_set1_ps(1.9875691500e-4f);
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.3981999507e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(8.3334519073e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(4.1665795894e-2f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.6666665459e-1f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(5.0000001201e-1f));
  p = _mm_add_ps(_mm_add_ps(_mm_mul_ps(_mm_mul_ps(p, r), r), r), _mm_set1_ps(1.0f));
  const __m128i e = _mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(n), _mm_set1_epi32(127)), 23);
  return _mm_andnot_ps(_mm_cmplt_ps(d, _mm_set1_ps(kExpMin)), _mm_mul_ps(p, _mm_castsi128_ps(e)));
}
#endif

// x / div as float32 division rounds it, computed as (float)((double)x * (1.0 / div)): the double product is within
// 2^-52 of x / div, closer than x / div can come to a float32 rounding midpoint, so the result is bit-identical to
// division (and to torch's `scores / temperature`), and cheaper than vdivps.
inline float div_float(float v, double r) { return static_cast<float>(static_cast<double>(v) * r); }
#ifdef ENGINE_SAMPLER_SSE2
inline __m128 div_float(__m128 v, __m128d r) {
  const __m128 lo = _mm_cvtpd_ps(_mm_mul_pd(_mm_cvtps_pd(v), r));
  const __m128 hi = _mm_cvtpd_ps(_mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(v, v)), r));
  return _mm_movelh_ps(lo, hi);
}
#endif

// Returns max(x) and adds the count of NaN / +inf entries to *bad (reads only).
inline float scan_base(const float* x, int64_t n, int64_t* bad) {
  int64_t i = 0, count = 0;
  float m = -kInf;
#ifdef ENGINE_SAMPLER_SSE2
  __m128 mv = _mm_set1_ps(-kInf);
  __m128i nb = _mm_setzero_si128();
  const __m128 inf = _mm_set1_ps(kInf);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    mv = _mm_max_ps(v, mv);
    nb = _mm_sub_epi32(nb, _mm_castps_si128(_mm_cmpnlt_ps(v, inf)));
  }
  float ml[4];
  int32_t cl[4];
  _mm_storeu_ps(ml, mv);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(cl), nb);
  for (int l = 0; l < 4; ++l) { m = ml[l] > m ? ml[l] : m; count += cl[l]; }
#endif
  for (; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    count += !(x[i] < kInf);
  }
  *bad += count;
  return m;
}

// dst[i] = src[i] / div (a copy when div == 1; src == dst is fine); returns max(dst), adds the NaN / +inf count.
inline float div_scan_base(const float* src, float* dst, int64_t n, float div, int64_t* bad) {
  const double rdiv = 1.0 / static_cast<double>(div);
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128d dv = _mm_set1_pd(rdiv);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(src + i);
    _mm_storeu_ps(dst + i, div != 1.0f ? div_float(v, dv) : v);
  }
#endif
  for (; i < n; ++i) dst[i] = div != 1.0f ? div_float(src[i], rdiv) : src[i];
  return scan_base(dst, n, bad);
}

// dst[i] = src[i] / div; bmax[k] = max of block k (kBlockMax entries each); returns the overall max.
constexpr int64_t kBlockMax = 64;
inline float block_max_base(const float* src, float* dst, int64_t n, float div, float* bmax, int64_t* bad) {
  float m = -kInf;
  for (int64_t i = 0, k = 0; i < n; i += kBlockMax, ++k) {
    const float b = div_scan_base(src + i, dst + i, n - i < kBlockMax ? n - i : kBlockMax, div, bad);
    bmax[k] = b;
    m = b > m ? b : m;
  }
  return m;
}

// y[i] = x[i] >= theta ? exp(x[i] - m) : 0.
inline void exp_masked_base(const float* x, float* y, int64_t n, float m, float theta) {
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128 mv = _mm_set1_ps(m), tv = _mm_set1_ps(theta);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    _mm_storeu_ps(y + i, _mm_and_ps(_mm_cmpge_ps(v, tv), exp_nonpos(_mm_sub_ps(v, mv))));
  }
#endif
  for (; i < n; ++i) y[i] = x[i] >= theta ? exp_nonpos(x[i] - m) : 0.0f;
}

// Sum of y[i] over x[i] >= theta in double: element i goes to lane i % 8 (from i0), then lanes 0..7, then the tail.
inline double masked_sum_base(const float* x, const float* y, int64_t n, float theta) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128 tv = _mm_set1_ps(theta);
  __m128d a0 = _mm_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 8 <= n; i += 8) {
    const __m128 y0 = _mm_and_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i), tv), _mm_loadu_ps(y + i));
    const __m128 y1 = _mm_and_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i + 4), tv), _mm_loadu_ps(y + i + 4));
    a0 = _mm_add_pd(a0, _mm_cvtps_pd(y0));
    a1 = _mm_add_pd(a1, _mm_cvtps_pd(_mm_movehl_ps(y0, y0)));
    a2 = _mm_add_pd(a2, _mm_cvtps_pd(y1));
    a3 = _mm_add_pd(a3, _mm_cvtps_pd(_mm_movehl_ps(y1, y1)));
  }
  _mm_storeu_pd(lanes, a0);
  _mm_storeu_pd(lanes + 2, a1);
  _mm_storeu_pd(lanes + 4, a2);
  _mm_storeu_pd(lanes + 6, a3);
#else
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += x[i + l] >= theta ? static_cast<double>(y[i + l]) : 0.0;
#endif
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  for (; i < n; ++i) s += x[i] >= theta ? static_cast<double>(y[i]) : 0.0;
  return s;
}

// out[i] = x[i] >= theta ? y[i] * inv : 0.
inline void write_probs_base(const float* x, const float* y, float* out, int64_t n, float theta, float inv) {
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128 tv = _mm_set1_ps(theta), iv = _mm_set1_ps(inv);
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    _mm_storeu_ps(out + i, _mm_and_ps(_mm_cmpge_ps(v, tv), _mm_mul_ps(_mm_loadu_ps(y + i), iv)));
  }
#endif
  for (; i < n; ++i) out[i] = x[i] >= theta ? y[i] * inv : 0.0f;
}

// bin[i] = (int)min((m - x[i]) * scale, top): log-spaced and monotone in x (ties share a bin).
inline void bins_base(const float* x, int32_t* bin, int64_t n, float m, float scale, float top) {
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128 mv = _mm_set1_ps(m), sv = _mm_set1_ps(scale), tv = _mm_set1_ps(top);
  for (; i + 4 <= n; i += 4) {
    const __m128 d = _mm_min_ps(_mm_mul_ps(_mm_sub_ps(mv, _mm_loadu_ps(x + i)), sv), tv);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bin + i), _mm_cvttps_epi32(d));
  }
#endif
  for (; i < n; ++i) {
    const float d = (m - x[i]) * scale;
    bin[i] = static_cast<int32_t>(d < top ? d : top);
  }
}

// exp_masked and bins in one pass (top-p).
inline void exp_bins_base(const float* x, float* y, int32_t* bin, int64_t n, float m, float theta, float scale,
                          float top) {
  exp_masked_base(x, y, n, m, theta);
  bins_base(x, bin, n, m, scale, top);
}

// The top-p pass: x = src[i] / div, y = exp(x - m); returns the sum of y in double (element i to lane i % 8, then
// lanes 0..7, then the tail in order) and appends (x, y, i) of every entry with x >= lo to cx, cy, cid (in index
// order; they need room for n + 8 entries), setting *nc to their count. src holds no NaN / +inf.
inline void exp_select_tail(const float* src, int64_t i, int64_t n, double rdiv, bool divide, float m, float lo,
                            float* cx, float* cy, int32_t* cid, int64_t* nc, double* sum) {
  int64_t c = *nc;
  double s = *sum;
  for (; i < n; ++i) {
    const float x = divide ? div_float(src[i], rdiv) : src[i];
    const float y = exp_nonpos(x - m);
    s += static_cast<double>(y);
    cx[c] = x; cy[c] = y; cid[c] = static_cast<int32_t>(i);
    c += x >= lo;
  }
  *nc = c;
  *sum = s;
}

inline double exp_select_base(const float* src, int64_t n, float div, float m, float lo, float* cx, float* cy,
                              int32_t* cid, int64_t* nc) {
  const bool divide = div != 1.0f;
  const double rdiv = 1.0 / static_cast<double>(div);
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0, c = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128d dv = _mm_set1_pd(rdiv);
  const __m128 mv = _mm_set1_ps(m), lov = _mm_set1_ps(lo);
  __m128d a0 = _mm_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 8 <= n; i += 8) {
    __m128 x0 = _mm_loadu_ps(src + i), x1 = _mm_loadu_ps(src + i + 4);
    if (divide) { x0 = div_float(x0, dv); x1 = div_float(x1, dv); }
    const __m128 y0 = exp_nonpos(_mm_sub_ps(x0, mv)), y1 = exp_nonpos(_mm_sub_ps(x1, mv));
    a0 = _mm_add_pd(a0, _mm_cvtps_pd(y0));
    a1 = _mm_add_pd(a1, _mm_cvtps_pd(_mm_movehl_ps(y0, y0)));
    a2 = _mm_add_pd(a2, _mm_cvtps_pd(y1));
    a3 = _mm_add_pd(a3, _mm_cvtps_pd(_mm_movehl_ps(y1, y1)));
    unsigned mask = static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(x0, lov)) |
                                          (_mm_movemask_ps(_mm_cmpge_ps(x1, lov)) << 4));
    if (mask) {
      float xs[8], ys[8];
      _mm_storeu_ps(xs, x0); _mm_storeu_ps(xs + 4, x1);
      _mm_storeu_ps(ys, y0); _mm_storeu_ps(ys + 4, y1);
      for (; mask; mask &= mask - 1) {
        const int l = __builtin_ctz(mask);
        cx[c] = xs[l]; cy[c] = ys[l]; cid[c] = static_cast<int32_t>(i + l); ++c;
      }
    }
  }
  _mm_storeu_pd(lanes, a0);
  _mm_storeu_pd(lanes + 2, a1);
  _mm_storeu_pd(lanes + 4, a2);
  _mm_storeu_pd(lanes + 6, a3);
#else
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      const float x = divide ? div_float(src[i + l], rdiv) : src[i + l];
      const float y = exp_nonpos(x - m);
      lanes[l] += static_cast<double>(y);
      cx[c] = x; cy[c] = y; cid[c] = static_cast<int32_t>(i + l);
      c += x >= lo;
    }
  }
#endif
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  exp_select_tail(src, i, n, rdiv, divide, m, lo, cx, cy, cid, &c, &s);
  *nc = c;
  return s;
}

// First index i >= from with a[i] == v, or n.
inline int64_t find_int_base(const int32_t* a, int64_t from, int64_t n, int32_t v) {
  int64_t i = from;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128i vv = _mm_set1_epi32(v);
  for (; i + 4 <= n; i += 4) {
    const int mask = _mm_movemask_epi8(_mm_cmpeq_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)), vv));
    if (mask) return i + __builtin_ctz(static_cast<unsigned>(mask)) / 4;
  }
#endif
  for (; i < n; ++i) if (a[i] == v) return i;
  return n;
}

// First index i with x[i] == v, or n.
inline int64_t find_float(const float* x, int64_t n, float v) {
  int64_t i = 0;
#ifdef ENGINE_SAMPLER_SSE2
  const __m128 vv = _mm_set1_ps(v);
  for (; i + 4 <= n; i += 4) {
    const int mask = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + i), vv));
    if (mask) return i + __builtin_ctz(static_cast<unsigned>(mask));
  }
#endif
  for (; i < n; ++i) if (x[i] == v) return i;
  return n;
}

}  // namespace sampler_simd

#ifdef ENGINE_SAMPLER_AVX2
#include "sampler_avx.h"
#endif

namespace sampler_simd {

#ifdef ENGINE_SAMPLER_AVX2
#define ENGINE_DISPATCH(name, ...) return use_avx2() ? name##_avx2(__VA_ARGS__) : name##_base(__VA_ARGS__)
#else
#define ENGINE_DISPATCH(name, ...) return name##_base(__VA_ARGS__)
#endif

// Entry points: the AVX2 twin where the CPU has it (identical results), else the base loop.
inline float scan(const float* x, int64_t n, int64_t* bad) { ENGINE_DISPATCH(scan, x, n, bad); }
inline float block_max(const float* src, float* dst, int64_t n, float div, float* bmax, int64_t* bad) {
  ENGINE_DISPATCH(block_max, src, dst, n, div, bmax, bad);
}
inline void exp_masked(const float* x, float* y, int64_t n, float m, float theta) {
  ENGINE_DISPATCH(exp_masked, x, y, n, m, theta);
}
inline double masked_sum(const float* x, const float* y, int64_t n, float theta) {
  ENGINE_DISPATCH(masked_sum, x, y, n, theta);
}
inline void write_probs(const float* x, const float* y, float* out, int64_t n, float theta, float inv) {
  ENGINE_DISPATCH(write_probs, x, y, out, n, theta, inv);
}
inline void exp_bins(const float* x, float* y, int32_t* bin, int64_t n, float m, float theta, float scale,
                     float top) {
  ENGINE_DISPATCH(exp_bins, x, y, bin, n, m, theta, scale, top);
}
inline double exp_select(const float* src, int64_t n, float div, float m, float lo, float* cx, float* cy,
                         int32_t* cid, int64_t* nc) {
#ifdef ENGINE_SAMPLER_AVX2
  if (use_avx512()) return exp_select_avx512(src, n, div, m, lo, cx, cy, cid, nc);
#endif
  ENGINE_DISPATCH(exp_select, src, n, div, m, lo, cx, cy, cid, nc);
}
inline int64_t find_int(const int32_t* a, int64_t from, int64_t n, int32_t v) {
  ENGINE_DISPATCH(find_int, a, from, n, v);
}

// The dense top-p pass (most of the row near the max): x[i] = src[i] / div, y[i] = exp(x[i] - m),
// bin[i] = (int)min((m - x[i]) * scale, top), and the bin masses h0[bin[i]] += y[i] (even i) / h1 (odd i), each in
// index order. Chunks of 256 keep the scatter in L1; the AVX-512 twin scatters inside its exp loop.
inline void exp_hist(const float* src, int64_t n, float div, float m, float scale, float top, float* x, float* y,
                     int32_t* bin, double* h0, double* h1) {
#ifdef ENGINE_SAMPLER_AVX2
  if (use_avx512()) { exp_hist_avx512(src, n, div, m, scale, top, x, y, bin, h0, h1); return; }
#endif
  const bool divide = div != 1.0f;
  const double rdiv = 1.0 / static_cast<double>(div);
  constexpr int64_t kChunk = 256;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t e = n - i0 < kChunk ? n : i0 + kChunk;
    int64_t i = i0;
#ifdef ENGINE_SAMPLER_SSE2
    const __m128d dv = _mm_set1_pd(rdiv);
    for (; i + 4 <= e; i += 4) {
      const __m128 v = _mm_loadu_ps(src + i);
      _mm_storeu_ps(x + i, divide ? div_float(v, dv) : v);
    }
#endif
    for (; i < e; ++i) x[i] = divide ? div_float(src[i], rdiv) : src[i];
    exp_bins(x + i0, y + i0, bin + i0, e - i0, m, -kInf, scale, top);
    for (i = i0; i < e; ++i) (i & 1 ? h1 : h0)[bin[i]] += y[i];
  }
}

}  // namespace sampler_simd
