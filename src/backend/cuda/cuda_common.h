// CUDA error checks (DESIGN.md: programmer bugs abort with file:line) and small helpers shared by
// the backend's host code and kernels.
#pragma once

#include <cuda_runtime.h>

#include "gptq/error.h"

#define CUDA_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    const cudaError_t cuda_check_err_ = (expr);                                                           \
    if (cuda_check_err_ != cudaSuccess)                                                                   \
      ::gptq::assert_fail(#expr, __FILE__, __LINE__, cudaGetErrorString(cuda_check_err_));                \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, faults at the next sync.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace gptq::cuda {

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace gptq::cuda
