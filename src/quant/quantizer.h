// The min-max quantization grid of GPTQ (IST-DASLab/gptq quant.py, AutoGPTQ quantizer.py,
// perchannel=True, mse=False), for one output row and one group of input columns at a time.
//
// All arithmetic is fp32 in the reference's order so that codes match it bit for bit:
//   xmin = min(min(x), 0), xmax = max(max(x), 0)
//   sym:  xmax = max(|xmin|, xmax); xmin = -xmax only when xmin < 0 (a row with no negative
//         value keeps xmin = 0 — the reference's quirk, kept on purpose)
//   xmin == xmax == 0 (all-zero row): xmin = -1, xmax = +1
//   scale = (xmax - xmin) / maxq
//   zero  = sym ? (maxq + 1) / 2 : round(-xmin / scale)
//   q     = clamp(round(x / scale) + zero, 0, maxq), round half to even like torch.round
#pragma once

#include <cmath>
#include <cstdint>

namespace gptq::quant {

struct GridParams {
  float scale = 0.f;
  float zero = 0.f;  // integral value in [0, maxq]
};

inline int max_code(int bits) { return (1 << bits) - 1; }

// x: [n] one row's values of one group.
GridParams find_params(const float* x, int64_t n, int maxq, bool sym);

// nearbyint rounds half to even under the default rounding mode, as torch.round does.
inline float quantize_code(float x, float scale, float zero, int maxq) {
  const float q = std::nearbyint(x / scale) + zero;
  return std::fmin(std::fmax(q, 0.f), float(maxq));
}

inline float dequantize_code(float q, float scale, float zero) { return scale * (q - zero); }

}  // namespace gptq::quant
