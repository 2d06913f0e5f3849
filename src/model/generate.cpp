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

std::vector<int32_t> eos_ids(const Model& model, const Tokenizer& tok) {
  std::vector<int32_t> ids = model.config().eos_token_ids;
  if (ids.empty() && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  return ids;
}

GenerateResult generate(Model& model, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateOptions& opts, const std::function<void(const std::string&)>& on_text) {
  GenerateResult r;
  r.prompt_ids = prompt_ids;
  const int64_t ctx = model.context_length();
  if (prompt_ids.empty()) fail("the prompt is empty (no tokens)");
  if (int64_t(prompt_ids.size()) >= ctx)
    fail("the prompt has ", prompt_ids.size(), " tokens but the model's context is ", ctx,
         " tokens: shorten it (at least one token must be left to generate)");
  for (const auto& s : opts.stop)
    if (s.empty()) fail("stop strings must not be empty");
  const auto eos = eos_ids(model, tok);
  auto cache = model.new_cache();
  Sampler sampler(opts.sampling);
  StreamDecoder stream(tok);
  std::vector<int32_t> history = prompt_ids;
  std::vector<float> logits;
  std::string pending;  // decoded text not yet passed to on_text

  auto t0 = std::chrono::steady_clock::now();
  model.forward(*cache, prompt_ids.data(), int64_t(prompt_ids.size()), false, logits);
  r.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  r.stop_reason = "length";
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    const int32_t next = sampler.sample(logits, history);
    if (opts.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) {
      r.stop_reason = "eos";
      break;
    }
    r.new_ids.push_back(next);
    history.push_back(next);
    pending += stream.push(next);
    if (!opts.stop.empty()) {
      size_t cut = std::string::npos;
      for (const auto& s : opts.stop) cut = std::min(cut, pending.find(s));
      if (cut != std::string::npos) {
        pending.resize(cut);
        r.text += pending;
        if (on_text && !pending.empty()) on_text(pending);
        pending.clear();
        r.stop_reason = "stop";
        break;
      }
    }
    const size_t hold = held_back(pending, opts.stop);
    if (pending.size() > hold) {
      const std::string out = pending.substr(0, pending.size() - hold);
      r.text += out;
      if (on_text) on_text(out);
      pending.erase(0, out.size());
    }
    if (i + 1 == opts.max_new_tokens) break;
    if (cache->size() >= cache->capacity()) {
      r.stop_reason = "context";
      break;
    }
    model.forward(*cache, &next, 1, false, logits);
    ++r.decode_steps;
  }
  r.decode_seconds = seconds_since(t0);
  if (r.stop_reason != "stop") {
    pending += stream.flush();
    r.text += pending;
    if (on_text && !pending.empty()) on_text(pending);
  }
  return r;
}

}  // namespace gptq
