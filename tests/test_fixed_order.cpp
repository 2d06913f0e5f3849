// Fixed-order kernels (backend/cpu/fixed_gemm.h) and the reproducibility they buy: every kernel
// against the order its header documents (written out again here), bit-for-bit across SIMD levels
// (scalar, AVX2, AVX-512) and pools (nullptr, 1, 2, 3, 5 threads), and close to a double
// reference; then the Hessian and the GPTQ solver, bit-identical for pools of 1, 2, 3 and 7.
// The *Hash tests print FNV-1a hashes of their outputs so runs under different
// OPENBLAS_CORETYPE values (or CPUs) can be compared by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/fixed_gemm.h"
#include "core/thread_pool.h"
#include "quant/gptq.h"
#include "backend/cpu/hessian.h"

using namespace gptq;
using namespace gptq::cpu;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
uint64_t fnv1a(const std::vector<T>& v, uint64_t h = 1469598103934665603ull) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(T); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// SIMD levels this CPU can run (force_simd caps; it cannot raise above detection).
std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> l{SimdLevel::kScalar};
  if (detected_simd() >= SimdLevel::kAvx2) l.push_back(SimdLevel::kAvx2);
  if (detected_simd() >= SimdLevel::kAvx512) l.push_back(SimdLevel::kAvx512);
  return l;
}

struct SimdScope {
  explicit SimdScope(SimdLevel l) { force_simd(l); }
  ~SimdScope() { force_simd(SimdLevel::kAvx512); }
};

ThreadPool& pool_of(int n) {
  static std::unique_ptr<ThreadPool> pools[8];
  if (!pools[n]) pools[n] = std::make_unique<ThreadPool>(n);
  return *pools[n];
}

// The documented orders, spelled out independently of the library.
float dot8_def(const float* a, const float* b, int64_t K) {
  float lane[8] = {};
  for (int l = 0; l < 8; ++l)
    for (int64_t k = l; k < K; k += 8) lane[l] = std::fma(a[k], b[k], lane[l]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}
float epilogue_def(float s, float alpha, float beta, float c) {
  return beta == 0.f ? alpha * s : std::fma(beta, c, alpha * s);
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Shape {
  int64_t M, N, K;
};
const Shape kShapes[] = {{1, 1, 1},    {1, 16, 64},  {16, 1, 64},  {3, 5, 7},   {13, 17, 8},
                         {7, 9, 9},    {11, 30, 63}, {16, 16, 64}, {25, 19, 65}, {100, 70, 1000},
                         {97, 131, 33}, {200, 65, 1}};

}  // namespace

TEST(FixedOrderGemm, NtMatchesDocumentedOrderOnEverySimdLevelAndPool) {
  for (const Shape& s : kShapes)
    for (float beta : {0.f, 1.f, 0.5f}) {
      const int64_t lda = s.K + 3, ldb = s.K + 1, ldc = s.N + 2;
      const auto A = randn(size_t(s.M * lda), uint32_t(s.M * 31 + s.K)), B = randn(size_t(s.N * ldb), uint32_t(s.N + 7));
      const auto C0 = randn(size_t(s.M * ldc), 3);
      const float alpha = -0.75f;
      // The definition, and a double reference for the error check.
      std::vector<float> want = C0;
      double max_err = 0, max_ref = 0;
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          want[size_t(m * ldc + n)] = epilogue_def(dot8_def(&A[size_t(m * lda)], &B[size_t(n * ldb)], s.K), alpha,
                                                   beta, C0[size_t(m * ldc + n)]);
          double ref = 0;
          for (int64_t k = 0; k < s.K; ++k) ref += double(A[size_t(m * lda + k)]) * B[size_t(n * ldb + k)];
          ref = alpha * ref + (beta == 0.f ? 0.0 : beta * double(C0[size_t(m * ldc + n)]));
          max_err = std::max(max_err, std::fabs(ref - want[size_t(m * ldc + n)]));
          max_ref = std::max(max_ref, std::fabs(ref));
        }
      EXPECT_LT(max_err / (max_ref + 1e-30), 1e-5) << s.M << "x" << s.N << "x" << s.K;
      for (SimdLevel L : levels())
        for (int p : {0, 1, 2, 3, 5}) {
          SimdScope scope(L);
          std::vector<float> C = C0;
          if (beta == 0.f)  // never read
            for (int64_t m = 0; m < s.M; ++m)
              for (int64_t n = 0; n < s.N; ++n) C[size_t(m * ldc + n)] = kNaN;
          gemm_nt_fixed(p ? &pool_of(p) : nullptr, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(),
                        ldc);
          if (beta == 0.f)  // padding columns untouched (still C0), outputs as defined
            for (int64_t m = 0; m < s.M; ++m)
              for (int64_t n = s.N; n < ldc; ++n) C[size_t(m * ldc + n)] = C0[size_t(m * ldc + n)];
          EXPECT_TRUE(same_bits(C, want)) << simd_name(L) << " pool " << p << " " << s.M << "x" << s.N << "x" << s.K
                                          << " beta " << beta;
        }
    }
}

