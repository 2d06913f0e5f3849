// Decoders of tokenizer.json: turn the token strings of an id sequence back into text. Each type
// mirrors HF `tokenizers` decode_chain (a list of strings in, a list out); the final text is the
// concatenation. Unsupported types are rejected at load time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace gptq::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  virtual bool byte_level() const { return false; }
  // Whether the text is utf8_lossy(the concatenated bytes of each token), as for ByteLevel alone;
  // then append_bytes appends the bytes of one token. StreamDecoder streams such text in bytes.
  virtual bool lossy_bytes() const { return false; }
  virtual void append_bytes(const std::string& /*token*/, std::string& /*bytes*/) const {}

  std::string decode(std::vector<std::string> tokens) const;
};

// nullptr for a JSON null; throws gptq::Error for an unsupported type.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j);

// The decoder transformers' LlamaTokenizer installs: Replace("▁", " "), ByteFallback, Fuse, and
// Strip(" ", 1, 0) when a prefix space is added on encode.
std::unique_ptr<Decoder> make_llama_decoder(bool strip_prefix_space);

}  // namespace gptq::tok
