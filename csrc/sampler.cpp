// engine._sampler: next-token probabilities and draws with Hugging Face's logits-processor semantics.
//
// Per row, in HF's order: repetition penalty (tokens of prev_tokens; positive logits divided, negative multiplied),
// temperature (x / T in float32; T == 0 is greedy), top-k (keep every logit >= the k-th largest), top-p (keep the
// smallest prefix of the (logit desc, id asc) order whose mass reaches top_p), min-p (keep p >= min_p * p_max).
// No full sort of the vocabulary: top-k uses per-block maxima as a threshold pre-filter; top-p computes exp once per
// token in a pass that also sums the mass and gathers the tokens within kSpan nats of the max, then bins those on a
// log scale (the whole row only if they hold too little mass); only the few candidates near a cut are sorted. When
// a sample says most of the row lies within kSpan (flat logits), one pass computes x, y, bins and bin masses instead.
// Softmax subtracts the max and sums in double. Every sum has a fixed order (no -ffast-math, no FP contraction), and
// row b's uniform comes from splitmix64(seed, b), so a seed gives the same ids on every run, thread count and
// platform. The GIL is released; rows run on std::threads.
// Python (engine/sampling.py) checks types and shapes, passes raw pointers + strides, and formats errors.
#include <pybind11/pybind11.h>

#include "sampler_row.h"
#include "sampler_simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

using namespace sampler_row;

// Top-p, min-p and the output for a small candidate list (the top-k survivors).
void finish_candidates(const Job& j, int64_t b, Scratch& s, float m, double top_p, double min_p) {
  auto& c = s.cand;
  for (auto& e : c) e.y = exp_nonpos(e.v - m);
  std::sort(c.begin(), c.end(), [](const Cand& a, const Cand& d) { return before(a, d); });
  size_t keep = c.size();
  if (top_p < 1.0) {
    double z = 0.0;
    for (const auto& e : c) z += e.y;
    const double target = top_p * z;
    double acc = 0.0;
    for (size_t d = 0; d < c.size(); ++d) {
      if (!(acc < target)) { keep = d; break; }
      acc += c[d].y;
    }
  }
  if (min_p > 0.0) {
    const float th = min_p_threshold(m, min_p);
    size_t d = 0;
    while (d < keep && c[d].v >= th) ++d;
    keep = d;
  }
  double z = 0.0;
  for (size_t d = 0; d < keep; ++d) z += c[d].y;
  if (j.ids) {
    const double target = row_uniform(j.seed, b) * z;
    double acc = 0.0;
    int64_t pick = -1;
    for (size_t d = 0; d < keep; ++d) {
      if (c[d].y <= 0.0f) continue;
      acc += c[d].y;
      pick = c[d].id;
      if (acc > target) break;
    }
    j.ids[b] = pick;
    return;
  }
  float* out = j.probs + b * j.V;
  std::fill(out, out + j.V, 0.0f);
  const double inv = 1.0 / z;
  for (size_t d = 0; d < keep; ++d) out[c[d].id] = static_cast<float>(c[d].y * inv);
}

