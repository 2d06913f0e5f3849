#include "backend/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/simd_kernels.h"
#include "core/half.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cpu {

namespace {

constexpr int64_t kSmallT = 4;      // up to this many rows of x: dot-product path
constexpr int64_t kRowBlock = 64;   // rows of W converted at a time for sgemm

float elem(const void* w, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(w)[i];
    case DType::kF16: return fp16_to_fp32(static_cast<const uint16_t*>(w)[i]);
    case DType::kBF16: return bf16_to_fp32(static_cast<const uint16_t*>(w)[i]);
    default: GPTQ_ASSERT(false, "dense weights must be F32, F16 or BF16"); return 0;
  }
}

// Reference: y[t, n] = Σ_k x[t, k] · W[n, k] for rows n in [n0, n1).
void dot_rows_scalar(const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t n0, int64_t n1,
                     int64_t N, float* y) {
  const size_t es = dtype_size(wt);
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = static_cast<const uint8_t*>(w) + size_t(n) * size_t(K) * es;
    for (int64_t t = 0; t < T; ++t) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += x[t * K + k] * elem(row, wt, k);
      y[t * N + n] = acc;
    }
  }
}

}  // namespace

void to_f32(const void* src, DType t, int64_t n, float* dst) {
  if (t == DType::kF32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  if (active_simd() >= SimdLevel::kAvx2) {
    to_f32_avx2(src, t, n, dst);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = elem(src, t, i);
}

void dense_row_to_f32(const void* w, DType wt, int64_t K, int64_t row, float* out) {
  to_f32(static_cast<const uint8_t*>(w) + size_t(row) * size_t(K) * dtype_size(wt), wt, K, out);
}

void dense_matmul(ThreadPool& pool, const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t N, const float* bias,
                  float* y) {
  GPTQ_ASSERT(wt == DType::kF32 || wt == DType::kF16 || wt == DType::kBF16);
  const size_t es = dtype_size(wt);
  const bool simd = active_simd() >= SimdLevel::kAvx2;
  if (T <= kSmallT) {
    pool.parallel_for(0, size_t(N), [&](size_t n0, size_t n1) {
      if (simd)
        dot_rows_avx2(x, T, K, w, wt, int64_t(n0), int64_t(n1), N, y);
      else
        dot_rows_scalar(x, T, K, w, wt, int64_t(n0), int64_t(n1), N, y);
    }, 16);
  } else {
    pool.parallel_for(0, size_t(N), [&](size_t b0, size_t b1) {
      thread_local std::vector<float> buf;
      for (size_t n0 = b0; n0 < b1; n0 += kRowBlock) {
        const int64_t nb = std::min<int64_t>(kRowBlock, int64_t(b1 - n0));
        const void* src = static_cast<const uint8_t*>(w) + n0 * size_t(K) * es;
        const float* wf;
        if (wt == DType::kF32) {
          wf = static_cast<const float*>(src);
        } else {
          buf.resize(static_cast<size_t>(nb * K));
          to_f32(src, wt, nb * K, buf.data());
          wf = buf.data();
        }
        // y[:, n0:n0+nb] = x[T, K] · wf[nb, K]ᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nb), int(K), 1.f, x, int(K), wf, int(K), 0.f,
                    y + n0, int(N));
      }
    }, size_t(kRowBlock));
  }
  if (bias) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) y[t * N + n] += bias[n];
  }
}

}  // namespace gptq::cpu
