// The promises of gptq::Tokenizer and gptq::StreamDecoder that every target using a tokenizer
// checks: ids in range, decode() is valid UTF-8, streamed pieces are whole characters and add up
// to decode().
#pragma once

#include <string>
#include <vector>

#include "fuzz_common.h"
#include "gptq/tokenizer.h"
#include "tokenizer/unicode.h"

namespace gptq_fuzz {

inline bool valid_utf8(const std::string& s) { return gptq::tok::utf8_valid_prefix(s) == s.size(); }

inline void check_ids(const gptq::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size())
      violated("encode() returned an id outside the vocabulary", std::to_string(id));
}

// Decodes ids whole and streamed (both skip modes); returns decode(ids, true).
inline std::string check_decode(const gptq::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string first;
  for (bool skip : {true, false}) {
    const std::string whole = tok.decode(ids, skip);
    if (!valid_utf8(whole)) violated("decode() returned invalid UTF-8");
    gptq::StreamDecoder sd(tok, skip);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = sd.push(id);
      if (!valid_utf8(piece)) violated("StreamDecoder::push() returned part of a character", std::to_string(id));
      streamed += piece;
    }
    const std::string tail = sd.flush();
    if (!valid_utf8(tail)) violated("StreamDecoder::flush() returned invalid UTF-8");
    streamed += tail;
    if (streamed != whole) violated("streamed pieces do not add up to decode()", "'" + streamed + "' vs '" + whole + "'");
    if (skip) first = whole;
  }
  return first;
}

}  // namespace gptq_fuzz
