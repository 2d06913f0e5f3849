// Fixed-order GEMM, SYRK, Cholesky and triangular inverse (see fixed_gemm.h for the order each
// output is computed in). Layout of this file: scalar reference, AVX2 kernels, AVX-512 kernels,
// then the drivers that tile the outputs and pick the kernel. Only the drivers know about
// threads; a kernel computes whole outputs, which is why the split cannot change a bit.
#include "backend/cpu/fixed_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_features.h"
#include "gptq/error.h"

// GCC 12 reports the intrinsics' own _mm512_undefined_* placeholders as maybe-uninitialized
// (GCC bug 105593); nothing in this file reads an uninitialized value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define GPTQ_FIX_AVX2 __attribute__((target("avx2,fma")))
#define GPTQ_FIX_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))

namespace gptq::cpu {

namespace {

// ---- shared definitions ------------------------------------------------------------------------

constexpr int kMR = 6;         // rows of A per micro tile (every kernel)
constexpr int64_t kTM = 96;    // output tile rows (multiple of kMR)
constexpr int64_t kTN = 64;    // output tile columns (multiple of 8)
constexpr int64_t kDB = 64;    // double kernels: block size of the factorizations

inline float epilogue(float s, float alpha, float beta, const float* c) {
  const float r = alpha * s;
  return beta == 0.f ? r : std::fma(beta, *c, r);
}

// Runs fn(item) for item in [0, n) over the pool, dynamically scheduled (each item is
// independent, so the order items run in does not matter).
template <class Fn>
void for_items(ThreadPool* pool, int64_t n, const Fn& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->size() <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  pool->run([&](int, int) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  });
}

// ---- scalar reference ----------------------------------------------------------------------------

float dot8_scalar(const float* a, const float* b, int64_t K) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < K; ++k) acc[k & 7] = std::fma(a[k], b[k], acc[k & 7]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Outputs [m0,m1) x [n0,n1) of gemm_nt; upper: only n >= m.
void nt_tile_scalar(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool upper) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = upper ? std::max(n0, m) : n0; n < n1; ++n) {
      float* c = C + m * ldc + n;
      *c = epilogue(dot8_scalar(A + m * lda, B + n * ldb, K), alpha, beta, c);
    }
}

void nn_tile_scalar(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  std::vector<float> acc(size_t(n1 - n0));
  for (int64_t m = m0; m < m1; ++m) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t k = 0; k < K; ++k) {
      const float a = A[m * lda + k];
      const float* b = B + k * ldb;
      for (int64_t n = n0; n < n1; ++n) acc[size_t(n - n0)] = std::fma(a, b[n], acc[size_t(n - n0)]);
    }
    for (int64_t n = n0; n < n1; ++n) C[m * ldc + n] = epilogue(acc[size_t(n - n0)], alpha, beta, C + m * ldc + n);
  }
}

// C[m, 0:N] = fma(-A[m,k], B[k, 0:N], C[m, 0:N]) for k = 0..K-1 (double; the factorizations' update).
void dsub_scalar(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb,
                 double* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const double a = -A[m * lda + k];
      const double* b = B + k * ldb;
      double* c = C + m * ldc;
      for (int64_t n = 0; n < N; ++n) c[n] = std::fma(a, b[n], c[n]);
    }
}

// y = fma(alpha, x, y), elementwise
void daxpy_scalar(int64_t n, double alpha, const double* x, double* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}

// ---- B packing for the dot8 kernels ---------------------------------------------------------------
// Bp: [ceil(rows/2) pairs][ceil(K/8) chunks][16]: lanes 0-7 = row 2p, k in 8c..8c+7; lanes 8-15 =
// row 2p+1; zeros past K and for a missing odd row.
void pack_pairs(const float* B, int64_t ldb, int64_t rows, int64_t K, std::vector<float>& buf) {
  const int64_t pairs = (rows + 1) / 2, chunks = (K + 7) / 8;
  buf.assign(size_t(pairs * chunks * 16), 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = B + r * ldb;
    float* dst = buf.data() + (r / 2) * chunks * 16 + (r & 1) * 8;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t k0 = c * 8, kn = std::min<int64_t>(8, K - k0);
      for (int64_t j = 0; j < kn; ++j) dst[c * 16 + j] = src[k0 + j];
    }
  }
}

