// The quantize pipeline's host work per module (issue 11), at Llama-2-7B's shapes: what runs on
// the CPU between the GPU solver's calls. Google Benchmark; never asserts.
//   PackResult:    quant::pack_result (qweight, qzeros, fp16 scales) of a 4-bit g128 result
//   Dequantize:    quant::dequantize of the packed matrix (the CPU path's quantized weights)
//   CudaLayout:    cpu::prepare + cuda::make_gptq_layout (the CUDA backend's gptq_weight, host part);
//                  CudaLayoutOnly: make_gptq_layout alone
// Args: N, K, pooled (0: on the calling thread, 1: on the test pool, GPTQ_THREADS).
// Run: ./gptq_bench_kernels --benchmark_filter=QuantHost
#include <benchmark/benchmark.h>

#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/qgemm.h"
#include "io/gptq_format.h"
#include "quant/gptq.h"
#include "quant/gptq_plan.h"
#include "test_pool.h"
#if defined(GPTQ_WITH_CUDA)
#include "backend/cuda/gptq_kernels.h"
#endif

using namespace gptq::quant;

namespace {

// A random 4-bit g128 act-static result (g_idx = k / G, codes in [0, 15]).
QuantResult random_result(int64_t N, int64_t K) {
  QuantSpec spec;
  spec.desc_act = true;
  spec.static_groups = true;
  QuantResult r = empty_result(N, K, spec);
  std::mt19937 rng(7);
  for (auto& q : r.codes) q = uint8_t(rng() % 16);
  for (auto& s : r.scales) s = 0.001f * float(1 + rng() % 100);
  for (auto& z : r.zeros) z = 8;
  for (int64_t k = 0; k < K; ++k) r.g_idx[size_t(k)] = int32_t(k / 128);
  return r;
}

void BM_QuantHostPackResult(benchmark::State& state) {
  const QuantResult r = random_result(state.range(0), state.range(1));
  for (auto _ : state) {
    PackedQuant p = pack_result(r, QuantFormat::kGptqV1, nullptr, state.range(2) ? &test_pool() : nullptr);
    benchmark::DoNotOptimize(p.qweight.data());
  }
}
BENCHMARK(BM_QuantHostPackResult)->ArgsProduct({{4096, 11008}, {4096}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_QuantHostDequantize(benchmark::State& state) {
  const PackedQuant p = pack_result(random_result(state.range(0), state.range(1)), QuantFormat::kGptqV1);
  for (auto _ : state) {
    std::vector<float> W = dequantize(p.view(), state.range(2) ? &test_pool() : nullptr);
    benchmark::DoNotOptimize(W.data());
  }
}
BENCHMARK(BM_QuantHostDequantize)->ArgsProduct({{4096, 11008}, {4096}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

#if defined(GPTQ_WITH_CUDA)
void BM_QuantHostCudaLayout(benchmark::State& state) {
  const PackedQuant p = pack_result(random_result(state.range(0), state.range(1)), QuantFormat::kGptqV1);
  for (auto _ : state) {
    const gptq::cpu::PreparedQuantMatrix w = gptq::cpu::prepare(p.view(), test_pool());
    const gptq::cuda::GptqLayout L = gptq::cuda::make_gptq_layout(w);
    benchmark::DoNotOptimize(L.qweight.data());
  }
}
BENCHMARK(BM_QuantHostCudaLayout)->Args({4096, 4096, 1})->Args({11008, 4096, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

// make_gptq_layout alone (the prepared matrix made once).
void BM_QuantHostCudaLayoutOnly(benchmark::State& state) {
  const PackedQuant p = pack_result(random_result(state.range(0), state.range(1)), QuantFormat::kGptqV1);
  const gptq::cpu::PreparedQuantMatrix w = gptq::cpu::prepare(p.view(), test_pool());
  for (auto _ : state) {
    const gptq::cuda::GptqLayout L = gptq::cuda::make_gptq_layout(w);
    benchmark::DoNotOptimize(L.qweight.data());
  }
}
BENCHMARK(BM_QuantHostCudaLayoutOnly)->Args({4096, 4096})->Args({11008, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();
#endif

}  // namespace
