#include "gptq/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "backend/backend.h"
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

BenchResult run_bench(Model& model, int n_prompt, int n_gen, int repeats, const std::vector<int>& batches) {
  BenchResult r;
  r.n_prompt = n_prompt;
  r.n_gen = n_gen;
  r.repeats = repeats;
  r.threads = model.threads();
  r.bytes_per_token = model.bytes_per_token();
  constexpr int kDecodePrompt = 8;  // tokens each decode sequence is prefilled with
  if (repeats < 1) fail("bench needs at least one repeat");
  if (n_prompt < 0 || n_gen < 0) fail("bench sizes -p ", n_prompt, " / -n ", n_gen, " must be >= 0");
  if (int64_t(n_prompt) + 1 > model.context_length() || int64_t(kDecodePrompt) + n_gen > model.context_length())
    fail("bench sizes -p ", n_prompt, " / -n ", n_gen, " exceed the model's context of ", model.context_length());
  for (int b : batches)
    if (b < 1) fail("bench batch sizes must be at least 1, got ", b);
  model.check_forward_memory(std::max(n_prompt, 1), 1);
  if (n_gen > 0 && !batches.empty()) {
    const int64_t B = *std::max_element(batches.begin(), batches.end());
    model.check_forward_memory(B * kDecodePrompt, B);  // the decode tests' prefill
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(model.vocab_size() - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(std::max(n_prompt, 1)));
  for (auto& t : prompt) t = dist(rng);
  const int32_t bos = model.config().bos_token_id >= 0 ? model.config().bos_token_id : 0;
  auto cache = model.new_cache();
  std::vector<float> logits;
  // Clocks are read with the device idle: nothing queued before t0 counts, everything queued
  // before the end does (forward() already waits for its logits; this says so).
  Backend& be = model.backend();
  auto now = [&]() {
    be.synchronize();
    return Clock::now();
  };

  auto run_pp = [&]() {
    cache->clear();
    const auto t0 = now();
    model.forward(*cache, prompt.data(), n_prompt, false, logits);
    return double(n_prompt) / std::chrono::duration<double>(now() - t0).count();
  };
  // B sequences, each prefilled with BOS and random tokens (not timed), then n steps of one forward
  // over all of them, each feeding back its argmax. Returns the seconds of the steps and counts the
  // tokens they decoded.
  auto run_tg = [&](int B, int n, int64_t* tokens) {
    cache->clear();
    Batch prefill;
    std::vector<int32_t> p(kDecodePrompt);
    for (int b = 0; b < B; ++b) {
      p[0] = bos;
      for (size_t k = 1; k < p.size(); ++k) p[k] = dist(rng);
      prefill.add(cache->add_sequence(), p.data(), int64_t(p.size()), Logits::kLast);
    }
    model.forward(prefill, *cache, logits);
    Batch step = prefill;
    const size_t V = size_t(model.vocab_size());
    *tokens = 0;
    const auto t0 = now();
    for (int i = 0; i < n; ++i) {
      for (size_t b = 0; b < step.entries.size(); ++b) {
        const float* row = logits.data() + b * V;
        step.entries[b].tokens = {int32_t(std::max_element(row, row + V) - row)};
      }
      model.forward(step, *cache, logits);
      *tokens += step.n_tokens();
    }
    return std::chrono::duration<double>(now() - t0).count();
  };
  // Each test starts with a warm-up run: page in the weights, size the buffers.
  if (n_prompt > 0) {
    run_pp();
    std::vector<double> pp;
    for (int i = 0; i < repeats; ++i) pp.push_back(run_pp());
    r.prefill = stats(pp);
  }
  if (n_gen > 0) {
    for (int B : batches) {
      BatchDecodeStats d;
      d.batch = B;
      int64_t warm_tokens = 0;
      run_tg(B, std::min(n_gen, 8), &warm_tokens);
      std::vector<double> tps;
      for (int i = 0; i < repeats; ++i) {
        d.seconds.push_back(run_tg(B, n_gen, &d.tokens));
        tps.push_back(double(d.tokens) / d.seconds.back());
      }
      d.speed = stats(tps);
      if (B == 1) r.decode = d.speed;
      r.batches.push_back(std::move(d));
    }
  }
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
