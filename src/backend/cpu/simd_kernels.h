// SIMD implementations behind the dispatchers of gemm.cpp / ops.cpp. Each is compiled with a
// target attribute and must only be called when cpu::active_simd() allows it.
#pragma once

#include <cstdint>

#include "gptq/tensor.h"

namespace gptq::cpu {

void to_f32_avx2(const void* src, DType t, int64_t n, float* dst);
// y[t, n] = Σ_k x[t, k] · W[n, k] for n in [n0, n1), t < T ≤ 4.
void dot_rows_avx2(const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t n0, int64_t n1, int64_t N,
                   float* y);
float dot_f32_avx2(const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void axpy_f32_avx2(float a, const float* x, float* y, int64_t n);

}  // namespace gptq::cpu
