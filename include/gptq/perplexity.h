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
  // Windows per forward call; 0: as many as keep a batch's logits, KV cache and activations (both
  // models' with a base) under ~256 MiB, at least 1. The numbers do not depend on it.
  int64_t batch = 0;
};

// KL(P_base || P_model) of the next-token distributions, as llama.cpp's perplexity tool reports it,
// over every predicted token of the windows (computed in double from the log-softmax of the logits).
struct KlDivergence {
  double mean = 0;            // mean over tokens
  double p99 = 0;             // 99th percentile of the per-token values (linear between closest ranks)
  double top1_agreement = 0;  // fraction of tokens where the two models' argmax agree
  int64_t tokens = 0;         // predicted tokens
  double base_ppl = 0, base_mean_nll = 0;  // the base model's perplexity on the same windows
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
  int64_t batch = 0;          // windows per forward call
  bool has_kl = false;        // a base model was given
  KlDivergence kl;
};

// With a base model, also runs it on the same windows (per batch of windows: the base's logits, then
// the model's; never all logits of the text) and fills kl. Throws gptq::Error when the two
// vocabularies differ.
PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& opts,
                            Model* base = nullptr);

// The p-quantile (0..1) of values: linear between the closest ranks (numpy's default).
double quantile(std::vector<double> values, double p);

}  // namespace gptq
