// Perplexity with the GPTQ/AutoGPTQ protocol (../shared/golden/README.md): a text tokenized once
// (BOS at the start only), non-overlapping windows of ctx tokens (the last partial one dropped),
// ppl = exp(mean over windows of the mean NLL of the ctx-1 predicted tokens).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gptq/model.h"

namespace gptq {

// WikiText-2 as GPTQ evaluates it: rows of wiki.test.raw (each line with its newline; whitespace-only
// lines as empty rows) joined by "\n\n".
std::string wikitext_join(const std::string& raw);

struct PerplexityOptions {
  int64_t ctx = 0;            // window length; 0: the model's context length
  int64_t window_begin = 0;   // evaluate windows [window_begin, window_end)
  int64_t window_end = -1;    // -1: all complete windows
  bool progress = true;       // progress bar with ETA on stderr
};

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t windows = 0;        // windows evaluated
  int64_t total_windows = 0;  // complete windows in the text
  int64_t tokens = 0;         // tokens in the whole text
  int64_t ctx = 0;
  double seconds = 0;
  std::vector<double> window_nll;  // mean NLL of each evaluated window
};

PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& opts);

std::string sha256_hex(const std::string& bytes);

}  // namespace gptq
