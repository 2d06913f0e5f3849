// AVX2 + FMA + F16C instantiation of the qgemm kernels (qgemm_kernels.h): 8 floats per vector,
// 4 vectors per 32-column tile. Compiled for baseline x86-64; only these functions use AVX2.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "backend/cpu/qgemm_internal.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cpu::detail {
namespace avx2 {
namespace {

#define QGEMM_TARGET __attribute__((target("avx2,fma,f16c")))

constexpr int kLanes = 8;
using vf = __m256;
using vi = __m256i;

QGEMM_TARGET inline vf vzero() { return _mm256_setzero_ps(); }
QGEMM_TARGET inline vf vbcast(float x) { return _mm256_set1_ps(x); }
QGEMM_TARGET inline vf vload_h(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
QGEMM_TARGET inline vf vload_f(const float* p) { return _mm256_loadu_ps(p); }
QGEMM_TARGET inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
QGEMM_TARGET inline vi vload_i(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
QGEMM_TARGET inline vi vset1_i(uint32_t x) { return _mm256_set1_epi32(int(x)); }
QGEMM_TARGET inline vi vand(vi a, vi b) { return _mm256_and_si256(a, b); }
QGEMM_TARGET inline vi vor(vi a, vi b) { return _mm256_or_si256(a, b); }
template <int S>
QGEMM_TARGET inline vi vsrl(vi a) {
  if constexpr (S == 0) return a;
  return _mm256_srli_epi32(a, S);
}
template <int S>
QGEMM_TARGET inline vi vsll(vi a) {
  return _mm256_slli_epi32(a, S);
}
QGEMM_TARGET inline vf vcvt(vi a) { return _mm256_cvtepi32_ps(a); }
QGEMM_TARGET inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
QGEMM_TARGET inline vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
QGEMM_TARGET inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
QGEMM_TARGET inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
QGEMM_TARGET inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }

#include "backend/cpu/qgemm_kernels.h"

#undef QGEMM_TARGET

}  // namespace
}  // namespace avx2

void qgemm_avx2(const QgemmCall& c) { avx2::run(c); }

}  // namespace gptq::cpu::detail
