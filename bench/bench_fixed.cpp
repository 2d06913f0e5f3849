// Workbench for the fixed-order kernels (backend/cpu/fixed_gemm.h) against what they replaced
// (Google Benchmark; never asserts). Impl argument: 0 ours, 1 OpenBLAS single-threaded inside our
// pool (as the code used it: one call per tile and thread), 2 one OpenBLAS call with
// test_pool().size() OpenBLAS threads.
//   gemm_nt      M = 1024 tokens on the calibration shapes; GFLOP/s = 2*M*N*K
//   Hessian      add_batch of 1024 tokens, K = 384 / 1024; GFLOP/s counted K*(K+1)*tokens
//                (the syrk count); impl 1 is the previous HessianAccumulator code, kept here
//   factor       Cholesky + triangular inverse in double, K = 1024 / 4096; GFLOP/s = 2*K^3/3
// Run: ./gptq_bench_kernels --benchmark_filter=Fixed --benchmark_repetitions=5
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <iterator>
#include <random>
#include <vector>

#include "backend/cpu/fixed_gemm.h"
#include "core/thread_pool.h"
#include "backend/cpu/hessian.h"
#include "test_pool.h"

extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info);
}

namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

const char* impl_name(int64_t i) { return i == 0 ? "fixed" : i == 1 ? "openblas-1t-in-pool" : "openblas-nt"; }

// C[M, N] = A[M, K] B[N, K]^T
void BM_FixedGemmNt(benchmark::State& state) {
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2), impl = state.range(3);
  const auto A = randn(size_t(M * K), 1), B = randn(size_t(N * K), 2);
  std::vector<float> C(size_t(M * N));
  gptq::ThreadPool& pool = test_pool();
  openblas_set_num_threads(impl == 2 ? pool.size() : 1);
  for (auto _ : state) {
    if (impl == 0) {
      gptq::cpu::gemm_nt_fixed(&pool, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C.data(), N);
    } else if (impl == 1) {
      pool.parallel_for(0, size_t(M), [&](size_t m0, size_t m1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m1 - m0), int(N), int(K), 1.f, A.data() + m0 * K,
                    int(K), B.data(), int(K), 0.f, C.data() + m0 * N, int(N));
      });
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.f, A.data(), int(K), B.data(),
                  int(K), 0.f, C.data(), int(N));
    }
    benchmark::DoNotOptimize(C.data());
  }
  openblas_set_num_threads(1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(M * N * K) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(impl_name(impl));
}
BENCHMARK(BM_FixedGemmNt)
    ->ArgsProduct({{1024}, {640}, {384}, {0, 1, 2}})
    ->ArgsProduct({{1024}, {1024}, {384}, {0, 1, 2}})
    ->ArgsProduct({{1024}, {384}, {1024}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The HessianAccumulator::add_batch this branch replaced (cblas tiles sized from the thread
// count, tokens chunked for small K), kept to compare against.
class OldHessian {
 public:
  OldHessian(gptq::ThreadPool& pool, int64_t K) : pool_(pool), K_(K), H_(size_t(K * K), 0.f) {}
  void add_batch(const float* x, int64_t samples, int64_t T) {
    constexpr int64_t kTileEdges[] = {512, 384, 256, 128};
    const int64_t rows = samples * T, K = K_;
    const float beta = float(double(n_) / double(n_ + samples));
    n_ += samples;
    const float alpha = float(2.0 / double(n_));
    const int64_t threads = pool_.size();
    int64_t tile = kTileEdges[std::size(kTileEdges) - 1];
    for (int64_t e : kTileEdges) {
      const int64_t nb = (K + e - 1) / e;
      if (nb * (nb + 1) / 2 >= 4 * threads) {
        tile = e;
        break;
      }
    }
    const int64_t nb = (K + tile - 1) / tile;
    std::vector<std::pair<int64_t, int64_t>> tiles;
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = i; j < nb; ++j) tiles.emplace_back(i, j);
    int64_t chunks = 1;
    if (int64_t(tiles.size()) < 2 * threads) {
      chunks = (2 * threads + int64_t(tiles.size()) - 1) / int64_t(tiles.size());
      chunks = std::min({chunks, rows / 256, (int64_t(1) << 28) / (K * K * 4) + 1});
      chunks = std::max<int64_t>(chunks, 1);
    }
    if (chunks > 1) scratch_.resize(size_t((chunks - 1) * K * K));
    const int64_t n_items = int64_t(tiles.size()) * chunks;
    openblas_set_num_threads(1);
    pool_.parallel_for(0, size_t(n_items), [&](size_t a, size_t b) {
      for (int64_t item = int64_t(a); item < int64_t(b); ++item) {
        const int64_t c = item / int64_t(tiles.size());
        const auto [bi, bj] = tiles[size_t(item % int64_t(tiles.size()))];
        const int64_t i0 = bi * tile, j0 = bj * tile;
        const int64_t mi = std::min(tile, K - i0), mj = std::min(tile, K - j0);
        const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
        float* dst = c == 0 ? H_.data() : scratch_.data() + (c - 1) * K * K;
        if (bi == bj)
          cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(mi), int(r1 - r0), alpha, x + r0 * K + i0, int(K),
                      c == 0 ? beta : 0.f, dst + i0 * K + i0, int(K));
        else
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(mi), int(mj), int(r1 - r0), alpha,
                      x + r0 * K + i0, int(K), x + r0 * K + j0, int(K), c == 0 ? beta : 0.f, dst + i0 * K + j0,
                      int(K));
      }
    });
    if (chunks > 1)
      pool_.parallel_for(0, size_t(K), [&](size_t i0, size_t i1) {
        for (int64_t i = int64_t(i0); i < int64_t(i1); ++i)
          for (int64_t c = 1; c < chunks; ++c) {
            const float* src = scratch_.data() + (c - 1) * K * K + i * K;
            float* h = H_.data() + i * K;
            for (int64_t j = i; j < K; ++j) h[j] += src[j];
          }
      });
  }

 private:
  gptq::ThreadPool& pool_;
  int64_t K_, n_ = 0;
  std::vector<float> H_, scratch_;
};