// Top-p over n entries in token order (x, y, bin[e] = the log-spaced bin of x[e], clamped to nb): keeps the smallest
// prefix of the (x desc, token asc) order whose mass reaches top_p * z (z < 0: the sum of y), summing whole bins and
// sorting only the bin where the cut falls. Bin nb takes the rest; when it may be incomplete (!last_complete) and the
// cut falls in it, returns false. Else raises *theta to the cut value and zeroes y of the ties past the cut.
// With filled, s.hist already holds those two half-histograms (even / odd entries, as below).
bool top_p_cut(const float* x, float* y, const int32_t* bin, int64_t n, int nb, bool last_complete, double top_p,
               double z, float* theta, Scratch& s, bool filled = false) {
  double* h0 = s.hist.data();
  double* h1 = h0 + nb + 1;
  if (!filled) {
    s.hist.assign(2 * (nb + 1), 0.0);
    h0 = s.hist.data();
    h1 = h0 + nb + 1;
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) { h0[bin[i]] += y[i]; h1[bin[i + 1]] += y[i + 1]; }
    if (i < n) h0[bin[i]] += y[i];
  }
  double sum = 0.0;
  for (int q = 0; q <= nb; ++q) { h0[q] += h1[q]; sum += h0[q]; }
  const double target = top_p * (z < 0.0 ? sum : z);
  double acc = 0.0;
  int kb = 0;
  for (; kb < nb; ++kb) {
    if (acc + h0[kb] >= target) break;
    acc += h0[kb];
  }
  if (kb == nb && !last_complete) return false;
  auto& c = s.cand;
  c.clear();
  for (int64_t q = sampler_simd::find_int(bin, 0, n, kb); q < n; q = sampler_simd::find_int(bin, q + 1, n, kb))
    if (x[q] >= *theta) c.push_back({x[q], static_cast<int32_t>(q), y[q]});
  std::sort(c.begin(), c.end(), [](const Cand& a, const Cand& d) { return before(a, d); });  // entries are in token order, so entry order breaks ties as ids do
  size_t d = 0;
  while (d < c.size() && acc < target) acc += c[d++].y;
  if (d > 0) {
    const float cut = c[d - 1].v;
    if (cut > *theta) *theta = cut;
    for (size_t e = d; e < c.size() && c[e].v == cut; ++e) y[c[e].id] = 0.0f;  // ties past the cut
  }
  return true;
}

// Draws from (or writes the probs of) the entries with x >= theta, weights y; entry e is token ids[e] (or e).
void emit_kept(const Job& j, int64_t b, Scratch& s, const float* x, const float* y, const int32_t* ids, int64_t n,
               float theta) {
  const int64_t nwalk = (n + kWalk - 1) / kWalk;  // kept mass per walk block, in a fixed order
  double z = 0.0;
  for (int64_t w = 0; w < nwalk; ++w) {
    const int64_t i0 = w * kWalk;
    const double part = sampler_simd::masked_sum(x + i0, y + i0, std::min(kWalk, n - i0), theta);
    s.wsum[w] = part;
    z += part;
  }
  if (j.ids) {
    const double target = row_uniform(j.seed, b) * z;
    double acc = 0.0;
    int64_t w = 0, last = -1;
    for (; w < nwalk; ++w) {
      if (s.wsum[w] > 0.0) last = w;
      if (acc + s.wsum[w] > target) break;
      acc += s.wsum[w];
    }
    if (w == nwalk) { w = last; acc = target; }  // rounding past the end: the last block with mass
    int64_t pick = -1;
    for (int64_t i = w * kWalk, e = std::min(n, i + kWalk); i < e; ++i) {
      if (!(x[i] >= theta) || y[i] <= 0.0f) continue;
      acc += y[i];
      pick = i;
      if (acc > target) break;
    }
    j.ids[b] = ids && pick >= 0 ? ids[pick] : pick;
    return;
  }
  float* out = j.probs + b * j.V;
  const float inv = static_cast<float>(1.0 / z);
  if (!ids) { sampler_simd::write_probs(x, y, out, n, theta, inv); return; }
  std::fill(out, out + j.V, 0.0f);
  for (int64_t e = 0; e < n; ++e)
    if (x[e] >= theta) out[ids[e]] = y[e] * inv;
}

// Top-p without top-k (m: the max after the temperature): one pass computes y = exp(x - m), their sum, and the
// candidates x >= m - kSpan; the cut is searched among them. Returns false (nothing written) when their whole bins
// hold less than the top-p mass: the caller then runs the full-row path.
bool top_p_fast(const Job& j, int64_t b, Scratch& s, const float* src, float tf, float m, double top_p,
                double min_p) {
  const float lo = m - kSpan;
  int64_t nc = 0;
  float* cx = s.cx.data();
  float* cy = s.cy.data();
  const double z = sampler_simd::exp_select(src, j.V, tf, m, lo, cx, cy, s.cid.data(), &nc);
  const float top = std::min((m - lo) * kBinScale, static_cast<float>(kBins - 1));
  sampler_simd::bins_base(cx, s.bin.data(), nc, m, kBinScale, top);
  float theta = -kInf;
  if (!top_p_cut(cx, cy, s.bin.data(), nc, static_cast<int>(top), false, top_p, z, &theta, s)) return false;
  if (min_p > 0.0) theta = std::max(theta, min_p_threshold(m, min_p));
  emit_kept(j, b, s, cx, cy, s.cid.data(), nc, theta);
  return true;
}

