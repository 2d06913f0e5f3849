// CUDA_CHECK(call): a CUDA runtime call that must succeed; anything else is a programmer error or a
// broken device, so it aborts with file:line and the runtime's message (DESIGN.md, errors tier 1).
#pragma once

#include <cuda_runtime.h>

#include "gptq/error.h"

#define CUDA_CHECK(call)                                                                          \
  do {                                                                                            \
    const cudaError_t gptq_cuda_err_ = (call);                                                    \
    if (gptq_cuda_err_ != cudaSuccess)                                                            \
      ::gptq::assert_fail(#call, __FILE__, __LINE__, cudaGetErrorString(gptq_cuda_err_));         \
  } while (0)
