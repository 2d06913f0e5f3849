// Accumulates the GPTQ Hessian H = 2/n * sum over calibration tokens of x x^T, exactly as
// GPTQ.add_batch does: before each batch H *= n/(n + samples), n += samples, H += 2/n * X^T X,
// where `samples` counts sequences (inp.shape[0] in the reference), not tokens. The scale of H
// does not change the solver (damping is relative), but keeping it makes H comparable.
//
// Reproducible: H is a fixed function of the batches, bit-identical for any pool size and on any
// x86-64 CPU. Each batch is transposed (Xt: [K, tokens]) and every upper-triangle entry is one
// fixed-order fp32 dot over all the batch's tokens (cpu::syrk_upper_fixed: 8 fma lanes, a fixed
// reduction tree); tiles and token ranges never depend on the thread count.
//
// Precision (issue 13): the running, rescaled sum across batches, S[i,j] = beta S[i,j] + alpha dot
// with beta = n/(n+samples), alpha = 2/(n+samples), is kept in fp64 (the reference keeps it in
// fp32 and rounds at every one of its nsamples updates); H is rounded to fp32 once, when it is read.
// One batch's products stay fp32 sums, as the reference's and the CUDA backend's are (cuda_hessian.h
// does the same, so CPU and GPU Hessians differ only in the order of those sums). Memory: K^2 x 12
// bytes; only the upper triangle is maintained and it is mirrored when H is read.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"

namespace gptq::cpu {

class HessianAccumulator {
 public:
  HessianAccumulator(ThreadPool& pool, int64_t K);

  // x: [samples*T, K] fp32 row-major (tokens of `samples` sequences of T tokens each).
  void add_batch(const float* x, int64_t samples, int64_t T);

  int64_t K() const { return K_; }
  int64_t nsamples() const { return nsamples_; }

  // H: [K, K] symmetric, of the batches so far (more may follow); valid until the next call.
  const std::vector<float>& symmetric();
  // Returns H: [K, K] symmetric and resets the accumulator.
  std::vector<float> take();

 private:
  ThreadPool& pool_;
  int64_t K_;
  int64_t nsamples_ = 0;
  std::vector<double> sum_;     // [K, K] the running S, upper triangle valid
  std::vector<float> H_;        // [K, K] a batch's products while adding; H once read
  std::vector<float> xt_;       // [K, tokens] the current batch transposed
  bool mirrored_ = false;       // H_ holds H, both triangles (no batch since)
};

}  // namespace gptq::cpu