TEST(FixedOrderGemm, SyrkUpperIsGemmNtOnTheUpperTriangleOnly) {
  for (int64_t N : {1, 5, 64, 97, 200})
    for (int64_t K : {1, 9, 64, 300}) {
      const auto A = randn(size_t(N * K), uint32_t(N + K));
      std::vector<float> full(size_t(N * N));
      gemm_nt_fixed(nullptr, N, N, K, 0.5f, A.data(), K, A.data(), K, 0.f, full.data(), N);
      for (SimdLevel L : levels())
        for (int p : {0, 3}) {
          SimdScope scope(L);
          std::vector<float> C(size_t(N * N), -7.f);
          syrk_upper_fixed(p ? &pool_of(p) : nullptr, N, K, 0.5f, A.data(), K, 0.f, C.data(), N);
          int64_t bad = 0;
          for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < N; ++j) {
              const float want = j >= i ? full[size_t(i * N + j)] : -7.f;
              bad += std::memcmp(&want, &C[size_t(i * N + j)], sizeof(float)) != 0;
            }
          EXPECT_EQ(bad, 0) << simd_name(L) << " pool " << p << " N " << N << " K " << K;
        }
    }
}

TEST(FixedOrderGemm, NnMatchesDocumentedOrderOnEverySimdLevelAndPool) {
  for (const Shape& s : kShapes)
    for (float beta : {0.f, 1.f}) {
      const int64_t lda = s.K + 2, ldb = s.N + 5, ldc = s.N + 1;
      const auto A = randn(size_t(s.M * lda), uint32_t(s.M + 3 * s.K)), B = randn(size_t(s.K * ldb), uint32_t(s.N + 9));
      const auto C0 = randn(size_t(s.M * ldc), 4);
      const float alpha = -1.f;
      std::vector<float> want = C0;
      double max_err = 0, max_ref = 0;
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          float acc = 0.f;
          double ref = 0;
          for (int64_t k = 0; k < s.K; ++k) {
            acc = std::fma(A[size_t(m * lda + k)], B[size_t(k * ldb + n)], acc);
            ref += double(A[size_t(m * lda + k)]) * B[size_t(k * ldb + n)];
          }
          want[size_t(m * ldc + n)] = epilogue_def(acc, alpha, beta, C0[size_t(m * ldc + n)]);
          ref = alpha * ref + (beta == 0.f ? 0.0 : beta * double(C0[size_t(m * ldc + n)]));
          max_err = std::max(max_err, std::fabs(ref - want[size_t(m * ldc + n)]));
          max_ref = std::max(max_ref, std::fabs(ref));
        }
      EXPECT_LT(max_err / (max_ref + 1e-30), 1e-5) << s.M << "x" << s.N << "x" << s.K;
      for (SimdLevel L : levels())
        for (int p : {0, 1, 2, 3, 5}) {
          SimdScope scope(L);
          std::vector<float> C = C0;
          if (beta == 0.f)
            for (int64_t m = 0; m < s.M; ++m)
              for (int64_t n = 0; n < s.N; ++n) C[size_t(m * ldc + n)] = kNaN;
          gemm_nn_fixed(p ? &pool_of(p) : nullptr, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(),
                        ldc);
          if (beta == 0.f)
            for (int64_t m = 0; m < s.M; ++m)
              for (int64_t n = s.N; n < ldc; ++n) C[size_t(m * ldc + n)] = C0[size_t(m * ldc + n)];
          EXPECT_TRUE(same_bits(C, want)) << simd_name(L) << " pool " << p << " " << s.M << "x" << s.N << "x" << s.K
                                          << " beta " << beta;
        }
    }
}

