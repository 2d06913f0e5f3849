#include "quant/quantizer.h"

#include <algorithm>

namespace gptq::quant {

GridParams find_params(const float* x, int64_t n, int maxq, bool sym) {
  float xmin = 0.f, xmax = 0.f;  // the grid always contains 0
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
  GridParams p;
  p.scale = (xmax - xmin) / float(maxq);
  p.zero = sym ? float(maxq + 1) / 2.f : std::nearbyint(-xmin / p.scale);
  return p;
}

}  // namespace gptq::quant
