// Thin PCRE2 wrapper: the Unicode regexes of tokenizer.json (HF uses Oniguruma; the patterns
// found in Llama/GPT-2/Qwen tokenizers mean the same in PCRE2 with UTF + UCP), also used for the
// Python regexes of PEFT adapter configs (src/io/lora_adapter.cpp: re.fullmatch / re.match).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace gptq {

class Regex {
 public:
  // Throws gptq::Error with PCRE2's message when the pattern does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls on_match(start, end) for each non-overlapping, non-empty match, left to right.
  // `text` must be valid UTF-8. Thread-safe: all per-call state lives on the stack.
  void find_all(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;

  // Python's re.fullmatch(pattern, text): whether the whole of text matches.
  bool full_match(std::string_view text) const;
  // Python's re.match(pattern, text): a match that starts at the beginning of text. The text of
  // capture group `group` (0: the whole match; "" when the group took no part), or nullopt.
  std::optional<std::string> match_start(std::string_view text, int group = 0) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so this header needs no <pcre2.h>
  bool jit_ = false;
};

}  // namespace gptq