// Whether most of the row lies within kSpan nats of the max (a strided sample of 256 entries against a rough bound,
// raw >= lo * T): then the candidate list would hold most of the row and the full-row path is cheaper.
bool dense_row(const float* src, int64_t V, float raw_lo) {
  constexpr int64_t kSample = 256;
  if (V < 4 * kSample) return false;
  int64_t hits = 0;
  for (int64_t k = 0; k < kSample; ++k) hits += src[k * V / kSample] >= raw_lo;
  return hits * 4 > kSample * 3;
}

int process_row(const Job& j, int64_t b, Scratch& s, double* bad_value) {
  const int64_t V = j.V;
  const double temperature = j.temperature.at(b), top_p = j.top_p.at(b), min_p = j.min_p.at(b);
  const double penalty = j.penalty.at(b);
  const int64_t top_k = j.top_k.at(b);
  if (!(temperature >= 0.0)) { *bad_value = temperature; return kBadTemperature; }
  if (top_k < 0) { *bad_value = static_cast<double>(top_k); return kBadTopK; }
  if (!(top_p > 0.0 && top_p <= 1.0)) { *bad_value = top_p; return kBadTopP; }
  if (!(min_p >= 0.0 && min_p <= 1.0)) { *bad_value = min_p; return kBadMinP; }
  if (!(penalty > 0.0)) { *bad_value = penalty; return kBadPenalty; }

  int64_t n_prev = 0, prev_step = 1;
  const int64_t* prev = nullptr;
  if (j.prev) {
    if (j.prev_offsets) { prev = j.prev + j.prev_offsets[b]; n_prev = j.prev_offsets[b + 1] - j.prev_offsets[b]; }
    else { prev = j.prev + b * j.prev_sb; n_prev = j.prev_T; prev_step = j.prev_sv; }
    for (int64_t t = 0; t < n_prev; ++t) {
      const int64_t id = prev[t * prev_step];
      if (id < 0 || id >= V) { *bad_value = static_cast<double>(id); return kBadPrevToken; }
    }
  }

  // The NaN / +inf / all -inf checks ride on the first pass over the transformed row; only a failing row is
  // scanned again, raw, to tell bad input from an overflow of the penalty or the temperature.
  auto fail = [&](double value) {
    int64_t raw_bad = 0;
    load_row(j, b, s.tmp.data());
    const float raw_max = sampler_simd::scan(s.tmp.data(), V, &raw_bad);
    if (raw_bad) return static_cast<int>(kNonFinite);
    if (raw_max == -kInf) return static_cast<int>(kAllNegInf);
    *bad_value = value;
    return static_cast<int>(kOverflow);
  };
  // The row: read in place when it is contiguous float32 and the penalty leaves it alone, else a float32 copy.
  const bool edit = penalty != 1.0 && n_prev;
  const float* src = static_cast<const float*>(j.logits) + b * j.sb;
  if (j.dtype != kF32 || j.sv != 1 || edit) {
    float* x = s.x.data();
    load_row(j, b, x);
    if (edit) {  // idempotent per id, so a repeated token counts once
      const float pf = static_cast<float>(penalty);
      for (int64_t t = 0; t < n_prev; ++t) {
        const int64_t id = prev[t * prev_step];
        const float v = load_one(j, b, id);
        x[id] = v < 0.0f ? v * pf : v / pf;
      }
    }
    src = x;
  }
  int64_t bad = 0;
  if (temperature == 0.0) {  // greedy: first maximum
    const float best = sampler_simd::scan(src, V, &bad);
    if (bad || best == -kInf) return fail(penalty);
    emit_single(j, b, sampler_simd::find_float(src, V, best));
    return kOk;
  }
  const float tf = static_cast<float>(temperature);
  if (tf == 0.0f) return fail(temperature);  // T below float32's range
  const int64_t k = (top_k > 0 && top_k < V) ? top_k : 0;
  if (top_p < 1.0 && k == 0) {  // x / T is monotone in x: its max is the max of the row over T
    const float raw = sampler_simd::scan(src, V, &bad);
    if (bad || raw == -kInf) return fail(temperature);
    const float m = sampler_simd::div_float(raw, 1.0 / static_cast<double>(tf));
    if (!(m > -kInf && m < kInf)) return fail(temperature);
    if (dense_row(src, V, (m - kSpan) * tf)) {  // one pass: x, y, bins and their masses over the whole row
      float* x = s.x.data();
      float* y = s.y.data();
      constexpr int kDense = 20 * static_cast<int>(kBinScale);  // 20 nats of bins, the last takes the rest
      s.hist.assign(2 * kDense, 0.0);
      sampler_simd::exp_hist(src, V, tf, m, kBinScale, static_cast<float>(kDense - 1), x, y, s.bin.data(),
                             s.hist.data(), s.hist.data() + kDense);
      float theta = -kInf;
      if (top_p_cut(x, y, s.bin.data(), V, kDense - 1, false, top_p, -1.0, &theta, s, true)) {
        if (min_p > 0.0) theta = std::max(theta, min_p_threshold(m, min_p));
        emit_kept(j, b, s, x, y, nullptr, V, theta);
        return kOk;
      }  // the cut lies more than 20 nats down: the full-row path below
    } else if (top_p_fast(j, b, s, src, tf, m, top_p, min_p)) {
      return kOk;
    }
  }

  // x = row / T; max, per-block maxima, and the count of NaN / +inf.
  float* x = s.x.data();
  const int64_t nblocks = (V + kBlock - 1) / kBlock;
  const float m = sampler_simd::block_max(src, x, V, tf, s.bmax.data(), &bad);
  if (bad || m == -kInf) return fail(temperature);

  float theta = -kInf;  // kept: x >= theta (less the top-p ties dropped below)
  if (k > 0 && k * 4 <= nblocks) {
    // Pre-filter: the k-th largest block maximum is <= the k-th largest logit.
    float* t = s.tmp.data();
    std::copy(s.bmax.begin(), s.bmax.begin() + nblocks, t);
    std::nth_element(t, t + (k - 1), t + nblocks, [](float a, float c) { return a > c; });
    const float tau = t[k - 1];
    s.cand.clear();
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      if (s.bmax[blk] < tau) continue;
      for (int64_t i = blk * kBlock, e = std::min(V, i + kBlock); i < e; ++i)
        if (x[i] >= tau) s.cand.push_back({x[i], static_cast<int32_t>(i), 0.0f});
    }
    auto& c = s.cand;
    std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), [](const Cand& a, const Cand& d) { return a.v > d.v; });
    const float vk = c[k - 1].v;
    c.erase(std::remove_if(c.begin(), c.end(), [vk](const Cand& e) { return e.v < vk; }), c.end());
    finish_candidates(j, b, s, m, top_p, min_p);
    return kOk;
  }
  if (k > 0) {  // large k: exact k-th largest by selection on a copy
    float* t = s.tmp.data();
    std::copy(x, x + V, t);
    std::nth_element(t, t + (k - 1), t + V, [](float a, float c) { return a > c; });
    theta = t[k - 1];
  }

  // Unnormalized probabilities y = exp(x - max) of the tokens that survive top-k (and log-spaced bins for top-p).
  float* y = s.y.data();
  if (top_p < 1.0) {
    sampler_simd::exp_bins(x, y, s.bin.data(), V, m, theta, kBinScale, static_cast<float>(kBins - 1));
    top_p_cut(x, y, s.bin.data(), V, kBins - 1, true, top_p, -1.0, &theta, s);
  } else {
    sampler_simd::exp_masked(x, y, V, m, theta);
  }
  if (min_p > 0.0) theta = std::max(theta, min_p_threshold(m, min_p));
  emit_kept(j, b, s, x, y, nullptr, V, theta);
  return kOk;
}