// ---- AVX2 -------------------------------------------------------------------------------------------

GPTQ_FIX_AVX2 inline float reduce8_avx2(__m256 v) {
  v = _mm256_add_ps(v, _mm256_permute_ps(v, 0xB1));  // l0+l1, l2+l3, ...
  v = _mm256_add_ps(v, _mm256_permute_ps(v, 0x4E));  // (l0+l1)+(l2+l3), (l4+l5)+(l6+l7)
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

GPTQ_FIX_AVX2 inline __m256i tail_mask8(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
}

// S[r][0..1] = dot8(A row r, B pair rows 0/1), r < MR. Bp: one pair, chunks of 16.
template <int MR>
GPTQ_FIX_AVX2 void nt_micro_avx2(const float* A, int64_t lda, const float* Bp, int64_t K, float* S) {
  __m256 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  const int64_t full = K / 8;
  for (int64_t c = 0; c < full; ++c) {
    const __m256 b0 = _mm256_loadu_ps(Bp + c * 16), b1 = _mm256_loadu_ps(Bp + c * 16 + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_loadu_ps(A + r * lda + c * 8);
      acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
    }
  }
  if (K % 8) {  // tail lanes 0..K%8-1 only; the others keep their exact value
    const __m256i mi = tail_mask8(K % 8);
    const __m256 mf = _mm256_castsi256_ps(mi);
    const __m256 b0 = _mm256_loadu_ps(Bp + full * 16), b1 = _mm256_loadu_ps(Bp + full * 16 + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_maskload_ps(A + r * lda + full * 8, mi);
      acc0[r] = _mm256_blendv_ps(acc0[r], _mm256_fmadd_ps(a, b0, acc0[r]), mf);
      acc1[r] = _mm256_blendv_ps(acc1[r], _mm256_fmadd_ps(a, b1, acc1[r]), mf);
    }
  }
  for (int r = 0; r < MR; ++r) {
    S[r * 8 + 0] = reduce8_avx2(acc0[r]);
    S[r * 8 + 1] = reduce8_avx2(acc1[r]);
  }
}

// C tile [m0,m1) x [n0,n1), B rows n0.. packed in Bp. S holds sums laid out [6][8].
GPTQ_FIX_AVX2 void nt_tile_avx2(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
                                const float* A, int64_t lda, const float* Bp, float beta, float* C, int64_t ldc,
                                bool upper) {
  const int64_t chunks = (K + 7) / 8;
  float S[kMR * 8];
  for (int64_t p = 0; n0 + 2 * p < n1; ++p) {
    const int64_t n = n0 + 2 * p, nn = std::min<int64_t>(2, n1 - n);
    const float* bp = Bp + p * chunks * 16;
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = int(std::min<int64_t>(kMR, m1 - m));
      if (upper && m > n + nn - 1) break;  // rows below the diagonal from here on
      const float* a = A + m * lda;
      switch (mr) {
        case 6: nt_micro_avx2<6>(a, lda, bp, K, S); break;
        case 5: nt_micro_avx2<5>(a, lda, bp, K, S); break;
        case 4: nt_micro_avx2<4>(a, lda, bp, K, S); break;
        case 3: nt_micro_avx2<3>(a, lda, bp, K, S); break;
        case 2: nt_micro_avx2<2>(a, lda, bp, K, S); break;
        default: nt_micro_avx2<1>(a, lda, bp, K, S); break;
      }
      for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nn; ++j) {
          if (upper && n + j < m + r) continue;
          float* c = C + (m + r) * ldc + n + j;
          const float rr = alpha * S[r * 8 + j];
          *c = beta == 0.f ? rr : std::fma(beta, *c, rr);
        }
    }
  }
}

