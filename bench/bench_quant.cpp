// Kernel workbench for src/quant and the CPU qgemm (Google Benchmark; never asserts).
//   qgemm decode  (T = 1):   GB/s of checkpoint bytes (qweight + qzeros + scales) per call
//   qgemm prefill (T = 512): GFLOP/s, 2*T*K*N
//   gptq_quantize:           seconds per layer (factorization + column loop)
//   Hessian accumulation:    GFLOP/s counted as K*(K+1)*tokens (the syrk count), ours vs one
//                            cblas_ssyrk call with OpenBLAS's own threads
// Run: ./gptq_bench_kernels --benchmark_filter=Quant
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/qgemm.h"
#include "core/thread_pool.h"
#include "io/gptq_format.h"
#include "test_pool.h"
#include "quant/gptq.h"
#include "backend/cpu/hessian.h"

using namespace gptq::quant;
using namespace gptq::cpu;

namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A random 4-bit checkpoint layer [K in, N out]; act_order shuffles g_idx.
PackedQuant random_layer(int64_t K, int64_t N, int bits, int G, bool act_order) {
  std::mt19937 rng(1);
  const int64_t ng = num_groups(K, G), Gr = resolve_group_size(K, G);
  std::vector<uint8_t> codes(size_t(N * K));
  for (auto& q : codes) q = uint8_t(rng() % (1u << bits));
  std::vector<float> scales(size_t(ng * N), 0.01f);
  std::vector<int32_t> zeros(size_t(ng * N), 1 << (bits - 1)), g_idx(static_cast<size_t>(K));
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (act_order) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < K; ++i) g_idx[size_t(perm[size_t(i)])] = int32_t(i / Gr);
  return pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, bits, G, K, N,
                        QuantFormat::kGptqV1);
}

QgemmIsa isa_arg(int64_t a) { return a == 0 ? QgemmIsa::kAuto : a == 1 ? QgemmIsa::kScalar : QgemmIsa::kAvx2; }