int auto_threads(int64_t B, int64_t V) {
  static const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());  // a syscall: ask once
  const int64_t by_work = std::max<int64_t>(1, B * V / (1 << 16));
  return static_cast<int>(std::min({hw, B, by_work}));
}

py::tuple run(uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t sb, int64_t sv,
              double temperature, uintptr_t temperature_ptr, int64_t top_k, uintptr_t top_k_ptr,
              double top_p, uintptr_t top_p_ptr, double min_p, uintptr_t min_p_ptr,
              double penalty, uintptr_t penalty_ptr,
              uintptr_t prev, uintptr_t prev_offsets, int64_t prev_T, int64_t prev_sb, int64_t prev_sv,
              uintptr_t probs_out, uintptr_t ids_out, uint64_t seed, int num_threads) {
  if (dtype < kF32 || dtype > kBF16) throw std::invalid_argument("dtype code must be 0 (f32), 1 (f16) or 2 (bf16)");
  if (B < 0 || V <= 0 || V > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("need B >= 0 and 0 < V < 2**31");
  if ((probs_out == 0) == (ids_out == 0)) throw std::invalid_argument("exactly one of probs_out / ids_out is needed");
  Job j{reinterpret_cast<const void*>(logits), dtype, B, V, sb, sv,
        {reinterpret_cast<const double*>(temperature_ptr), temperature},
        {reinterpret_cast<const double*>(top_p_ptr), top_p},
        {reinterpret_cast<const double*>(min_p_ptr), min_p},
        {reinterpret_cast<const double*>(penalty_ptr), penalty},
        {reinterpret_cast<const int64_t*>(top_k_ptr), top_k},
        reinterpret_cast<const int64_t*>(prev), reinterpret_cast<const int64_t*>(prev_offsets),
        prev_T, prev_sb, prev_sv,
        reinterpret_cast<float*>(probs_out), reinterpret_cast<int64_t*>(ids_out), seed};
  std::vector<int> status(B, kOk);
  std::vector<double> bad(B, 0.0);
  {
    py::gil_scoped_release nogil;
    const int n = std::max(1, std::min<int>(num_threads > 0 ? num_threads : auto_threads(B, V),
                                            static_cast<int>(std::max<int64_t>(B, 1))));
    std::vector<std::exception_ptr> errors(n);
    auto work = [&](int t) {
      try {
        auto s = pool().get();
        s->fit(V);
        for (int64_t b = B * t / n, e = B * (t + 1) / n; b < e; ++b) status[b] = process_row(j, b, *s, &bad[b]);
        pool().put(std::move(s));
      } catch (...) {
        errors[t] = std::current_exception();
      }
    };
    if (n == 1) {
      work(0);
    } else {
      std::vector<std::thread> threads;
      for (int t = 1; t < n; ++t) threads.emplace_back(work, t);
      work(0);
      for (auto& th : threads) th.join();
    }
    for (auto& e : errors) if (e) std::rethrow_exception(e);
  }
  for (int64_t b = 0; b < B; ++b)
    if (status[b] != kOk) return py::make_tuple(status[b], b, bad[b]);
  return py::make_tuple(0, -1, 0.0);
}

}  // namespace