// Rows [0,MR) x columns [0, nc) (nc <= 16) of gemm_nn.
template <int MR>
GPTQ_FIX_AVX2 void nn_micro_avx2(int64_t K, int64_t nc, float alpha, const float* A, int64_t lda, const float* B,
                                 int64_t ldb, float beta, float* C, int64_t ldc) {
  __m256 acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  const __m256i m0 = tail_mask8(std::min<int64_t>(8, nc)), m1 = tail_mask8(std::max<int64_t>(0, nc - 8));
  if (nc == 16) {
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
        acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = _mm256_maskload_ps(B + k * ldb, m0), b1 = _mm256_maskload_ps(B + k * ldb + 8, m1);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
        acc0[r] = _mm256_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(a, b1, acc1[r]);
      }
    }
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    __m256 r0 = _mm256_mul_ps(va, acc0[r]), r1 = _mm256_mul_ps(va, acc1[r]);
    if (beta != 0.f) {
      r0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c, m0), r0);
      r1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(c + 8, m1), r1);
    }
    _mm256_maskstore_ps(c, m0, r0);
    _mm256_maskstore_ps(c + 8, m1, r1);
  }
}

GPTQ_FIX_AVX2 void nn_tile_avx2(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
                                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                                int64_t ldc) {
  for (int64_t n = n0; n < n1; n += 16) {
    const int64_t nc = std::min<int64_t>(16, n1 - n);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = int(std::min<int64_t>(kMR, m1 - m));
      const float* a = A + m * lda;
      float* c = C + m * ldc + n;
      switch (mr) {
        case 6: nn_micro_avx2<6>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 5: nn_micro_avx2<5>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 4: nn_micro_avx2<4>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 3: nn_micro_avx2<3>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 2: nn_micro_avx2<2>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        default: nn_micro_avx2<1>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
      }
    }
  }
}

GPTQ_FIX_AVX2 inline __m256i dmask4_avx2(int64_t n) {
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), idx);
}