// Args: K, N, bits, act_order, isa (0 auto, 1 scalar, 2 avx2)
void BM_QuantQgemmDecode(benchmark::State& state) {
  openblas_set_num_threads(1);
  const int64_t K = state.range(0), N = state.range(1);
  const PackedQuant p = random_layer(K, N, int(state.range(2)), 128, state.range(3) != 0);
  const PreparedQuantMatrix w = prepare(p.view(), test_pool());
  QgemmOptions opt;
  opt.isa = isa_arg(state.range(4));
  if (!qgemm_isa_supported(opt.isa)) {
    state.SkipWithError("ISA not supported");
    return;
  }
  const auto x = randn(size_t(K), 2);
  std::vector<float> y(static_cast<size_t>(N));
  for (auto _ : state) {
    qgemm(test_pool(), w, x.data(), 1, y.data(), opt);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = double(w.checkpoint_bytes());
  state.counters["GB/s"] = benchmark::Counter(bytes * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(isa_name(opt.isa == QgemmIsa::kAuto ? qgemm_best_isa() : opt.isa));
}
BENCHMARK(BM_QuantQgemmDecode)
    ->Args({4096, 4096, 4, 0, 0})
    ->Args({4096, 4096, 4, 1, 0})
    ->Args({4096, 4096, 3, 0, 0})
    ->Args({4096, 4096, 2, 0, 0})
    ->Args({4096, 4096, 8, 0, 0})
    ->Args({4096, 4096, 4, 0, 1})
    ->Args({11008, 4096, 4, 0, 0})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: T, K, N, max_direct_t
void BM_QuantQgemmPrefill(benchmark::State& state) {
  openblas_set_num_threads(1);
  const int64_t T = state.range(0), K = state.range(1), N = state.range(2);
  const PackedQuant p = random_layer(K, N, 4, 128, false);
  const PreparedQuantMatrix w = prepare(p.view(), test_pool());
  QgemmOptions opt;
  opt.max_direct_t = state.range(3);
  const auto x = randn(size_t(T * K), 3);
  std::vector<float> y(size_t(T * N));
  for (auto _ : state) {
    qgemm(test_pool(), w, x.data(), T, y.data(), opt);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(T * K * N) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}
// The default max_direct_t (64) comes from these pairs: decode kernel vs dequant+sgemm.
BENCHMARK(BM_QuantQgemmPrefill)
    ->Args({512, 4096, 4096, 64})
    ->Args({4, 4096, 4096, 64})
    ->Args({16, 4096, 4096, 1000})
    ->Args({16, 4096, 4096, 0})
    ->Args({64, 4096, 4096, 1000})
    ->Args({64, 4096, 4096, 0})
    ->Args({128, 4096, 4096, 1000})
    ->Args({128, 4096, 4096, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// fp32 sgemm over the same shape, for the prefill roofline on this machine.
void BM_QuantSgemmReference(benchmark::State& state) {
  openblas_set_num_threads(test_pool().size());
  const int64_t T = state.range(0), K = state.range(1), N = state.range(2);
  const auto x = randn(size_t(T * K), 3), W = randn(size_t(N * K), 4);
  std::vector<float> y(size_t(T * N));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(N), int(K), 1.f, x.data(), int(K), W.data(),
                int(K), 0.f, y.data(), int(N));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(T * K * N) * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  openblas_set_num_threads(1);
}
BENCHMARK(BM_QuantSgemmReference)->Args({512, 4096, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: K (inputs), N (outputs), act_order
void BM_QuantGptqQuantize(benchmark::State& state) {
  openblas_set_num_threads(1);
  const int64_t K = state.range(0), N = state.range(1), n = 2 * K;
  const auto X = randn(size_t(n * K), 5);
  gptq::cpu::HessianAccumulator acc(test_pool(), K);
  acc.add_batch(X.data(), 1, n);
  const auto H = acc.take();
  const auto W = randn(size_t(N * K), 6);
  QuantSpec spec;
  spec.desc_act = state.range(2) != 0;
  double factor = 0, solve = 0;
  for (auto _ : state) {
    const QuantResult r = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
    factor += r.seconds_factor;
    solve += r.seconds_solve;
    benchmark::DoNotOptimize(r.codes.data());
  }
  state.counters["factor_s"] = factor / double(state.iterations());
  state.counters["solve_s"] = solve / double(state.iterations());
}
BENCHMARK(BM_QuantGptqQuantize)
    ->Args({1024, 1024, 0})
    ->Args({1024, 4096, 0})
    ->Args({1024, 4096, 1})
    ->Args({4096, 4096, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: K, tokens per batch
void BM_QuantHessian(benchmark::State& state) {
  openblas_set_num_threads(1);
  const int64_t K = state.range(0), T = state.range(1);
  const auto X = randn(size_t(T * K), 7);
  gptq::cpu::HessianAccumulator acc(test_pool(), K);
  for (auto _ : state) acc.add_batch(X.data(), 1, T);
  state.counters["GFLOP/s"] = benchmark::Counter(double(K) * double(K + 1) * double(T) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_QuantHessian)->Args({4096, 2048})->Args({11008, 2048})->Unit(benchmark::kMillisecond)->UseRealTime();

// The alternative we did not take: one cblas_ssyrk call, OpenBLAS threading itself.
void BM_QuantHessianSsyrk(benchmark::State& state) {
  openblas_set_num_threads(test_pool().size());
  const int64_t K = state.range(0), T = state.range(1);
  const auto X = randn(size_t(T * K), 7);
  std::vector<float> H(size_t(K * K), 0.f);
  for (auto _ : state) {
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(K), int(T), 1.f, X.data(), int(K), 1.f, H.data(), int(K));
    benchmark::DoNotOptimize(H.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(double(K) * double(K + 1) * double(T) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  openblas_set_num_threads(1);
}
BENCHMARK(BM_QuantHessianSsyrk)->Args({4096, 2048})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

// All bench/*.cpp files link into one binary; a weak main lets whichever file owns the real
// BENCHMARK_MAIN() win without a duplicate-symbol error, and keeps this file runnable alone.
__attribute__((weak)) int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
