#include "core/json.h"

#include <cmath>
#include <sstream>

#include "core/fs.h"
#include "gptq/error.h"

namespace gptq {

namespace {

// Nesting depth of JSON text, strings skipped; the parser reports any other malformation.
void check_depth(std::string_view text, const std::string& origin) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) fail(origin, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

template <typename J>
J parse_checked(std::string_view text, const std::string& origin) {
  check_depth(text, origin);
  try {
    return J::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    fail(origin, ": malformed JSON: ", json_error_text(e));
  }
}

std::string format_number(double v) {
  std::ostringstream os;
  os.precision(6);
  os << v;
  return os.str();
}

}  // namespace

std::string json_error_text(const std::exception& e) {
  std::string what = e.what();
  if (what.rfind("[json.exception.", 0) == 0)
    if (auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
  return what;
}

nlohmann::json parse_json(std::string_view text, const std::string& origin) {
  return parse_checked<nlohmann::json>(text, origin);
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& origin) {
  return parse_checked<nlohmann::ordered_json>(text, origin);
}

nlohmann::json read_json_file(const std::string& path) { return parse_json(read_text_file(path), path); }

std::string json_preview(const nlohmann::json& j, size_t max_chars) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

int64_t json_to_int(const nlohmann::json& j, const std::string& what, int64_t lo, int64_t hi) {
  int64_t v = 0;
  if (j.is_number_integer() && j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > uint64_t(hi)) fail(what, " must be in [", lo, ", ", hi, "], got ", u);
    v = int64_t(u);
  } else if (j.is_number_integer()) {
    v = j.get<int64_t>();
  } else if (j.is_number_float()) {
    const double d = j.get<double>();
    if (!std::isfinite(d) || d != std::floor(d)) fail(what, " must be an integer, got ", format_number(d));
    if (d < double(lo) || d > double(hi)) fail(what, " must be in [", lo, ", ", hi, "], got ", format_number(d));
    v = int64_t(d);
  } else {
    fail(what, " must be an integer, got ", j.type_name());
  }
  if (v < lo || v > hi) fail(what, " must be in [", lo, ", ", hi, "], got ", v);
  return v;
}

std::optional<int64_t> json_int(const nlohmann::json& obj, const char* key, const std::string& origin,
                                int64_t lo, int64_t hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  return json_to_int(*it, cat(origin, ": field \"", key, "\""), lo, hi);
}

std::optional<double> json_number(const nlohmann::json& obj, const char* key, const std::string& origin,
                                  double lo, double hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail(origin, ": field \"", key, "\" must be a number, got ", it->type_name());
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    fail(origin, ": field \"", key, "\" must be in [", format_number(lo), ", ", format_number(hi), "], got ",
         format_number(v));
  return v;
}

std::optional<bool> json_bool(const nlohmann::json& obj, const char* key, const std::string& origin) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) fail(origin, ": field \"", key, "\" must be true or false, got ", it->type_name());
  return it->get<bool>();
}

std::optional<std::string> json_string(const nlohmann::json& obj, const char* key, const std::string& origin) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(origin, ": field \"", key, "\" must be a string, got ", it->type_name());
  return it->get<std::string>();
}

}  // namespace gptq
