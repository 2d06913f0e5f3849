#include "quant/quantizer.h"

#include <algorithm>

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

GridParams find_params_mse(const float* x, const float* h, int64_t n, int maxq, bool sym) {
  constexpr int kGrid = 100;
  constexpr double kMaxShrink = 0.8;
  float xmin, xmax;
  minmax_range(x, n, sym, xmin, xmax);
  GridParams best = grid_of_range(xmin, xmax, maxq, sym);  // p = 1: find_params
  double best_err = grid_error(x, h, n, best, maxq);
  for (int i = 1; i < int(kMaxShrink * kGrid); ++i) {
    const float p = float(1.0 - double(i) / kGrid);
    const GridParams c = grid_of_range(p * xmin, p * xmax, maxq, sym);
    const double err = grid_error(x, h, n, c, maxq);
    if (err < best_err) {
      best_err = err;
      best = c;
    }
  }
  return best;
}

GridParams find_grid(Grid grid, const float* x, const float* h, int64_t n, int maxq, bool sym) {
  return grid == Grid::kMse ? find_params_mse(x, h, n, maxq, sym) : find_params(x, n, maxq, sym);
}

}  // namespace gptq::quant