// Args: K, tokens per batch, impl (0 fixed, 1 old)
void BM_FixedHessian(benchmark::State& state) {
  const int64_t K = state.range(0), T = state.range(1), impl = state.range(2);
  const auto X = randn(size_t(T * K), 7);
  gptq::cpu::HessianAccumulator acc(test_pool(), K);
  OldHessian old(test_pool(), K);
  for (auto _ : state) {
    if (impl == 0)
      acc.add_batch(X.data(), 1, T);
    else
      old.add_batch(X.data(), 1, T);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(double(K) * double(K + 1) * double(T) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.SetLabel(impl == 0 ? "fixed" : "old (openblas tiles)");
}
BENCHMARK(BM_FixedHessian)
    ->ArgsProduct({{384, 1024}, {1024}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Cholesky + triangular inverse of an SPD K x K matrix. Args: K, impl (0 fixed, 2 OpenBLAS
// dpotrf_ + dtrtri_ with pool-size threads, as gptq.cpp called them).
void BM_FixedFactor(benchmark::State& state) {
  const int64_t K = state.range(0), impl = state.range(1);
  const int64_t m = K + 64;
  const auto X = randn(size_t(K * m), 9);
  std::vector<float> Hf(size_t(K * K));
  gptq::cpu::syrk_upper_fixed(&test_pool(), K, m, 1.f / float(m), X.data(), m, 0.f, Hf.data(), K);
  std::vector<double> H(size_t(K * K));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j) H[size_t(i * K + j)] = H[size_t(j * K + i)] = Hf[size_t(i * K + j)] + (i == j ? 0.01 : 0.0);
  std::vector<double> a(H.size());
  openblas_set_num_threads(test_pool().size());
  for (auto _ : state) {
    state.PauseTiming();
    a = H;
    state.ResumeTiming();
    if (impl == 0) {
      if (!gptq::cpu::cholesky_lower_fixed(&test_pool(), K, a.data(), K)) state.SkipWithError("not SPD");
      gptq::cpu::tri_lower_inverse_fixed(&test_pool(), K, a.data(), K);
    } else {
      const int n = int(K);
      int info = 0;
      dpotrf_("L", &n, a.data(), &n, &info);
      dtrtri_("L", "N", &n, a.data(), &n, &info);
      if (info != 0) state.SkipWithError("not SPD");
    }
    benchmark::DoNotOptimize(a.data());
  }
  openblas_set_num_threads(1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(K) * double(K) * double(K) / 3.0 * double(state.iterations()) / 1e9,
                         benchmark::Counter::kIsRate);
  state.SetLabel(impl == 0 ? "fixed" : "openblas dpotrf+dtrtri");
}
BENCHMARK(BM_FixedFactor)->ArgsProduct({{1024, 4096}, {0, 2}})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
