// The GPU for the CUDA tests: one CUDA backend on device 0 shared by the whole test binary, and a
// skip with the reason when there is no usable GPU (CPU-only machines and builds).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "backend/backend.h"

namespace gptq_test {

// The shared CUDA backend, or null without a usable GPU.
inline std::shared_ptr<gptq::Backend> gpu() {
  static std::shared_ptr<gptq::Backend> b = [] {
    std::string why;
    return gptq::cuda_usable(0, &why) ? std::shared_ptr<gptq::Backend>(gptq::make_cuda_backend()) : nullptr;
  }();
  return b;
}

}  // namespace gptq_test

#define NEED_GPU()                                                         \
  do {                                                                     \
    std::string why_;                                                      \
    if (!gptq::cuda_usable(0, &why_)) GTEST_SKIP() << "no GPU: " << why_;  \
  } while (0)