namespace {

// A: [n, n] SPD, well conditioned enough for the error checks: X X^T / m + 0.1 I.
std::vector<double> random_spd(int64_t n, uint32_t seed) {
  const int64_t m = n + 8;
  const auto X = randn(size_t(n * m), seed);
  std::vector<double> A(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      double s = 0;
      for (int64_t t = 0; t < m; ++t) s += double(X[size_t(i * m + t)]) * X[size_t(j * m + t)];
      A[size_t(i * n + j)] = A[size_t(j * n + i)] = s / double(m) + (i == j ? 0.1 : 0.0);
    }
  return A;
}

// The documented orders of cholesky_lower_fixed and tri_lower_inverse_fixed, unblocked.
std::vector<double> cholesky_def(std::vector<double> a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = j; i < n; ++i) {
      double s = a[size_t(i * n + j)];
      for (int64_t k = 0; k < j; ++k) s = std::fma(-a[size_t(i * n + k)], a[size_t(j * n + k)], s);
      a[size_t(i * n + j)] = s;
    }
    const double l = std::sqrt(a[size_t(j * n + j)]);
    a[size_t(j * n + j)] = l;
    for (int64_t i = j + 1; i < n; ++i) a[size_t(i * n + j)] /= l;
  }
  return a;
}
std::vector<double> inverse_def(const std::vector<double>& L, int64_t n) {
  std::vector<double> X(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < i; ++c) {
      double t = 0.0;
      for (int64_t k = c / 64 * 64; k < i; ++k) t = std::fma(-L[size_t(i * n + k)], X[size_t(k * n + c)], t);
      X[size_t(i * n + c)] = t / L[size_t(i * n + i)];
    }
    X[size_t(i * n + i)] = 1.0 / L[size_t(i * n + i)];
  }
  return X;
}

}  // namespace

TEST(FixedOrderFactor, CholeskyAndInverseMatchDocumentedOrder) {
  for (int64_t n : {1, 5, 63, 64, 65, 130, 300}) {
    const auto A = random_spd(n, uint32_t(n));
    const auto Lw = cholesky_def(A, n);
    const auto Xw = inverse_def(Lw, n);
    for (SimdLevel L : levels())
      for (int p : {0, 1, 2, 3, 5}) {
        SimdScope scope(L);
        std::vector<double> a = A;
        ASSERT_TRUE(cholesky_lower_fixed(p ? &pool_of(p) : nullptr, n, a.data(), n));
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j <= i; ++j) bad += std::memcmp(&a[size_t(i * n + j)], &Lw[size_t(i * n + j)], 8) != 0;
        EXPECT_EQ(bad, 0) << "cholesky " << simd_name(L) << " pool " << p << " n " << n;
        for (int64_t i = 0; i < n; ++i)  // garbage in the scratch half must not matter
          for (int64_t j = i + 1; j < n; ++j) a[size_t(i * n + j)] = kNaN;
        tri_lower_inverse_fixed(p ? &pool_of(p) : nullptr, n, a.data(), n);
        EXPECT_TRUE(same_bits(a, Xw)) << "inverse " << simd_name(L) << " pool " << p << " n " << n;
      }
    // Accuracy: L L^T = A and X L = I.
    double e1 = 0, e2 = 0, amax = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0, t = 0;
        for (int64_t k = 0; k <= j; ++k) s += Lw[size_t(i * n + k)] * Lw[size_t(j * n + k)];
        for (int64_t k = j; k <= i; ++k) t += Xw[size_t(i * n + k)] * Lw[size_t(k * n + j)];
        e1 = std::max(e1, std::fabs(s - A[size_t(i * n + j)]));
        e2 = std::max(e2, std::fabs(t - (i == j ? 1.0 : 0.0)));
        amax = std::max(amax, std::fabs(A[size_t(i * n + j)]));
      }
    EXPECT_LT(e1 / amax, 1e-12) << n;
    EXPECT_LT(e2, 1e-9) << n;
  }
}

TEST(FixedOrderFactor, CholeskyRejectsIndefinite) {
  for (int64_t n : {3, 100}) {
    auto A = random_spd(n, 5);
    A[size_t((n - 1) * n + n - 1)] = -1.0;
    EXPECT_FALSE(cholesky_lower_fixed(&pool_of(2), n, A.data(), n)) << n;
    A = random_spd(n, 5);
    A[size_t(n + 1)] = kNaN;
    EXPECT_FALSE(cholesky_lower_fixed(nullptr, n, A.data(), n)) << n;
  }
}

namespace {

// Correlated activations [rows, K] (a few dominant directions), like a layer's inputs.
std::vector<float> activations(int64_t rows, int64_t K, uint32_t seed) {
  auto X = randn(size_t(rows * K), seed);
  const auto d = randn(size_t(4 * K), seed + 1);
  const auto z = randn(size_t(4 * rows), seed + 2);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t k = 0; k < K; ++k) {
      float v = X[size_t(t * K + k)] * (0.2f + float(k % 5));
      for (int r = 0; r < 4; ++r) v += 3.f * z[size_t(4 * t + r)] * d[size_t(r * K + k)];
      X[size_t(t * K + k)] = v;
    }
  return X;
}

