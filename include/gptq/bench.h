// End-to-end speed measurements, the way llama-bench takes them: prefill of n_prompt tokens
// (ppN) and generation of n_gen tokens one at a time (tgN), each repeated, after a warm-up run.
// Batched decode (tgN @ bB): B sequences, each prefilled with a short prompt (not timed), then
// n_gen steps of one forward over all B sequences; its speed is the total tokens/s, B × n_gen / time.
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

// Decode of `batch` sequences together.
struct BatchDecodeStats {
  int batch = 1;
  int64_t tokens = 0;           // tokens decoded in each repeat (batch × n_gen)
  std::vector<double> seconds;  // time of each repeat
  SpeedStats speed;             // total tokens/s of each repeat: tokens / seconds
};

struct BenchResult {
  SpeedStats prefill, decode;  // decode: one sequence (batch size 1), when batches holds 1
  std::vector<BatchDecodeStats> batches;  // one per batch size asked for, in order
  int n_prompt = 0, n_gen = 0, repeats = 0, threads = 0;
  size_t memory_bytes = 0;      // peak resident memory of the process after the runs
  size_t bytes_per_token = 0;   // weight bytes read to decode one token
};

// batches: the decode batch sizes to measure ({1}: today's single-sequence tgN).
BenchResult run_bench(Model& model, int n_prompt, int n_gen, int repeats, const std::vector<int>& batches = {1});

// Sustained read bandwidth of main memory, bytes/s: all threads sum a buffer much larger than the
// caches; best of `repeats`.
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int repeats = 5);

}  // namespace gptq
