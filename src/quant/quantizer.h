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
//
// And the shrink search (Grid::kMse) of the same quant.py (find_params with mse=True) that the
// reference leaves off: see find_params_mse.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

namespace gptq::quant {

struct GridParams {
  float scale = 0.f;
  float zero = 0.f;  // integral value in [0, maxq]
};

inline int max_code(int bits) { return (1 << bits) - 1; }

// How a group's scale and zero are chosen: the min-max range (the GPTQ authors' default) or the
// best shrink of it (find_params_mse).
enum class Grid { kMinMax, kMse };

// "minmax" / "mse"; anything else throws gptq::Error naming the accepted values.
Grid parse_grid(const std::string& s);
const char* grid_name(Grid g);

// x: [n] one row's values of one group.
GridParams find_params(const float* x, int64_t n, int maxq, bool sym);

// Shrink search of quant.py find_params(mse=True) (maxshrink 0.8, grid 100): the min-max range
// [xmin, xmax] scaled by p = 1, 0.99, ..., 0.21 (sym: the zero stays (maxq+1)/2; asym: zero =
// round(-p*xmin / scale)), keeping the (scale, zero) of least grid_error. The reference scores
// sum |x - dq(x)|^2.4; we score the Hessian-weighted squared error sum h[i] (x[i] - dq(x[i]))^2,
// h = diag(H) of the group's columns: the layer's output error ||dW X||^2 restricted to one
// group when its inputs are uncorrelated, which is what the solver then minimizes.
// h: [n] weights >= 0, or nullptr for all ones (RTN has no Hessian). p = 1 is find_params itself
// and only a strictly smaller error replaces it, so the result never scores worse than min-max
// (an all-zero-weight group keeps min-max). With AVX2 (cpu::active_simd) 8 candidates are scored
// at once, each one's error summed in the same order with the same operations as grid_error:
// the same result, bit for bit, as the scalar loop (and the CUDA solver's).
GridParams find_params_mse(const float* x, const float* h, int64_t n, int maxq, bool sym);

// find_params or find_params_mse (h only used by the latter).
GridParams find_grid(Grid grid, const float* x, const float* h, int64_t n, int maxq, bool sym);

// sum h[i] (x[i] - dq(q(x[i])))^2 in double, h == nullptr: all ones. x, h: [n].
double grid_error(const float* x, const float* h, int64_t n, GridParams p, int maxq);

// nearbyint rounds half to even under the default rounding mode, as torch.round does. The clamp
// is fmin(fmax(q, 0), maxq) (a NaN becomes 0), written as compares so that it inlines.
inline float quantize_code(float x, float scale, float zero, int maxq) {
  float q = std::nearbyint(x / scale) + zero;
  q = q > 0.f ? q : 0.f;
  return q < float(maxq) ? q : float(maxq);
}

inline float dequantize_code(float q, float scale, float zero) { return scale * (q - zero); }

}  // namespace gptq::quant