std::vector<float> hessian(ThreadPool& pool, int64_t K, const std::vector<std::vector<float>>& batches, int64_t T) {
  gptq::cpu::HessianAccumulator acc(pool, K);
  for (const auto& b : batches) acc.add_batch(b.data(), int64_t(b.size()) / (T * K), T);
  return acc.take();
}

}  // namespace

TEST(FixedOrderHessian, IdenticalForAnyPoolAndSimdLevelHash) {
  for (int64_t K : {384, 1000}) {
    const int64_t T = 97;
    std::vector<std::vector<float>> batches;
    for (int b = 0; b < 3; ++b) batches.push_back(activations((b + 1) * T, K, uint32_t(K + b)));  // 1, 2, 3 samples
    const auto H1 = hessian(pool_of(1), K, batches, T);
    for (int p : {2, 3, 7}) EXPECT_TRUE(same_bits(hessian(pool_of(p), K, batches, T), H1)) << "K " << K << " pool " << p;
    for (SimdLevel L : levels()) {
      SimdScope scope(L);
      EXPECT_TRUE(same_bits(hessian(pool_of(2), K, batches, T), H1)) << "K " << K << " " << simd_name(L);
    }
    // Symmetric, and the documented running average within fp32 accuracy of a double sum.
    double max_err = 0, max_ref = 0;
    for (int64_t i = 0; i < K; i += 7)
      for (int64_t j = 0; j < K; ++j) {
        EXPECT_EQ(H1[size_t(i * K + j)], H1[size_t(j * K + i)]);
        double s = 0;
        for (const auto& b : batches)
          for (size_t t = 0; t < b.size() / size_t(K); ++t) s += double(b[t * size_t(K) + size_t(i)]) * b[t * size_t(K) + size_t(j)];
        s *= 2.0 / 6.0;
        max_err = std::max(max_err, std::fabs(s - H1[size_t(i * K + j)]));
        max_ref = std::max(max_ref, std::fabs(s));
      }
    EXPECT_LT(max_err / max_ref, 1e-5) << K;
    std::cout << "[ hash     ] hessian K " << K << " " << std::hex << fnv1a(H1) << std::dec << "\n";
  }
}

TEST(FixedOrderGptq, IdenticalForAnyPoolAndSimdLevelHash) {
  const int64_t K = 384, N = 96, T = 128;
  std::vector<std::vector<float>> batches;
  for (int b = 0; b < 4; ++b) batches.push_back(activations(2 * T, K, uint32_t(50 + b)));
  const auto H = hessian(pool_of(2), K, batches, T);
  const auto W = randn(size_t(N * K), 77, 0.05f);
  for (bool act : {false, true})
    for (int G : {128, -1}) {
      quant::QuantSpec spec;
      spec.desc_act = act;
      spec.group_size = G;
      const quant::QuantResult r1 = quant::gptq_quantize(pool_of(1), W.data(), H.data(), N, K, spec);
      auto check = [&](const quant::QuantResult& r, const std::string& what) {
        EXPECT_TRUE(same_bits(r.codes, r1.codes)) << what;
        EXPECT_TRUE(same_bits(r.scales, r1.scales)) << what;
        EXPECT_TRUE(same_bits(r.zeros, r1.zeros)) << what;
        EXPECT_TRUE(same_bits(r.g_idx, r1.g_idx)) << what;
        EXPECT_TRUE(same_bits(r.Wq, r1.Wq)) << what;
        EXPECT_EQ(r.loss, r1.loss) << what;
      };
      const std::string tag = std::string("act ") + (act ? "1" : "0") + " G " + std::to_string(G);
      for (int p : {2, 3, 7}) check(quant::gptq_quantize(pool_of(p), W.data(), H.data(), N, K, spec), tag + " pool " + std::to_string(p));
      for (SimdLevel L : levels()) {
        SimdScope scope(L);
        check(quant::gptq_quantize(pool_of(3), W.data(), H.data(), N, K, spec), tag + " " + simd_name(L));
      }
      std::cout << "[ hash     ] gptq " << tag << " " << std::hex
                << fnv1a(r1.Wq, fnv1a(r1.zeros, fnv1a(r1.scales, fnv1a(r1.codes)))) << std::dec << "\n";
    }
}
