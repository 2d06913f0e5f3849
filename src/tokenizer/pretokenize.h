// Normalizers and pre-tokenizers of tokenizer.json: the stages between the raw text (already split
// around added tokens) and the BPE model. Each mirrors the Hugging Face `tokenizers` type of the
// same name; only the types that Llama-family tokenizers use are implemented, others are rejected
// at load time so that a tokenizer never silently differs from the reference.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/regex.h"

namespace gptq::tok {

// A piece of text on its way to the model. `offset` is where the piece starts in the caller's
// text; only whether it is 0 matters (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  size_t offset = 0;
};

// A tokenizer.json "pattern": {"String": literal} or {"Regex": pcre}.
class Pattern {
 public:
  explicit Pattern(const nlohmann::json& j);
  void find_all(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::unique_ptr<Regex> regex_;  // null for a literal
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
  // True when the pieces come out in the ByteLevel alphabet (decides kind()).
  virtual bool byte_level() const { return false; }
};

// Both return nullptr for a JSON null and throw gptq::Error for an unsupported type.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j);

std::unique_ptr<PreTokenizer> make_metaspace(const std::string& replacement, PrependScheme scheme, bool split);

}  // namespace gptq::tok