// Rows [0,MR) x columns [0,nc) (nc <= 8) of dsub.
template <int MR>
GPTQ_FIX_AVX2 void dsub_micro_avx2(int64_t K, int64_t nc, const double* A, int64_t lda, const double* B,
                                   int64_t ldb, double* C, int64_t ldc) {
  const __m256i k0 = dmask4_avx2(std::min<int64_t>(4, nc)), k1 = dmask4_avx2(std::max<int64_t>(0, nc - 4));
  __m256d c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) {
    c0[r] = _mm256_maskload_pd(C + r * ldc, k0);
    c1[r] = _mm256_maskload_pd(C + r * ldc + 4, k1);
  }
  for (int64_t k = 0; k < K; ++k) {  // B: a zero-padded panel of 8 columns
    const __m256d b0 = _mm256_loadu_pd(B + k * ldb), b1 = _mm256_loadu_pd(B + k * ldb + 4);
    for (int r = 0; r < MR; ++r) {
      const __m256d a = _mm256_broadcast_sd(A + r * lda + k);  // fnmadd == fma(-a, b, c) exactly
      c0[r] = _mm256_fnmadd_pd(a, b0, c0[r]);
      c1[r] = _mm256_fnmadd_pd(a, b1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_maskstore_pd(C + r * ldc, k0, c0[r]);
    _mm256_maskstore_pd(C + r * ldc + 4, k1, c1[r]);
  }
}

GPTQ_FIX_AVX2 void daxpy_avx2(int64_t n, double alpha, const double* x, double* y) {
  const __m256d va = _mm256_set1_pd(alpha);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, _mm256_fmadd_pd(va, _mm256_loadu_pd(x + i), _mm256_loadu_pd(y + i)));
  for (; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}

// ---- AVX-512 ------------------------------------------------------------------------------------------

// Two dot8 sums per zmm (lanes 0-7 and 8-15), the same tree as reduce8: lane 0 and lane 8.
GPTQ_FIX_AVX512 inline __m512 reduce_pair_avx512(__m512 v) {
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
  return _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // swap 128-bit blocks within each 256
}

// S[r][0..7] = dot8(A row r, B rows 0..7), r < MR; Bp: 4 consecutive pairs.
template <int MR>
GPTQ_FIX_AVX512 void nt_micro_avx512(const float* A, int64_t lda, const float* Bp, int64_t chunks, int64_t K,
                                     float* S) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  const int64_t full = K / 8, ps = chunks * 16;  // pair stride in Bp
  for (int64_t c = 0; c < full; ++c) {
    const __m512 b0 = _mm512_loadu_ps(Bp + c * 16), b1 = _mm512_loadu_ps(Bp + ps + c * 16);
    const __m512 b2 = _mm512_loadu_ps(Bp + 2 * ps + c * 16), b3 = _mm512_loadu_ps(Bp + 3 * ps + c * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_broadcast_f32x8(_mm256_loadu_ps(A + r * lda + c * 8));
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
    }
  }
  if (K % 8) {
    const __mmask8 m8 = __mmask8((1u << (K % 8)) - 1);
    const __mmask16 m16 = __mmask16(m8 | (unsigned(m8) << 8));
    const int64_t c = full;
    const __m512 b0 = _mm512_loadu_ps(Bp + c * 16), b1 = _mm512_loadu_ps(Bp + ps + c * 16);
    const __m512 b2 = _mm512_loadu_ps(Bp + 2 * ps + c * 16), b3 = _mm512_loadu_ps(Bp + 3 * ps + c * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_broadcast_f32x8(_mm256_maskz_loadu_ps(m8, A + r * lda + c * 8));
      acc[r][0] = _mm512_mask3_fmadd_ps(a, b0, acc[r][0], m16);
      acc[r][1] = _mm512_mask3_fmadd_ps(a, b1, acc[r][1], m16);
      acc[r][2] = _mm512_mask3_fmadd_ps(a, b2, acc[r][2], m16);
      acc[r][3] = _mm512_mask3_fmadd_ps(a, b3, acc[r][3], m16);
    }
  }
  alignas(64) float tmp[16];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      _mm512_store_ps(tmp, reduce_pair_avx512(acc[r][j]));
      S[r * 8 + 2 * j] = tmp[0];
      S[r * 8 + 2 * j + 1] = tmp[8];
    }
}

GPTQ_FIX_AVX512 void nt_tile_avx512(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
                                    const float* A, int64_t lda, const float* Bp, float beta, float* C, int64_t ldc,
                                    bool upper) {
  const int64_t chunks = (K + 7) / 8;
  float S[kMR * 8];
  for (int64_t g = 0; n0 + 8 * g < n1; ++g) {  // groups of 4 pairs (Bp is padded to whole groups)
    const int64_t n = n0 + 8 * g, nn = std::min<int64_t>(8, n1 - n);
    const float* bp = Bp + g * 4 * chunks * 16;
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = int(std::min<int64_t>(kMR, m1 - m));
      if (upper && m > n + nn - 1) break;
      const float* a = A + m * lda;
      switch (mr) {
        case 6: nt_micro_avx512<6>(a, lda, bp, chunks, K, S); break;
        case 5: nt_micro_avx512<5>(a, lda, bp, chunks, K, S); break;
        case 4: nt_micro_avx512<4>(a, lda, bp, chunks, K, S); break;
        case 3: nt_micro_avx512<3>(a, lda, bp, chunks, K, S); break;
        case 2: nt_micro_avx512<2>(a, lda, bp, chunks, K, S); break;
        default: nt_micro_avx512<1>(a, lda, bp, chunks, K, S); break;
      }
      for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nn; ++j) {
          if (upper && n + j < m + r) continue;
          float* c = C + (m + r) * ldc + n + j;
          const float rr = alpha * S[r * 8 + j];
          *c = beta == 0.f ? rr : std::fma(beta, *c, rr);
        }
    }
  }
}

