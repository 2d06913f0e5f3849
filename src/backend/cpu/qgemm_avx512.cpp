// AVX-512F instantiation of the qgemm kernels (qgemm_kernels.h): 16 floats per vector,
// 2 vectors per 32-column tile. Compiled for baseline x86-64; only these functions use AVX-512.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "backend/cpu/qgemm_internal.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cpu::detail {
namespace avx512 {
namespace {

#define QGEMM_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))

// The maskz forms with a full mask compile to the plain instructions; the unmasked intrinsics of
// GCC 12 pass _mm512_undefined_*() and trip -Wmaybe-uninitialized.
constexpr int kLanes = 16;
using vf = __m512;
using vi = __m512i;

QGEMM_TARGET inline vf vzero() { return _mm512_setzero_ps(); }
QGEMM_TARGET inline vf vbcast(float x) { return _mm512_set1_ps(x); }
QGEMM_TARGET inline vf vload_h(const uint16_t* p) {
  return _mm512_maskz_cvtph_ps(__mmask16(0xFFFF), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
QGEMM_TARGET inline vf vload_f(const float* p) { return _mm512_loadu_ps(p); }
QGEMM_TARGET inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
QGEMM_TARGET inline vi vload_i(const uint32_t* p) { return _mm512_loadu_si512(reinterpret_cast<const __m512i*>(p)); }
QGEMM_TARGET inline vi vset1_i(uint32_t x) { return _mm512_set1_epi32(int(x)); }
QGEMM_TARGET inline vi vand(vi a, vi b) { return _mm512_and_si512(a, b); }
QGEMM_TARGET inline vi vor(vi a, vi b) { return _mm512_or_si512(a, b); }
template <int S>
QGEMM_TARGET inline vi vsrl(vi a) {
  if constexpr (S == 0) return a;
  return _mm512_maskz_srli_epi32(__mmask16(0xFFFF), a, S);
}
template <int S>
QGEMM_TARGET inline vi vsll(vi a) {
  return _mm512_maskz_slli_epi32(__mmask16(0xFFFF), a, S);
}
QGEMM_TARGET inline vf vcvt(vi a) { return _mm512_maskz_cvtepi32_ps(__mmask16(0xFFFF), a); }
QGEMM_TARGET inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
QGEMM_TARGET inline vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }
QGEMM_TARGET inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
QGEMM_TARGET inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
QGEMM_TARGET inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }

#include "backend/cpu/qgemm_kernels.h"

#undef QGEMM_TARGET

}  // namespace
}  // namespace avx512

void qgemm_avx512(const QgemmCall& c) { avx512::run(c); }

}  // namespace gptq::cpu::detail
