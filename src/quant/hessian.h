// Accumulates the GPTQ Hessian H = 2/n * sum over calibration tokens of x x^T, exactly as
// GPTQ.add_batch does: before each batch H *= n/(n + samples), n += samples, H += 2/n * X^T X,
// where `samples` counts sequences (inp.shape[0] in the reference), not tokens. The scale of H
// does not change the solver (damping is relative), but keeping it makes H comparable.
//
// Storage is fp32 like the reference; only the upper triangle is maintained and it is mirrored
// once in take(). Each batch is one parallel sweep over tiles of the upper triangle (cblas_sgemm
// off the diagonal, cblas_ssyrk on it, each single-threaded), so it scales with
// gptq::parallel_for regardless of OpenBLAS's own thread count; measured on par with one
// multithreaded cblas_ssyrk call (bench_quant.cpp). When K is too small to give every thread
// tiles (e.g. K = 384 on 16 threads), the batch's tokens are also split, each chunk into its own
// partial Hessian (at most 256 MiB of scratch), summed at the end of the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"

namespace gptq::quant {

class HessianAccumulator {
 public:
  HessianAccumulator(ThreadPool& pool, int64_t K);

  // x: [samples*T, K] fp32 row-major (tokens of `samples` sequences of T tokens each).
  void add_batch(const float* x, int64_t samples, int64_t T);

  int64_t K() const { return K_; }
  int64_t nsamples() const { return nsamples_; }

  // Returns H: [K, K] symmetric and resets the accumulator.
  std::vector<float> take();

 private:
  ThreadPool& pool_;
  int64_t K_;
  int64_t nsamples_ = 0;
  std::vector<float> H_;        // [K, K], upper tiles valid
  std::vector<float> scratch_;  // [chunks-1, K, K] partial Hessians when small K splits tokens
};

}  // namespace gptq::quant