GPTQ_FIX_AVX512 inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Rows [0,MR) x columns [0,nc) (nc <= 64) of gemm_nn; FULL: nc == 64 (no masks in the k loop).
template <int MR, bool FULL>
GPTQ_FIX_AVX512 void nn_micro_avx512_t(int64_t K, int64_t nc, float alpha, const float* A, int64_t lda,
                                       const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  const __mmask16 mk[4] = {mask16(nc), mask16(nc - 16), mask16(nc - 32), mask16(nc - 48)};
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    __m512 bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = FULL ? _mm512_loadu_ps(b + 16 * j) : _mm512_maskz_loadu_ps(mk[j], b + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_fmadd_ps(a, bv[j], acc[r][j]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      if (!mk[j]) continue;
      float* c = C + r * ldc + 16 * j;
      __m512 v = _mm512_mul_ps(va, acc[r][j]);
      if (beta != 0.f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mk[j], c), v);
      _mm512_mask_storeu_ps(c, mk[j], v);
    }
}

template <int MR>
GPTQ_FIX_AVX512 void nn_micro_avx512(int64_t K, int64_t nc, float alpha, const float* A, int64_t lda,
                                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (nc == 64)
    nn_micro_avx512_t<MR, true>(K, nc, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    nn_micro_avx512_t<MR, false>(K, nc, alpha, A, lda, B, ldb, beta, C, ldc);
}

GPTQ_FIX_AVX512 void nn_tile_avx512(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
                                    const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                                    int64_t ldc) {
  for (int64_t n = n0; n < n1; n += 64) {
    const int64_t nc = std::min<int64_t>(64, n1 - n);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = int(std::min<int64_t>(kMR, m1 - m));
      const float* a = A + m * lda;
      float* c = C + m * ldc + n;
      switch (mr) {
        case 6: nn_micro_avx512<6>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 5: nn_micro_avx512<5>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 4: nn_micro_avx512<4>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 3: nn_micro_avx512<3>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        case 2: nn_micro_avx512<2>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
        default: nn_micro_avx512<1>(K, nc, alpha, a, lda, B + n, ldb, beta, c, ldc); break;
      }
    }
  }
}

GPTQ_FIX_AVX512 inline __mmask8 mask8(int64_t n) {
  return n >= 8 ? __mmask8(0xFF) : n <= 0 ? __mmask8(0) : __mmask8((1u << n) - 1);
}