PYBIND11_MODULE(_sampler, m) {
  m.doc() = "engine's C++ sampler: HF-order logits processing, probabilities and seeded draws (see engine.sampling)";
  m.def("run", &run, py::arg("logits"), py::arg("dtype"), py::arg("B"), py::arg("V"), py::arg("stride_b"),
        py::arg("stride_v"), py::arg("temperature"), py::arg("temperature_ptr"), py::arg("top_k"),
        py::arg("top_k_ptr"), py::arg("top_p"), py::arg("top_p_ptr"), py::arg("min_p"), py::arg("min_p_ptr"),
        py::arg("repetition_penalty"), py::arg("repetition_penalty_ptr"), py::arg("prev"),
        py::arg("prev_offsets"), py::arg("prev_T"), py::arg("prev_stride_b"), py::arg("prev_stride_t"),
        py::arg("probs_out"), py::arg("ids_out"), py::arg("seed"), py::arg("num_threads"),
        "Process B rows of logits at raw pointers; writes probs_out (B, V) float32 or ids_out (B,) int64.\n"
        "Returns (status, row, value): status 0 when every row is fine, else the first bad row's code.");
  m.attr("STATUS") = py::make_tuple("ok", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                    "prev_tokens", "nonfinite", "all_neg_inf", "overflow");
}
