// Shared pieces of the sampler's rows (csrc/sampler.cpp, its only includer): the job description, per-thread scratch
// buffers, logits loading (float32 / float16 / bfloat16, any stride), the per-row uniform and small helpers.
#pragma once

#include "sampler_simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

namespace sampler_row {

using sampler_simd::kInf;
constexpr int64_t kBlock = sampler_simd::kBlockMax;  // block of the per-block maxima (top-k pre-filter)
constexpr int64_t kWalk = 256;      // block of the kept-mass sums (sampling walk)
constexpr int kBins = 4096;         // top-p histogram: bin = floor((max - x) * kBinScale)
constexpr float kBinScale = 64.0f;  // 1/64 nat per bin, 64 nats in all (the last bin takes the rest)
constexpr float kSpan = 10.0f;      // top-p first tries the candidates within 10 nats of the max

enum DType { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum Status {
  kOk = 0, kBadTemperature, kBadTopK, kBadTopP, kBadMinP, kBadPenalty, kBadPrevToken, kNonFinite, kAllNegInf,
  kOverflow
};

using sampler_simd::bits_to_float;
using sampler_simd::exp_nonpos;
using sampler_simd::float_to_bits;

inline float half_to_float(uint16_t h) {
  const uint32_t em = h & 0x7fffu;
  uint32_t r = float_to_bits(bits_to_float(em << 13) * 0x1p112f);  // rebias; handles subnormals
  if (em >= 0x7c00u) r |= 0x7f800000u;                             // inf / nan
  return bits_to_float(r | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) for row b: depends on (seed, b) only.
inline double row_uniform(uint64_t seed, int64_t b) {
  const uint64_t z = splitmix64(splitmix64(seed) ^ (static_cast<uint64_t>(b) * 0xD1B54A32D192ED03ull));
  return static_cast<double>(z >> 11) * 0x1p-53;
}

template <class T>
struct RowParam {  // a scalar, or one value per row (contiguous, length B)
  const T* ptr;
  T value;
  T at(int64_t b) const { return ptr ? ptr[b] : value; }
};

struct Job {
  const void* logits; int dtype; int64_t B, V, sb, sv;     // logits (B, V), strides in elements
  RowParam<double> temperature, top_p, min_p, penalty;
  RowParam<int64_t> top_k;
  const int64_t* prev; const int64_t* prev_offsets;        // (B, T) with strides, or CSR by offsets (B + 1)
  int64_t prev_T, prev_sb, prev_sv;
  float* probs; int64_t* ids; uint64_t seed;               // one of probs (B, V) / ids (B,) is set
};

struct Cand { float v; int32_t id; float y; };
inline bool before(const Cand& a, const Cand& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

struct Scratch {
  std::vector<float> x, y, bmax, tmp, cx, cy;  // cx, cy, cid: the top-p candidates (x, y, token id)
  std::vector<int32_t> bin, cid;
  std::vector<double> wsum, hist;
  std::vector<Cand> cand;
  void fit(int64_t V) {
    if (static_cast<int64_t>(x.size()) >= V) return;
    x.resize(V); y.resize(V); tmp.resize(V); bin.resize(V); cx.resize(V); cy.resize(V); cid.resize(V);
    bmax.resize((V + kBlock - 1) / kBlock);
    wsum.resize((V + kWalk - 1) / kWalk);
  }
};

class ScratchPool {  // reuses buffers across calls and threads (no page faults per call)
 public:
  std::unique_ptr<Scratch> get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::make_unique<Scratch>();
    auto s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void put(std::unique_ptr<Scratch> s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < 64) free_.push_back(std::move(s));
  }
 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Scratch>> free_;
};

inline ScratchPool& pool() {  // never destroyed: safe at exit
  static ScratchPool* p = new ScratchPool();
  return *p;
}

inline float load_one(const Job& j, int64_t b, int64_t i) {
  const int64_t off = b * j.sb + i * j.sv;
  if (j.dtype == kF32) return static_cast<const float*>(j.logits)[off];
  const uint16_t h = static_cast<const uint16_t*>(j.logits)[off];
  return j.dtype == kF16 ? half_to_float(h) : bits_to_float(static_cast<uint32_t>(h) << 16);
}

inline void load_row(const Job& j, int64_t b, float* x) {
  const int64_t V = j.V, sv = j.sv;
  if (j.dtype == kF32) {
    const float* p = static_cast<const float*>(j.logits) + b * j.sb;
    if (sv == 1) std::memcpy(x, p, V * sizeof(float));
    else for (int64_t i = 0; i < V; ++i) x[i] = p[i * sv];
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(j.logits) + b * j.sb;
  if (j.dtype == kF16) {
    if (sv == 1) for (int64_t i = 0; i < V; ++i) x[i] = half_to_float(p[i]);
    else for (int64_t i = 0; i < V; ++i) x[i] = half_to_float(p[i * sv]);
  } else {
    if (sv == 1) for (int64_t i = 0; i < V; ++i) x[i] = bits_to_float(static_cast<uint32_t>(p[i]) << 16);
    else for (int64_t i = 0; i < V; ++i) x[i] = bits_to_float(static_cast<uint32_t>(p[i * sv]) << 16);
  }
}

// Smallest float f with (double)f >= m + log(min_p): the min-p cut as a threshold on the logits.
inline float min_p_threshold(float m, double min_p) {
  const double t = static_cast<double>(m) + std::log(min_p);
  float f = static_cast<float>(t);
  if (static_cast<double>(f) < t) f = std::nextafter(f, kInf);
  return f;
}

// Writes one-hot probs or the id for a chosen token.
inline void emit_single(const Job& j, int64_t b, int64_t id) {
  if (j.ids) { j.ids[b] = id; return; }
  float* out = j.probs + b * j.V;
  std::fill(out, out + j.V, 0.0f);
  out[id] = 1.0f;
}

}  // namespace sampler_row
