// Sampling and text generation.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "gptq/model.h"
#include "gptq/tokenizer.h"

namespace gptq {

struct SamplingParams {
  float temperature = 0.8f;  // 0: greedy (argmax)
  int top_k = 40;            // 0: off
  float top_p = 0.95f;       // 1: off
  float min_p = 0.05f;       // 0: off
  float repetition_penalty = 1.0f;  // 1: off (HF rule: positive logits divided, negative multiplied)
  int repeat_last_n = 64;           // how many recent tokens the penalty looks at (-1: all)
  // OpenAI's penalties over the tokens this sampler has drawn: logit -= presence * (count > 0) +
  // frequency * count. 0: off; each in [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
};

// Picks the next token from logits [vocab]. Order, as llama.cpp and transformers: repetition
// penalty, presence/frequency penalties, then greedy if temperature == 0, else top-k, temperature, softmax, top-p, min-p, draw.
// Greedy ties go to the lowest token id. The same seed and inputs give the same tokens.
class Sampler {
 public:
  // Throws gptq::Error for parameters outside their ranges: temperature < 0, top_p outside (0, 1],
  // min_p outside [0, 1], repetition_penalty <= 0, presence/frequency penalties outside [-2, 2]
  // (and NaN or infinite values).
  explicit Sampler(const SamplingParams& p);
  int32_t sample(std::vector<float> logits, const std::vector<int32_t>& history);
  const SamplingParams& params() const { return p_; }

 private:
  int32_t draw(const std::vector<float>& logits);  // greedy or the truncated distribution, after penalties
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> drawn_;  // token -> times sampled (the OpenAI penalties' counts)
};

// The text of one generated sequence as it streams: tokens detokenized one by one (never half a
// UTF-8 character) with the stop strings cut out. Text that could be the start of a stop string is
// held back until the next tokens show whether it is.
class TextStream {
 public:
  // Throws gptq::Error for an empty stop string.
  TextStream(const Tokenizer& tok, std::vector<std::string> stop);
  // Appends a token; returns the text that became final. Once a stop string appears, stopped() is
  // true and the text before it has been returned.
  std::string push(int32_t id);
  bool stopped() const { return stopped_; }
  std::string finish();  // what is held back (nothing after a stop)

 private:
  StreamDecoder decoder_;
  std::vector<std::string> stop_;
  std::string pending_;  // decoded text not yet returned (may start a stop string)
  bool stopped_ = false;
};

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids, new_ids;
  std::string text;                 // decoded new tokens (up to a stop string)
  std::string stop_reason;          // "eos", "stop", "length", "context"
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;         // forward passes after the prefill
};

struct BatchGenerateResult {
  std::vector<GenerateResult> results;  // one per prompt, in order
  int64_t prompt_tokens = 0;            // all prompts together
  double prefill_seconds = 0;           // the one prefill forward over all prompts
  int64_t decode_tokens = 0;            // rows of the decode forwards (sum of the results' decode_steps)
  int64_t decode_steps = 0;             // decode forwards (each over every sequence still live)
  double decode_seconds = 0;            // from the end of the prefill to the last sequence's end
};

// Decodes several prompts together: one prefill forward over all prompts, then one forward per step
// over every sequence still running. Each sequence has its own sampler, seeded with
// opts.sampling.seed + its index, and its own stop conditions (eos, stop strings, max_new_tokens,
// context); a finished sequence leaves the batch and frees its cache blocks. So prompt i gives what
// it gives alone with seed + i (up to float reassociation in the batched matrix products; greedy
// fp32 on the CPU gives the same tokens). In a result, prefill_seconds is the shared prefill's and
// decode_seconds runs from the end of the prefill to that sequence's end. on_text(i, text) streams
// sequence i's finished text (never half a UTF-8 character, never part of a stop string), the
// sequences' pieces interleaved as they come. Throws gptq::Error (naming the prompt when there are
// several) when a prompt is empty or does not fit in the context.
BatchGenerateResult generate_batch(Model& model, const Tokenizer& tok, const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerateOptions& opts,
                                   const std::function<void(size_t, const std::string&)>& on_text = {});

// One prompt: generate_batch of one (same sampler seed, same loop).
GenerateResult generate(Model& model, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateOptions& opts, const std::function<void(const std::string&)>& on_text = {});

// EOS ids: config.json/generation_config.json's, else the tokenizer's.
std::vector<int32_t> eos_ids(const Model& model, const Tokenizer& tok);

}  // namespace gptq
