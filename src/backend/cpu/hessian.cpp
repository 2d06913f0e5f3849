#include "backend/cpu/hessian.h"

#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/fixed_gemm.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cpu {

namespace {
// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block.
__attribute__((target("avx2"))) void transpose8x8_avx2(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // r[0..3]: columns 0, 1, 2, 3 of rows 0-3 | 4-7 halves; r[4..7] the same for rows 4-7.
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
}  // namespace

HessianAccumulator::HessianAccumulator(ThreadPool& pool, int64_t K)
    : pool_(pool), K_(K), sum_(size_t(K * K), 0.0), H_(size_t(K * K), 0.f) {
  GPTQ_ASSERT(K > 0);
}

void HessianAccumulator::add_batch(const float* x, int64_t samples, int64_t T) {
  GPTQ_ASSERT(samples > 0 && T > 0);
  const int64_t rows = samples * T, K = K_;
  const double beta = double(nsamples_) / double(nsamples_ + samples);
  nsamples_ += samples;
  const double alpha = 2.0 / double(nsamples_);

  // xt: [K, rows] = x^T, in 32 x 32 blocks so that both sides stay in cache (8 x 8 register
  // transposes with AVX2 where a block is whole; a copy, so the same bits either way).
  xt_.resize(size_t(K * rows));
  constexpr int64_t kB = 32;
  const int64_t kb = (K + kB - 1) / kB;
  const bool avx2 = active_simd() >= SimdLevel::kAvx2;
  pool_.parallel_for(0, size_t(kb), [&](size_t b0, size_t b1) {
    for (int64_t i0 = int64_t(b0) * kB; i0 < std::min(K, int64_t(b1) * kB); i0 += kB) {
      const int64_t i1 = std::min(K, i0 + kB);
      for (int64_t t0 = 0; t0 < rows; t0 += kB) {
        const int64_t t1 = std::min(rows, t0 + kB);
        if (avx2 && i1 - i0 == kB && t1 - t0 == kB) {
          for (int64_t i = i0; i < i1; i += 8)
            for (int64_t t = t0; t < t1; t += 8) transpose8x8_avx2(x + t * K + i, K, xt_.data() + i * rows + t, rows);
          continue;
        }
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t t = t0; t < t1; ++t) xt_[size_t(i * rows + t)] = x[t * K + i];
      }
    }
  });
  // P[i, j] (i <= j) = dot8(xt[i, :], xt[j, :]) in fp32 into H_ (beta 0: its old values are not read)
  cpu::syrk_upper_fixed(&pool_, K, rows, 1.f, xt_.data(), rows, 0.f, H_.data(), K);
  // S[i, j] = beta S[i, j] + alpha P[i, j] in fp64, row by row
  pool_.parallel_for(0, size_t(K), [&](size_t r0, size_t r1) {
    for (int64_t i = int64_t(r0); i < int64_t(r1); ++i)
      for (int64_t j = i; j < K; ++j) sum_[size_t(i * K + j)] = beta * sum_[size_t(i * K + j)] + alpha * double(H_[size_t(i * K + j)]);
  });
  mirrored_ = false;
}

const std::vector<float>& HessianAccumulator::symmetric() {
  if (mirrored_) return H_;
  mirrored_ = true;
  const int64_t K = K_;
  pool_.parallel_for(0, size_t(K), [&](size_t r0, size_t r1) {
    for (int64_t i = int64_t(r0); i < int64_t(r1); ++i)
      for (int64_t j = i; j < K; ++j) H_[size_t(i * K + j)] = float(sum_[size_t(i * K + j)]);
  });
  // Mirror the upper triangle in 64x64 blocks so that the transposed writes stay in cache.
  constexpr int64_t kB = 64;
  float* h = H_.data();
  pool_.parallel_for(0, size_t((K + kB - 1) / kB), [&](size_t b0, size_t b1) {
    for (int64_t jb = int64_t(b0) * kB; jb < int64_t(b1) * kB && jb < K; jb += kB)  // lower rows j
      for (int64_t ib = 0; ib <= jb; ib += kB)                                        // source rows i
        for (int64_t j = jb; j < std::min(K, jb + kB); ++j)
          for (int64_t i = ib; i < std::min(j, ib + kB); ++i) h[j * K + i] = h[i * K + j];
  });
  return H_;
}

std::vector<float> HessianAccumulator::take() {
  symmetric();
  std::vector<float> out(static_cast<size_t>(K_ * K_), 0.f);
  out.swap(H_);
  std::vector<float>().swap(xt_);
  std::fill(sum_.begin(), sum_.end(), 0.0);
  nsamples_ = 0;
  mirrored_ = false;
  return out;
}

}  // namespace gptq::cpu
