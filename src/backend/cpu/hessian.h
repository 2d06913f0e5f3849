// Accumulates the GPTQ Hessian H = 2/n * sum over calibration tokens of x x^T, exactly as
// GPTQ.add_batch does: before each batch H *= n/(n + samples), n += samples, H += 2/n * X^T X,
// where `samples` counts sequences (inp.shape[0] in the reference), not tokens. The scale of H
// does not change the solver (damping is relative), but keeping it makes H comparable.
//
// Reproducible: H is a fixed function of the batches, bit-identical for any pool size and on any
// x86-64 CPU. Each batch is transposed (Xt: [K, tokens]) and every upper-triangle entry is one
// fixed-order dot over all the batch's tokens (cpu::syrk_upper_fixed: 8 fma lanes, a fixed
// reduction tree), then H[i,j] = fma(beta, H[i,j], alpha * dot) with beta = n/(n+samples),
// alpha = 2/(n+samples) in fp32. Tiles and token ranges never depend on the thread count.
//
// Storage is fp32 like the reference; only the upper triangle is maintained and it is mirrored
// when H is read (symmetric(), take()).
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
  std::vector<float> H_;        // [K, K], upper tiles valid
  std::vector<float> xt_;       // [K, tokens] the current batch transposed
  bool mirrored_ = false;       // the lower triangle mirrors the upper one (no batch since)
};

}  // namespace gptq::cpu
