// Internal state of gptq::Tokenizer, shared by tokenizer_load.cpp (building it from tokenizer.json)
// and tokenizer.cpp (encode/decode/streaming).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gptq/tokenizer.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/pretokenize.h"

namespace gptq {

namespace tok {

// An entry of tokenizer.json "added_tokens": matched in the text before the model sees it.
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;       // swallow whitespace before the match
  bool rstrip = false;       // swallow whitespace after the match
  bool single_word = false;  // only match when not inside a word
  bool normalized = false;   // matched in the normalized text instead of the raw text
};

// A span of text: either an added token (added >= 0, index into the added-token list) or text.
struct Span {
  size_t start, end;
  int added = -1;
};

// Leftmost-longest matcher over one set of added tokens (raw or normalized), as HF's
// aho-corasick LeftmostLongest: candidates bucketed by first byte, longest first.
class AddedMatcher {
 public:
  void add(const AddedToken& t, int index);
  bool empty() const { return count_ == 0; }
  // Splits text into spans; lstrip/rstrip widen a match over neighbouring whitespace.
  void split(std::string_view text, const std::vector<AddedToken>& tokens, std::vector<Span>& out) const;

 private:
  std::array<std::vector<int>, 256> buckets_;
  size_t count_ = 0;
};

}  // namespace tok

struct Tokenizer::Impl {
  std::string path;
  tok::BpeModel model;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Decoder> decoder;
  bool decoder_byte_fallback = false;  // decoder joins runs of <0xNN> tokens (matters for streaming)

  std::vector<tok::AddedToken> added;
  std::unordered_map<int32_t, int> added_by_id;  // id -> index into `added`
  tok::TokenMap added_by_content;                // content -> id
  tok::AddedMatcher raw_matcher, normalized_matcher;

  std::vector<int32_t> prefix_ids, suffix_ids;  // what the post-processor puts around a single sequence
  int32_t bos = -1, eos = -1;
  bool byte_level = false;
  int32_t vocab_size = 0;

  const tok::AddedToken* added_token(int32_t id) const {
    auto it = added_by_id.find(id);
    return it == added_by_id.end() ? nullptr : &added[it->second];
  }
  bool is_special(int32_t id) const {
    const auto* t = added_token(id);
    return t != nullptr && t->special;
  }
  // True for a vocabulary "<0xNN>" token that the decoder turns back into a byte.
  bool is_byte_token(int32_t id) const;

  void encode_text(std::string_view text, size_t offset, std::vector<int32_t>& out) const;
};

}  // namespace gptq
