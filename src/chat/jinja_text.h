// UTF-8 and Python str helpers shared by the Jinja lexer and evaluator: Python counts, indexes and
// strips by code point, with its own set of whitespace characters.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace gptq::chat::jinja {

// The code point at s[pos] and its byte length in *len (a stray byte counts as one code point).
char32_t decode_utf8(std::string_view s, size_t pos, size_t* len);
// Byte offsets of each code point's first byte, plus s.size() at the end.
std::vector<size_t> code_point_starts(std::string_view s);
size_t code_point_count(std::string_view s);

// str.isspace() of one code point.
bool is_py_space(char32_t cp);
// Byte length of the whitespace code point that starts at pos / ends at end; 0 when there is none.
size_t py_space_at(std::string_view s, size_t pos);
size_t py_space_before(std::string_view s, size_t end);
// str.lstrip() / str.rstrip() / str.strip() without arguments.
std::string_view py_lstrip(std::string_view s);
std::string_view py_rstrip(std::string_view s);
std::string_view py_strip(std::string_view s);

// Simple case mapping of ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (other code points,
// stay as they are; upper() turns ß into SS as Python does, title() and capitalize() do not).
char32_t to_upper(char32_t cp);
char32_t to_lower(char32_t cp);
// Whether the code point has a case (Python's "cased", within the mapped scripts).
bool is_cased(char32_t cp);
// str.upper() / str.lower(); str.title() (title_words: Jinja2's title filter, whose words start after
// whitespace, '-' or an opening bracket); str.capitalize().
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s, bool title_words);
std::string py_capitalize(std::string_view s);

}  // namespace gptq::chat::jinja
