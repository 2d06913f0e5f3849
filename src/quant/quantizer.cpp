#include "quant/quantizer.h"

#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/cpu_features.h"
#include "gptq/error.h"

namespace gptq::quant {

Grid parse_grid(const std::string& s) {
  if (s == "minmax") return Grid::kMinMax;
  if (s == "mse") return Grid::kMse;
  fail("--grid must be minmax or mse, got \"", s, "\"");
}

const char* grid_name(Grid g) { return g == Grid::kMse ? "mse" : "minmax"; }

namespace {
// The min-max range of quant.py, before it becomes a scale: see quantizer.h.
void minmax_range(const float* x, int64_t n, bool sym, float& xmin, float& xmax) {
  xmin = 0.f, xmax = 0.f;  // the grid always contains 0
  for (int64_t i = 0; i < n; ++i) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0.f) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
}

// The grid of a range [xmin, xmax] (quant.py: scale, then zero).
GridParams grid_of_range(float xmin, float xmax, int maxq, bool sym) {
  GridParams p;
  p.scale = (xmax - xmin) / float(maxq);
  p.zero = sym ? float(maxq + 1) / 2.f : std::nearbyint(-xmin / p.scale);
  return p;
}
}  // namespace

GridParams find_params(const float* x, int64_t n, int maxq, bool sym) {
  float xmin, xmax;
  minmax_range(x, n, sym, xmin, xmax);
  return grid_of_range(xmin, xmax, maxq, sym);
}

double grid_error(const float* x, const float* h, int64_t n, GridParams p, int maxq) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(x[i]) - double(dequantize_code(quantize_code(x[i], p.scale, p.zero, maxq), p.scale, p.zero));
    e += (h ? double(h[i]) : 1.0) * d * d;
  }
  return e;
}

namespace {
constexpr int kGrid = 100;
constexpr int kCandidates = 80;  // p = 1, 0.99, ..., 0.21: quant.py's maxshrink 0.8 of a grid of 100

// grid_error of candidates c[0..kCandidates) into err, 8 at a time: the lanes are candidates,
// so each error is still the sum over i in column order of (h[i] * d) * d in double, d = x[i] -
// dq(q(x[i])) with q and dq in fp32, exactly grid_error's operations (no FMA: the target has
// none, so nothing can be contracted).
__attribute__((target("avx2"))) void grid_errors_avx2(const float* x, const float* h, int64_t n, const GridParams* c,
                                                      int maxq, double* err) {
  static_assert(kCandidates % 8 == 0);
  const __m256 v0 = _mm256_setzero_ps(), vmax = _mm256_set1_ps(float(maxq));
  for (int c0 = 0; c0 < kCandidates; c0 += 8) {
    alignas(32) float sc[8], ze[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = c[c0 + j].scale;
      ze[j] = c[c0 + j].zero;
    }
    const __m256 vs = _mm256_load_ps(sc), vz = _mm256_load_ps(ze);
    __m256d e0 = _mm256_setzero_pd(), e1 = _mm256_setzero_pd();
    for (int64_t i = 0; i < n; ++i) {
      __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_set1_ps(x[i]), vs), _MM_FROUND_CUR_DIRECTION);
      q = _mm256_add_ps(q, vz);
      q = _mm256_min_ps(_mm256_max_ps(q, v0), vmax);  // max(NaN, 0) is 0, as fmax
      const __m256 dq = _mm256_mul_ps(vs, _mm256_sub_ps(q, vz));
      const __m256d xd = _mm256_set1_pd(double(x[i])), hd = _mm256_set1_pd(h ? double(h[i]) : 1.0);
      const __m256d d0 = _mm256_sub_pd(xd, _mm256_cvtps_pd(_mm256_castps256_ps128(dq)));
      const __m256d d1 = _mm256_sub_pd(xd, _mm256_cvtps_pd(_mm256_extractf128_ps(dq, 1)));
      e0 = _mm256_add_pd(e0, _mm256_mul_pd(_mm256_mul_pd(hd, d0), d0));
      e1 = _mm256_add_pd(e1, _mm256_mul_pd(_mm256_mul_pd(hd, d1), d1));
    }
    _mm256_storeu_pd(err + c0, e0);
    _mm256_storeu_pd(err + c0 + 4, e1);
  }
}
}  // namespace

GridParams find_params_mse(const float* x, const float* h, int64_t n, int maxq, bool sym) {
  float xmin, xmax;
  minmax_range(x, n, sym, xmin, xmax);
  GridParams c[kCandidates];
  c[0] = grid_of_range(xmin, xmax, maxq, sym);  // p = 1: find_params
  for (int i = 1; i < kCandidates; ++i) {
    const float p = float(1.0 - double(i) / kGrid);
    c[i] = grid_of_range(p * xmin, p * xmax, maxq, sym);
  }
  double err[kCandidates];
  if (cpu::active_simd() >= cpu::SimdLevel::kAvx2) {
    grid_errors_avx2(x, h, n, c, maxq, err);
  } else {
    for (int i = 0; i < kCandidates; ++i) err[i] = grid_error(x, h, n, c[i], maxq);
  }
  int best = 0;  // only a strictly smaller error replaces an earlier candidate
  for (int i = 1; i < kCandidates; ++i)
    if (err[i] < err[best]) best = i;
  return c[best];
}

GridParams find_grid(Grid grid, const float* x, const float* h, int64_t n, int maxq, bool sym) {
  return grid == Grid::kMse ? find_params_mse(x, h, n, maxq, sym) : find_params(x, n, maxq, sym);
}

}  // namespace gptq::quant
