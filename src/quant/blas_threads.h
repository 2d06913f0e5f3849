// Scoped OpenBLAS thread count. Our kernels call single-threaded BLAS from inside
// gptq::parallel_for (one call per tile and thread), where OpenBLAS's own threads would only
// oversubscribe the cores; the LAPACK factorizations, called from one thread, want them all.
// The previous count is restored on exit.
#pragma once

#include <cblas.h>

namespace gptq::quant {

class BlasThreadsScope {
 public:
  explicit BlasThreadsScope(int n) : saved_(openblas_get_num_threads()) {
    if (n != saved_) openblas_set_num_threads(n);
  }
  ~BlasThreadsScope() {
    if (openblas_get_num_threads() != saved_) openblas_set_num_threads(saved_);
  }
  BlasThreadsScope(const BlasThreadsScope&) = delete;
  BlasThreadsScope& operator=(const BlasThreadsScope&) = delete;

 private:
  int saved_;
};

}  // namespace gptq::quant
