// JSON from untrusted files: one parser entry point with a nesting limit (deep nesting would
// exhaust the stack in the recursive tree walks and dump() calls that follow any parse), and
// field readers that refuse what would otherwise be silently converted (4.7 read as 4, 2^40 as 0,
// NaN as a number).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace gptq {

// Deeper than any real config or tokenizer file (tokenizer.json nests ~6 levels).
inline constexpr int kMaxJsonDepth = 128;

// Parses `text`; errors name `origin`: "<origin>: malformed JSON: ...", "<origin>: JSON nested deeper
// than 128 levels".
nlohmann::json parse_json(std::string_view text, const std::string& origin);
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& origin);
// read_text_file(path) (a regular file, size-capped) parsed with parse_json.
nlohmann::json read_json_file(const std::string& path);

// e.what() of a nlohmann exception without its "[json.exception.type_error.302] " prefix.
std::string json_error_text(const std::exception& e);

// At most max_chars of j's JSON text, for error messages.
std::string json_preview(const nlohmann::json& j, size_t max_chars = 80);

// Field readers of a JSON object. Absent or null → std::nullopt. A value of the wrong type, a
// fractional number where an integer is expected, a non-finite number or one outside [lo, hi]
// throws gptq::Error "<origin>: field \"<key>\" ...".
std::optional<int64_t> json_int(const nlohmann::json& obj, const char* key, const std::string& origin,
                                int64_t lo, int64_t hi);
std::optional<double> json_number(const nlohmann::json& obj, const char* key, const std::string& origin,
                                  double lo, double hi);
std::optional<bool> json_bool(const nlohmann::json& obj, const char* key, const std::string& origin);
std::optional<std::string> json_string(const nlohmann::json& obj, const char* key, const std::string& origin);

// The integer value of j (an integer, or a float with an integral value) within [lo, hi], or
// gptq::Error naming `what`.
int64_t json_to_int(const nlohmann::json& j, const std::string& what, int64_t lo, int64_t hi);

}  // namespace gptq
