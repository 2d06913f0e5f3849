// Thin PCRE2 wrapper for the Unicode regexes of tokenizer.json (HF uses Oniguruma; the patterns
// found in Llama/GPT-2/Qwen tokenizers mean the same in PCRE2 with UTF + UCP).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace gptq::tok {

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

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so this header needs no <pcre2.h>
  bool jit_ = false;
};

}  // namespace gptq::tok