// Rows [0,MR) x columns [0,nc) (nc <= 32) of dsub.
template <int MR>
GPTQ_FIX_AVX512 void dsub_micro_avx512(int64_t K, int64_t nc, const double* A, int64_t lda, const double* B,
                                       int64_t ldb, double* C, int64_t ldc) {
  const __mmask8 mk[4] = {mask8(nc), mask8(nc - 8), mask8(nc - 16), mask8(nc - 24)};
  __m512d c[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) c[r][j] = _mm512_maskz_loadu_pd(mk[j], C + r * ldc + 8 * j);
  for (int64_t k = 0; k < K; ++k) {  // B: a zero-padded panel of 32 columns
    __m512d b[4];
    for (int j = 0; j < 4; ++j) b[j] = _mm512_loadu_pd(B + k * ldb + 8 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512d a = _mm512_set1_pd(A[r * lda + k]);  // fnmadd == fma(-a, b, c) exactly
      for (int j = 0; j < 4; ++j) c[r][j] = _mm512_fnmadd_pd(a, b[j], c[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j)
      if (mk[j]) _mm512_mask_storeu_pd(C + r * ldc + 8 * j, mk[j], c[r][j]);
}

GPTQ_FIX_AVX512 void daxpy_avx512(int64_t n, double alpha, const double* x, double* y) {
  const __m512d va = _mm512_set1_pd(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(y + i, _mm512_fmadd_pd(va, _mm512_loadu_pd(x + i), _mm512_loadu_pd(y + i)));
  if (i < n) {
    const __mmask8 m = mask8(n - i);
    _mm512_mask_storeu_pd(y + i, m, _mm512_fmadd_pd(va, _mm512_maskz_loadu_pd(m, x + i), _mm512_maskz_loadu_pd(m, y + i)));
  }
}

// ---- dispatch of the double helpers ---------------------------------------------------------------

// dsub over a whole block, k-blocked by 128 (C is the accumulator, so k-blocking keeps the order).
void dsub(SimdLevel L, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb,
          double* C, int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (L == SimdLevel::kScalar) return dsub_scalar(M, N, K, A, lda, B, ldb, C, ldc);
  const int64_t W = L == SimdLevel::kAvx512 ? 32 : 8;
  constexpr int64_t kKc = 128;
  // B strips are copied into a contiguous [kc, W] panel: B's rows are often a power-of-two
  // stride apart (the factorizations' lda), which would put a strip's rows in one L1 set.
  static thread_local std::vector<double> bp;
  bp.resize(size_t(kKc * W));
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    for (int64_t n = 0; n < N; n += W) {
      const int64_t nc = std::min(W, N - n);
      for (int64_t k = 0; k < kc; ++k) {
        std::copy(B + (k0 + k) * ldb + n, B + (k0 + k) * ldb + n + nc, bp.data() + k * W);
        std::fill(bp.data() + k * W + nc, bp.data() + (k + 1) * W, 0.0);
      }
      for (int64_t m = 0; m < M; m += kMR) {
        const int mr = int(std::min<int64_t>(kMR, M - m));
        const double* a = A + m * lda + k0;
        const double* b = bp.data();
        double* c = C + m * ldc + n;
#define GPTQ_DSUB_CASE(R)                                                          \
  case R:                                                                          \
    if (L == SimdLevel::kAvx512)                                                   \
      dsub_micro_avx512<R>(kc, nc, a, lda, b, W, c, ldc);                          \
    else                                                                           \
      dsub_micro_avx2<R>(kc, nc, a, lda, b, W, c, ldc);                            \
    break;
        switch (mr) {
          GPTQ_DSUB_CASE(6)
          GPTQ_DSUB_CASE(5)
          GPTQ_DSUB_CASE(4)
          GPTQ_DSUB_CASE(3)
          GPTQ_DSUB_CASE(2)
          GPTQ_DSUB_CASE(1)
        }
#undef GPTQ_DSUB_CASE
      }
    }
  }
}

void daxpy(SimdLevel L, int64_t n, double alpha, const double* x, double* y) {
  if (n <= 0) return;
  if (L == SimdLevel::kAvx512) return daxpy_avx512(n, alpha, x, y);
  if (L == SimdLevel::kAvx2) return daxpy_avx2(n, alpha, x, y);
  daxpy_scalar(n, alpha, x, y);
}

// ---- float drivers ------------------------------------------------------------------------------------

thread_local std::vector<float> t_pack;

void gemm_nt_impl(ThreadPool* pool, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool upper) {
  if (M <= 0 || N <= 0) return;
  const SimdLevel L = active_simd();
  const int64_t tm = (M + kTM - 1) / kTM, tn = (N + kTN - 1) / kTN;
  std::vector<std::pair<int32_t, int32_t>> tiles;
  tiles.reserve(size_t(tm * tn));
  for (int64_t i = 0; i < tm; ++i)
    for (int64_t j = 0; j < tn; ++j)
      if (!upper || (j + 1) * kTN - 1 >= i * kTM) tiles.emplace_back(int32_t(i), int32_t(j));
  for_items(pool, int64_t(tiles.size()), [&](int64_t t) {
    const int64_t m0 = tiles[size_t(t)].first * kTM, n0 = tiles[size_t(t)].second * kTN;
    const int64_t m1 = std::min(M, m0 + kTM), n1 = std::min(N, n0 + kTN);
    if (K <= 0) {  // empty dot: s = +0
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = upper ? std::max(n0, m) : n0; n < n1; ++n)
          C[m * ldc + n] = epilogue(0.f, alpha, beta, C + m * ldc + n);
      return;
    }
    if (L == SimdLevel::kScalar) return nt_tile_scalar(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc, upper);
    // Pad to whole groups of 8 rows so the AVX-512 kernel never reads past the buffer.
    const int64_t rows = n1 - n0, padded = (rows + 7) / 8 * 8;
    pack_pairs(B + n0 * ldb, ldb, rows, K, t_pack);
    t_pack.resize(size_t(padded / 2 * ((K + 7) / 8) * 16), 0.f);
    if (L == SimdLevel::kAvx512)
      nt_tile_avx512(m0, m1, n0, n1, K, alpha, A, lda, t_pack.data(), beta, C, ldc, upper);
    else
      nt_tile_avx2(m0, m1, n0, n1, K, alpha, A, lda, t_pack.data(), beta, C, ldc, upper);
  });
}

}  // namespace

void gemm_nt_fixed(ThreadPool* pool, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_nt_impl(pool, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, false);
}

void syrk_upper_fixed(ThreadPool* pool, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, float beta,
                      float* C, int64_t ldc) {
  gemm_nt_impl(pool, N, N, K, alpha, A, lda, A, lda, beta, C, ldc, true);
}

void gemm_nn_fixed(ThreadPool* pool, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const SimdLevel L = active_simd();
  constexpr int64_t kNN = 256;  // tile columns (B strip of K x 256 for the tile's rows)
  const int64_t tm = (M + kTM - 1) / kTM, tn = (N + kNN - 1) / kNN;
  for_items(pool, tm * tn, [&](int64_t t) {
    const int64_t m0 = (t / tn) * kTM, n0 = (t % tn) * kNN;
    const int64_t m1 = std::min(M, m0 + kTM), n1 = std::min(N, n0 + kNN);
    if (L == SimdLevel::kAvx512)
      nn_tile_avx512(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (L == SimdLevel::kAvx2)
      nn_tile_avx2(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
      nn_tile_scalar(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
  });
}

// ---- double factorizations ------------------------------------------------------------------------------

bool cholesky_lower_fixed(ThreadPool* pool, int64_t n, double* a, int64_t lda) {
  const SimdLevel L = active_simd();
  std::vector<double> Pt;  // [kDB, n - k1] the panel below the diagonal block, transposed
  for (int64_t k0 = 0; k0 < n; k0 += kDB) {
    const int64_t k1 = std::min(n, k0 + kDB), nb = k1 - k0, rest = n - k1;
    // Diagonal block (updates from columns < k0 already applied), unblocked.
    for (int64_t j = k0; j < k1; ++j) {
      for (int64_t i = j; i < k1; ++i) {
        double s = a[i * lda + j];
        for (int64_t k = k0; k < j; ++k) s = std::fma(-a[i * lda + k], a[j * lda + k], s);
        a[i * lda + j] = s;
      }
      const double d = a[j * lda + j];
      if (!(d > 0.0)) return false;
      const double l = std::sqrt(d);
      a[j * lda + j] = l;
      for (int64_t i = j + 1; i < k1; ++i) a[i * lda + j] /= l;
    }
    if (rest == 0) break;
    // Panel: rows k1..n-1, columns k0..k1-1, vectorized across rows through the transposed copy.
    Pt.resize(size_t(nb * rest));
    constexpr int64_t kRows = 256;
    for_items(pool, (rest + kRows - 1) / kRows, [&](int64_t t) {
      const int64_t r0 = t * kRows, r1 = std::min(rest, r0 + kRows), rn = r1 - r0;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < nb; ++j) Pt[size_t(j * rest + r)] = a[(k1 + r) * lda + k0 + j];
      for (int64_t j = 0; j < nb; ++j) {
        double* pj = Pt.data() + j * rest + r0;
        for (int64_t k = 0; k < j; ++k) daxpy(L, rn, -a[(k0 + j) * lda + k0 + k], Pt.data() + k * rest + r0, pj);
        const double l = a[(k0 + j) * lda + k0 + j];
        for (int64_t r = 0; r < rn; ++r) pj[r] /= l;
      }
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < nb; ++j) a[(k1 + r) * lda + k0 + j] = Pt[size_t(j * rest + r)];
    });
    // Trailing update of the lower triangle: a[i,j] -= L[i,k0:k1] . L[j,k0:k1] (tiles with j <= i;
    // tiles straddling the diagonal also update a few upper entries, which are scratch).
    constexpr int64_t kT = 96;
    const int64_t nt = (rest + kT - 1) / kT;
    std::vector<std::pair<int32_t, int32_t>> tiles;
    for (int64_t i = 0; i < nt; ++i)
      for (int64_t j = 0; j <= i; ++j) tiles.emplace_back(int32_t(i), int32_t(j));
    for_items(pool, int64_t(tiles.size()), [&](int64_t t) {
      const int64_t i0 = tiles[size_t(t)].first * kT, j0 = tiles[size_t(t)].second * kT;
      const int64_t mi = std::min(kT, rest - i0), nj = std::min(kT, rest - j0);
      dsub(L, mi, nj, nb, a + (k1 + i0) * lda + k0, lda, Pt.data() + j0, rest, a + (k1 + i0) * lda + k1 + j0, lda);
    });
  }
  return true;
}

void tri_lower_inverse_fixed(ThreadPool* pool, int64_t n, double* a, int64_t lda) {
  const SimdLevel L = active_simd();
  std::vector<double> T;  // [nb, n]: the block row of X being computed
  for (int64_t i0 = 0; i0 < n; i0 += kDB) {
    const int64_t i1 = std::min(n, i0 + kDB), nb = i1 - i0;
    T.assign(size_t(nb * n), 0.0);
    // T[i, J] = -sum_{k in [j0, i0)} L[i,k] X[k, J] for every column block J left of the block row.
    const int64_t nJ = i0 / kDB;
    for_items(pool, nJ, [&](int64_t J) {
      const int64_t j0 = J * kDB;
      dsub(L, nb, kDB, i0 - j0, a + i0 * lda + j0, lda, a + j0 * lda + j0, lda, T.data() + j0, n);
    });
    // In-block rows, sequential in i, parallel over column ranges.
    constexpr int64_t kCols = 512;
    for_items(pool, (i1 + kCols - 1) / kCols, [&](int64_t t) {
      const int64_t c0 = t * kCols, c1 = std::min(i1, c0 + kCols);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t ce = std::min(c1, i);  // columns c < i of row i in this range
        double* ti = T.data() + (i - i0) * n;
        if (ce > c0) {
          for (int64_t k = i0; k < i; ++k) daxpy(L, ce - c0, -a[i * lda + k], T.data() + (k - i0) * n + c0, ti + c0);
          const double d = a[i * lda + i];
          for (int64_t c = c0; c < ce; ++c) ti[c] /= d;
        }
        if (i >= c0 && i < c1) ti[i] = 1.0 / a[i * lda + i];
      }
    });
    for (int64_t i = i0; i < i1; ++i) std::copy(T.data() + (i - i0) * n, T.data() + (i - i0 + 1) * n, a + i * lda);
  }
}

}  // namespace gptq::cpu
