#include "chat/jinja_text.h"
#include "tokenizer/unicode.h"

namespace gptq::chat::jinja {

char32_t decode_utf8(std::string_view s, size_t pos, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  const int n = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || pos + n > s.size()) {
    *len = 1;
    return b0;
  }
  char32_t cp = n == 1 ? b0 : b0 & (0x7F >> n);
  for (int k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[pos + k]);
    if ((b >> 6) != 0x2) {
      *len = 1;
      return b0;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  *len = static_cast<size_t>(n);
  return cp;
}

std::vector<size_t> code_point_starts(std::string_view s) {
  std::vector<size_t> starts;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    decode_utf8(s, pos, &len);
    starts.push_back(pos);
  }
  starts.push_back(s.size());
  return starts;
}

size_t code_point_count(std::string_view s) {
  size_t n = 0;
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len, ++n) decode_utf8(s, pos, &len);
  return n;
}

bool is_py_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t py_space_at(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  size_t len = 0;
  return is_py_space(decode_utf8(s, pos, &len)) ? len : 0;
}

size_t py_space_before(std::string_view s, size_t end) {
  // Whitespace code points are at most 3 bytes long.
  for (size_t len = 1; len <= 3 && len <= end; ++len) {
    const auto b = static_cast<unsigned char>(s[end - len]);
    if ((b >> 6) == 0x2) continue;  // a continuation byte: the code point starts further back
    size_t got = 0;
    const char32_t cp = decode_utf8(s, end - len, &got);
    return got == len && is_py_space(cp) ? len : 0;
  }
  return 0;
}

std::string_view py_lstrip(std::string_view s) {
  size_t pos = 0;
  while (size_t n = py_space_at(s, pos)) pos += n;
  return s.substr(pos);
}

std::string_view py_rstrip(std::string_view s) {
  size_t end = s.size();
  while (size_t n = py_space_before(s, end)) end -= n;
  return s.substr(0, end);
}

std::string_view py_strip(std::string_view s) { return py_rstrip(py_lstrip(s)); }

// Latin Extended-A pairs: upper case at even code points, except in two ranges where it is odd.
static bool latin_a_upper_is_odd(char32_t cp) { return (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E); }
static bool in_latin_a(char32_t cp) {
  return (cp >= 0x100 && cp <= 0x12F) || (cp >= 0x132 && cp <= 0x137) || (cp >= 0x139 && cp <= 0x148) ||
         (cp >= 0x14A && cp <= 0x177) || (cp >= 0x179 && cp <= 0x17E);
}

char32_t to_upper(char32_t cp) {
  if (cp >= 'a' && cp <= 'z') return cp - 32;
  if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 32;
  if (cp == 0xFF) return 0x178;
  if (cp == 0xB5) return 0x39C;
  if (in_latin_a(cp)) return ((cp & 1) == 0) == latin_a_upper_is_odd(cp) ? cp - 1 : cp;
  if (cp >= 0x3B1 && cp <= 0x3C9) return cp == 0x3C2 ? 0x3A3 : cp - 32;
  if (cp >= 0x430 && cp <= 0x44F) return cp - 32;
  if (cp >= 0x450 && cp <= 0x45F) return cp - 80;
  return cp;
}

char32_t to_lower(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 32;
  if (cp == 0x178) return 0xFF;
  if (in_latin_a(cp)) return ((cp & 1) == 0) != latin_a_upper_is_odd(cp) ? cp + 1 : cp;
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 32;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 32;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
  return cp;
}

bool is_cased(char32_t cp) { return to_upper(cp) != cp || to_lower(cp) != cp || cp == 0xDF; }

template <typename F>
static std::string map_code_points(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    const char32_t cp = decode_utf8(s, pos, &len);
    if (len == 1 && cp >= 0x80) {
      out += s[pos];  // a stray byte stays as it is
    } else {
      tok::utf8_append(out, f(cp));
    }
  }
  return out;
}

std::string py_upper(std::string_view s) {
  std::string out = map_code_points(s, to_upper);
  // ß is the one mapped letter whose upper case is two letters.
  for (size_t at = out.find("\xC3\x9F"); at != std::string::npos; at = out.find("\xC3\x9F", at + 2))
    out.replace(at, 2, "SS");
  return out;
}
std::string py_lower(std::string_view s) { return map_code_points(s, to_lower); }

std::string py_title(std::string_view s, bool title_words) {
  bool word_start = true;  // str.title: the previous code point is not cased
  return map_code_points(s, [&](char32_t cp) {
    const bool start = word_start;
    if (title_words) {
      word_start = is_py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    } else {
      word_start = !is_cased(cp);
    }
    return start ? to_upper(cp) : to_lower(cp);
  });
}

std::string py_capitalize(std::string_view s) {
  bool first = true;
  return map_code_points(s, [&](char32_t cp) {
    const bool was_first = first;
    first = false;
    return was_first ? to_upper(cp) : to_lower(cp);
  });
}

}  // namespace gptq::chat::jinja
