#include "gptq/bench.h"

#include <chrono>
#include <cmath>
#include <random>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/simd_kernels.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq {

namespace {

using Clock = std::chrono::steady_clock;

SpeedStats stats(std::vector<double> s) {
  SpeedStats r;
  r.samples = std::move(s);
  if (r.samples.empty()) return r;
  for (double v : r.samples) r.mean += v;
  r.mean /= double(r.samples.size());
  if (r.samples.size() > 1) {
    double var = 0;
    for (double v : r.samples) var += (v - r.mean) * (v - r.mean);
    r.sd = std::sqrt(var / double(r.samples.size() - 1));
  }
  return r;
}

}  // namespace

BenchResult run_bench(Model& model, int n_prompt, int n_gen, int repeats) {
  BenchResult r;
  r.n_prompt = n_prompt;
  r.n_gen = n_gen;
  r.repeats = repeats;
  r.threads = model.threads();
  r.bytes_per_token = model.bytes_per_token();
  if (repeats < 1) fail("bench needs at least one repeat");
  if (n_prompt + 1 > model.context_length() || n_gen + 1 > model.context_length())
    fail("bench sizes -p ", n_prompt, " / -n ", n_gen, " exceed the model's context of ", model.context_length());
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(model.vocab_size() - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(std::max(n_prompt, 1)));
  for (auto& t : prompt) t = dist(rng);
  const int32_t first = model.config().bos_token_id >= 0 ? model.config().bos_token_id : 0;
  auto cache = model.new_cache();
  std::vector<float> logits;

  auto run_pp = [&]() {
    cache->clear();
    const auto t0 = Clock::now();
    model.forward(*cache, prompt.data(), n_prompt, false, logits);
    return double(n_prompt) / std::chrono::duration<double>(Clock::now() - t0).count();
  };
  auto run_tg = [&](int n) {
    cache->clear();
    int32_t tok = first;
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      model.forward(*cache, &tok, 1, false, logits);
      tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    return double(n) / std::chrono::duration<double>(Clock::now() - t0).count();
  };
  // Warm-up: page in the weights, size the buffers.
  if (n_prompt > 0) run_pp();
  if (n_gen > 0) run_tg(std::min(n_gen, 8));
  std::vector<double> pp, tg;
  for (int i = 0; i < repeats; ++i) {
    if (n_prompt > 0) pp.push_back(run_pp());
    if (n_gen > 0) tg.push_back(run_tg(n_gen));
  }
  r.prefill = stats(pp);
  r.decode = stats(tg);
  r.memory_bytes = peak_rss_bytes();
  return r;
}

double measure_read_bandwidth(int threads, size_t bytes, int repeats) {
  ThreadPool pool(threads);
  const size_t n = bytes / sizeof(float);
  std::vector<float> buf(n);
  pool.parallel_for(0, n, [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) buf[i] = float(i & 7);
  }, 1 << 16);
  double best = 0;
  const bool simd = cpu::active_simd() >= cpu::SimdLevel::kAvx2;
  std::vector<double> sink(static_cast<size_t>(pool.size()));
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    pool.run([&](int t, int nt) {
      const size_t a = n * size_t(t) / size_t(nt), b = n * size_t(t + 1) / size_t(nt);
      double s = 0;
      if (simd) {
        // dot with itself reads the buffer once (both operands are the same cache lines)
        s = cpu::dot_f32_avx2(buf.data() + a, buf.data() + a, int64_t(b - a));
      } else {
        for (size_t i = a; i < b; ++i) s += buf[i];
      }
      sink[size_t(t)] = s;
    });
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, double(n * sizeof(float)) / sec);
  }
  volatile double keep = sink[0];
  (void)keep;
  return best;
}

}  // namespace gptq
