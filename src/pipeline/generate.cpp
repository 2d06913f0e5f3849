#include <algorithm>
#include <chrono>

#include "gptq/error.h"
#include "gptq/generate.h"

namespace gptq {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that much
// must be held back, since the next token may complete the stop string.
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > hold; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stop) : decoder_(tok), stop_(std::move(stop)) {
  for (const auto& s : stop_)
    if (s.empty()) fail("stop strings must not be empty");
}

std::string TextStream::push(int32_t id) {
  if (stopped_) return {};
  pending_ += decoder_.push(id);
  size_t cut = std::string::npos;
  for (const auto& stop : stop_) cut = std::min(cut, pending_.find(stop));
  std::string out;
  if (cut != std::string::npos) {
    out = pending_.substr(0, cut);
    pending_.clear();
    stopped_ = true;
    return out;
  }
  const size_t hold = held_back(pending_, stop_);
  out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  std::string out = pending_ + decoder_.flush();
  pending_.clear();
  return out;
}

std::vector<int32_t> eos_ids(const Model& model, const Tokenizer& tok) {
  std::vector<int32_t> ids = model.config().eos_token_ids;
  if (ids.empty() && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  return ids;
}

namespace {

// A sequence being generated: its sampler and its text.
struct Running {
  Running(const Tokenizer& tok, const SamplingParams& p, const std::vector<std::string>& stop)
      : sampler(p), text(tok, stop) {}
  int64_t seq = -1;  // in the cache
  Sampler sampler;
  TextStream text;
  std::vector<int32_t> history;  // prompt and new tokens (the repetition penalty's window)
};

}  // namespace

BatchGenerateResult generate_batch(Model& model, const Tokenizer& tok, const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerateOptions& opts,
                                   const std::function<void(size_t, const std::string&)>& on_text) {
  const size_t n = prompts.size();
  const int64_t ctx = model.context_length();
  if (n == 0) fail("no prompt to generate from");
  for (size_t i = 0; i < n; ++i) {
    const std::string which = n > 1 ? "prompt " + std::to_string(i + 1) + ": " : "";
    if (prompts[i].empty()) fail(which, "the prompt is empty (no tokens)");
    if (int64_t(prompts[i].size()) >= ctx)
      fail(which, "the prompt has ", prompts[i].size(), " tokens but the model's context is ", ctx,
           " tokens: shorten it (at least one token must be left to generate)");
  }
  const auto eos = eos_ids(model, tok);
  auto cache = model.new_cache();

  BatchGenerateResult out;
  out.results.resize(n);
  std::vector<Running> run;
  run.reserve(n);
  Batch batch;
  for (size_t i = 0; i < n; ++i) {
    SamplingParams sp = opts.sampling;
    sp.seed += i;
    Running& s = run.emplace_back(tok, sp, opts.stop);
    s.seq = cache->add_sequence();
    s.history = prompts[i];
    out.results[i].prompt_ids = prompts[i];
    out.results[i].stop_reason = "length";
    batch.add(s.seq, prompts[i].data(), int64_t(prompts[i].size()), Logits::kLast);
    out.prompt_tokens += int64_t(prompts[i].size());
  }
  std::vector<float> logits;  // [live sequences, vocab], in the order of `live`
  auto t0 = std::chrono::steady_clock::now();
  model.forward(batch, *cache, logits);
  out.prefill_seconds = seconds_since(t0);
  for (auto& r : out.results) r.prefill_seconds = out.prefill_seconds;
  t0 = std::chrono::steady_clock::now();

  auto emit = [&](size_t i, const std::string& text) {
    if (text.empty()) return;
    out.results[i].text += text;
    if (on_text) on_text(i, text);
  };
  auto finish = [&](size_t i, const char* reason) {
    Running& s = run[i];
    GenerateResult& r = out.results[i];
    r.stop_reason = reason;
    emit(i, s.text.finish());
    r.decode_seconds = seconds_since(t0);
    cache->free_sequence(s.seq);
  };
  // Takes sequence i's next token; returns why it stops, or nullptr when it goes on.
  auto take = [&](size_t i, int32_t next) -> const char* {
    Running& s = run[i];
    GenerateResult& r = out.results[i];
    if (opts.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) return "eos";
    r.new_ids.push_back(next);
    s.history.push_back(next);
    emit(i, s.text.push(next));
    if (s.text.stopped()) return "stop";
    if (int64_t(r.new_ids.size()) >= opts.max_new_tokens) return "length";
    if (cache->seq_len(s.seq) >= cache->context_length()) return "context";
    return nullptr;
  };

  std::vector<size_t> live(n);  // sequences of the last forward, in its row order
  for (size_t i = 0; i < n; ++i) live[i] = i;
  if (opts.max_new_tokens <= 0) {
    for (size_t i : live) finish(i, "length");
    live.clear();
  }
  const size_t V = size_t(model.vocab_size());
  while (!live.empty()) {
    Batch step;
    std::vector<size_t> still;
    for (size_t k = 0; k < live.size(); ++k) {
      const size_t i = live[k];
      const float* row = logits.data() + k * V;
      const int32_t next = run[i].sampler.sample(std::vector<float>(row, row + V), run[i].history);
      if (const char* reason = take(i, next)) {
        finish(i, reason);
        continue;
      }
      step.add(run[i].seq, &next, 1, Logits::kLast);
      ++out.results[i].decode_steps;
      still.push_back(i);
    }
    if (still.empty()) break;
    model.forward(step, *cache, logits);
    ++out.decode_steps;
    out.decode_tokens += int64_t(still.size());
    live.swap(still);
  }
  out.decode_seconds = seconds_since(t0);
  return out;
}

GenerateResult generate(Model& model, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateOptions& opts, const std::function<void(const std::string&)>& on_text) {
  std::function<void(size_t, const std::string&)> each;
  if (on_text) each = [&](size_t, const std::string& text) { on_text(text); };
  return std::move(generate_batch(model, tok, {prompt_ids}, opts, each).results[0]);
}

}  // namespace gptq
