// Post-solve scale refit (ours, not in the reference): once the GPTQ column loop has fixed every
// code, each row's group scales are re-chosen to minimize the layer's output error on the
// calibration inputs, tr((W - Q) H (W - Q)^T), given those codes. The format is unchanged: the
// same codes, zeros, g_idx and dequantization W[n,k] = s[g,n] (q[k,n] - z[g,n]); only s moves.
//
// Per row n, with c_k = q[k,n] - z[g_k,n] and the group indicator A (A[k,g] = c_k when g_k = g),
// the dequantized row is A s, so the error is the quadratic
//   e(s) = (w - A s)^T H (w - A s),
// minimized by the normal equations (A^T H A) s = A^T H w: an n_groups x n_groups solve per row
// with the full H (the cross terms between groups are what GPTQ's error feedback created; a
// diagonal-only fit would undo it). Zeros stay fixed (sym stays sym; an asymmetric zero stays the
// solver's integer in [0, maxq]).
//
// Guarantees: each new scale is rounded to fp16 (what the checkpoint stores), must be positive and
// finite, and a row takes its new scales only when e strictly decreases (evaluated in double from
// the same quadratic), so the layer error never increases (up to the fp32 gemms that form A^T H A).
// Deterministic for any pool size: the gemms are the fixed-order ones, each row solved alone.
#pragma once

#include <cstdint>
#include <string>

#include "core/thread_pool.h"
#include "quant/gptq.h"

namespace gptq::quant {

// Whether gptq quantize refits the scales after the solve: not at all, or by the full-H least
// squares above.
enum class Refit { kNone, kHessian };

// "none" / "hessian"; anything else throws gptq::Error naming the accepted values.
Refit parse_refit(const std::string& s);
const char* refit_name(Refit r);

struct RefitStats {
  int64_t rows_changed = 0;  // rows whose scales moved
  double error_before = 0;   // tr((W-Q)H(W-Q)^T) before and after, in double (summed in row order)
  double error_after = 0;
};

// W: [N, K] the layer's original weights, H: [K, K] its Hessian (as accumulated, no damping),
// r: gptq_quantize's result for them; updates r.scales and r.Wq in place.
RefitStats refit_scales(ThreadPool& pool, const float* W, const float* H, int64_t N, int64_t K, QuantResult& r);

}  // namespace gptq::quant
