// End-to-end speed measurements, the way llama-bench takes them: prefill of n_prompt tokens
// (ppN) and generation of n_gen tokens one at a time (tgN), each repeated, after a warm-up run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gptq/model.h"

namespace gptq {

struct SpeedStats {
  double mean = 0, sd = 0;  // tokens per second over repeats
  std::vector<double> samples;
};

struct BenchResult {
  SpeedStats prefill, decode;
  int n_prompt = 0, n_gen = 0, repeats = 0, threads = 0;
  size_t memory_bytes = 0;      // peak resident memory of the process after the runs
  size_t bytes_per_token = 0;   // weight bytes read to decode one token
};

BenchResult run_bench(Model& model, int n_prompt, int n_gen, int repeats);

// Sustained read bandwidth of main memory, bytes/s: all threads sum a buffer much larger than the
// caches; best of `repeats`.
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int repeats = 5);

}  // namespace gptq
