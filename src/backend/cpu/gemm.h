// Dense matrix products on the CPU with weights kept in their file dtype (F32/F16/BF16).
#pragma once

#include <cstdint>

#include "core/thread_pool.h"
#include "gptq/tensor.h"

namespace gptq::cpu {

// y[T, N] = x[T, K] · W[N, K]ᵀ (+ bias[N]).
// W is row-major in `wt` (F32, F16 or BF16), converted to fp32 on the fly: small T uses SIMD dot
// products over each row (reads W once, bandwidth-bound); larger T converts blocks of 64 rows into a
// per-thread fp32 buffer and multiplies them with OpenBLAS sgemm (compute-bound).
// Multithreaded over N on `pool`; sgemm runs single-threaded inside its tasks.
void dense_matmul(ThreadPool& pool, const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t N, const float* bias,
                  float* y);

// Row i of W converted to fp32 (embedding lookup).
void dense_row_to_f32(const void* w, DType wt, int64_t K, int64_t row, float* out);

// fp32 conversion of n elements (reference and SIMD).
void to_f32(const void* src, DType t, int64_t n, float* dst);

}  // namespace gptq::cpu
