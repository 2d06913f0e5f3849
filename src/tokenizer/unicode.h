// UTF-8 helpers shared by the tokenizer stages. Text inside the tokenizer is always valid UTF-8
// (encode() repairs its input first), so the fast decoders here do not re-validate.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace gptq::tok {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the UTF-8 sequence that starts with `lead` (1 for stray continuation bytes).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at s[i] and advances i. `s` must be valid UTF-8.
inline uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_seq_len(b0);
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b0;
  }
  uint32_t cp = n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp);

// Length of the longest valid UTF-8 prefix of s.
size_t utf8_valid_prefix(std::string_view s);

// Replaces each maximal invalid subsequence by U+FFFD, as Rust's String::from_utf8_lossy and
// Python's bytes.decode("utf-8", "replace") do (HF's ByteLevel decoder relies on this).
std::string utf8_lossy(std::string_view bytes);

// Length (0-3) of a trailing sequence that is valid so far but incomplete: what more bytes may
// still turn into a character instead of a U+FFFD.
size_t utf8_incomplete_tail(std::string_view s);

// Unicode White_Space, as Rust's char::is_whitespace (used by lstrip/rstrip and Strip).
bool is_unicode_whitespace(uint32_t cp);

// GPT-2's byte <-> printable character table used by ByteLevel pre-tokenizer and decoder.
// byte_to_char()[b] is the UTF-8 encoding of the character that stands for byte b.
const std::array<std::string, 256>& byte_to_char();
// The byte a character stands for, or -1 when the character is not in the table.
int char_to_byte(uint32_t cp);

}  // namespace gptq::tok
