// AVX2 + FMA + F16C kernels. Compiled for baseline x86-64 with per-function target attributes, so
// the binary runs anywhere and picks these only on CPUs that have them (cpu_features.cpp).
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/simd_kernels.h"
#include "core/half.h"
#include "gptq/error.h"

#define GPTQ_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace gptq::cpu {

namespace {

GPTQ_AVX2 inline __m256 load8(const void* w, DType t, int64_t k) {
  switch (t) {
    case DType::kF16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k)));
    case DType::kBF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default:
      return _mm256_loadu_ps(static_cast<const float*>(w) + k);
  }
}

GPTQ_AVX2 inline float load1(const void* w, DType t, int64_t k) {
  switch (t) {
    case DType::kF16: return fp16_to_fp32(static_cast<const uint16_t*>(w)[k]);
    case DType::kBF16: return bf16_to_fp32(static_cast<const uint16_t*>(w)[k]);
    default: return static_cast<const float*>(w)[k];
  }
}

GPTQ_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// One W row against up to 4 x rows; two accumulators per x row hide FMA latency.
template <int kT>
GPTQ_AVX2 void dot_rows_t(const float* x, int64_t K, const void* w, DType wt, int64_t n0, int64_t n1, int64_t N,
                          float* y) {
  const size_t es = dtype_size(wt);
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = static_cast<const uint8_t*>(w) + size_t(n) * size_t(K) * es;
    __m256 acc0[kT], acc1[kT];
    for (int t = 0; t < kT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256 w0 = load8(row, wt, k), w1 = load8(row, wt, k + 8);
      for (int t = 0; t < kT; ++t) {
        acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * K + k), acc0[t]);
        acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * K + k + 8), acc1[t]);
      }
    }
    for (; k + 8 <= K; k += 8) {
      const __m256 w0 = load8(row, wt, k);
      for (int t = 0; t < kT; ++t) acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * K + k), acc0[t]);
    }
    for (int t = 0; t < kT; ++t) {
      float s = hsum(_mm256_add_ps(acc0[t], acc1[t]));
      for (int64_t kk = k; kk < K; ++kk) s += x[t * K + kk] * load1(row, wt, kk);
      y[t * N + n] = s;
    }
  }
}

}  // namespace

GPTQ_AVX2 void to_f32_avx2(const void* src, DType t, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, t, i));
  for (; i < n; ++i) dst[i] = load1(src, t, i);
}

GPTQ_AVX2 void dot_rows_avx2(const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t n0, int64_t n1,
                             int64_t N, float* y) {
  switch (T) {
    case 1: dot_rows_t<1>(x, K, w, wt, n0, n1, N, y); break;
    case 2: dot_rows_t<2>(x, K, w, wt, n0, n1, N, y); break;
    case 3: dot_rows_t<3>(x, K, w, wt, n0, n1, N, y); break;
    case 4: dot_rows_t<4>(x, K, w, wt, n0, n1, N, y); break;
    default: GPTQ_ASSERT(false, "dot_rows_avx2 handles T <= 4");
  }
}

GPTQ_AVX2 float dot_f32_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

GPTQ_AVX2 void axpy_f32_avx2(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace gptq::cpu
