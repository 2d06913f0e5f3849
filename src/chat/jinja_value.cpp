#include "chat/jinja_value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "chat/jinja_text.h"

namespace gptq::chat::jinja {

void eval_fail(std::string message) { throw EvalError{std::move(message)}; }

const char* type_name(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "Undefined";
    case Type::kNone: return "NoneType";
    case Type::kBool: return "bool";
    case Type::kInt: return "int";
    case Type::kFloat: return "float";
    case Type::kString: return "str";
    case Type::kList: return v.tuple ? "tuple" : "list";
    case Type::kDict: return "dict";
    case Type::kNamespace: return "Namespace";
    case Type::kFunction: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Type::kUndefined:
    case Type::kNone: return false;
    case Type::kBool: return v.boolean;
    case Type::kInt: return v.integer != 0;
    case Type::kFloat: return v.number != 0;
    case Type::kString: return !v.s().empty();
    case Type::kList: return !v.list->empty();
    case Type::kDict: return !v.dict->empty();
    default: return true;
  }
}

static bool is_numeric(const Value& v) { return v.is(Type::kBool) || v.is(Type::kInt) || v.is(Type::kFloat); }

bool equal(const Value& a, const Value& b) {
  if (is_numeric(a) && is_numeric(b)) {
    if (a.is(Type::kFloat) || b.is(Type::kFloat)) {
      auto as_double = [](const Value& v) {
        return v.is(Type::kFloat) ? v.number : static_cast<double>(v.is(Type::kBool) ? v.boolean : v.integer);
      };
      return as_double(a) == as_double(b);
    }
    return (a.is(Type::kBool) ? a.boolean : a.integer) == (b.is(Type::kBool) ? b.boolean : b.integer);
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::kUndefined:
    case Type::kNone: return true;
    case Type::kString: return a.s() == b.s();
    case Type::kList: {
      if (a.list->size() != b.list->size() || a.tuple != b.tuple) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    }
    case Type::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* other = dict_find(*b.dict, k);
        if (other == nullptr || !equal(v, *other)) return false;
      }
      return true;
    }
    default: return a.dict == b.dict && a.fn == b.fn && a.macro == b.macro;  // identity
  }
}

const Value* dict_find(const Dict& d, const Value& key) {
  for (const auto& [k, v] : d)
    if (equal(k, key)) return &v;
  return nullptr;
}

void dict_set(Dict& d, Value key, Value value) {
  for (auto& [k, v] : d) {
    if (equal(k, key)) {
      v = std::move(value);
      return;
    }
  }
  d.emplace_back(std::move(key), std::move(value));
}

// repr(float): the shortest text that reads back, in fixed notation for exponents in [-4, 16).
std::string py_float(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-1.2345e+05"
  const size_t e = sci.find('e');
  const int exp = std::stoi(sci.substr(e + 1));
  std::string mantissa = sci.substr(0, e);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += ebuf;
  } else if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else {
    if (digits.size() <= static_cast<size_t>(exp) + 1) digits.append(static_cast<size_t>(exp) + 1 - digits.size(), '0');
    out = digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
    if (out.back() == '.') out += '0';
  }
  return negative ? "-" + out : out;
}

// str.isprintable() of one code point, for the characters that chat text plausibly holds.
static bool is_py_printable(char32_t cp) {
  if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0xA0) || cp == 0xAD) return false;
  if (cp != ' ' && is_py_space(cp)) return false;
  return !((cp >= 0x200B && cp <= 0x200F) || (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2060 && cp <= 0x2064) ||
           cp == 0xFEFF || (cp >= 0xD800 && cp <= 0xDFFF));
}

static std::string repr_string(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (size_t pos = 0, len = 0; pos < s.size(); pos += len) {
    const char32_t cp = decode_utf8(s, pos, &len);
    char buf[16];
    if (cp == '\\' || cp == static_cast<char32_t>(quote)) {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (!is_py_printable(cp)) {
      std::snprintf(buf, sizeof buf,
                    cp < 0x100     ? "\\x%02x"
                    : cp < 0x10000 ? "\\u%04x"
                                   : "\\U%08x",
                    static_cast<unsigned>(cp));
      out += buf;
    } else {
      out.append(s, pos, len);
    }
  }
  return out + quote;
}

static std::string repr_at(const Value& v, int level);
std::string py_repr(const Value& v) { return repr_at(v, 0); }

// `level` bounds the recursion: a namespace may hold itself (set ns.self = [ns]).
static std::string repr_at(const Value& v, int level) {
  if (level > kMaxValueDepth)
    eval_fail("a value nested deeper than " + std::to_string(kMaxValueDepth) + " levels (or holding itself)");
  switch (v.type) {
    case Type::kString: return repr_string(v.s());
    case Type::kList: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr_at((*v.list)[i], level + 1);
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Type::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < v.dict->size(); ++i)
        out +=
            (i ? ", " : "") + repr_at((*v.dict)[i].first, level + 1) + ": " + repr_at((*v.dict)[i].second, level + 1);
      return out + "}";
    }
    case Type::kNamespace: {
      Value items = v;
      items.type = Type::kDict;
      return "<Namespace " + repr_at(items, level + 1) + ">";
    }
    default: return py_str(v);
  }
}

std::string py_str(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "";
    case Type::kNone: return "None";
    case Type::kBool: return v.boolean ? "True" : "False";
    case Type::kInt: return std::to_string(v.integer);
    case Type::kFloat: return py_float(v.number);
    case Type::kString: return v.s();
    case Type::kFunction: return "<function " + (v.macro != nullptr ? std::string("macro") : v.fn) + ">";
    default: return py_repr(v);
  }
}

static void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

static void json_dump(std::string& out, const Value& v, int indent, int level) {
  // json.dumps separators: ", " and ": " on one line; "," and a newline with an indent.
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * lvl), ' ');
  };
  switch (v.type) {
    case Type::kNone: out += "null"; return;
    case Type::kBool: out += v.boolean ? "true" : "false"; return;
    case Type::kInt: out += std::to_string(v.integer); return;
    case Type::kFloat:
      out += std::isnan(v.number)   ? "NaN"
             : std::isinf(v.number) ? (v.number > 0 ? "Infinity" : "-Infinity")
                                    : py_float(v.number);
      return;
    case Type::kString: json_string(out, v.s()); return;
    case Type::kList: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        json_dump(out, (*v.list)[i], indent, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case Type::kDict: {
      if (v.dict->empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < v.dict->size(); ++i) {
        const auto& [key, value] = (*v.dict)[i];
        if (i) out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        if (key.is(Type::kString)) {
          json_string(out, key.s());
        } else if (key.is(Type::kNone) || key.is(Type::kBool) || key.is(Type::kInt) || key.is(Type::kFloat)) {
          std::string k;
          json_dump(k, key, -1, 0);
          json_string(out, k);
        } else {
          eval_fail(std::string("keys must be str, int, float, bool or None, not ") + type_name(key));
        }
        out += ": ";
        json_dump(out, value, indent, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default: eval_fail(std::string("Object of type ") + type_name(v) + " is not JSON serializable");
  }
}

std::string to_json(const Value& v, int indent) {
  std::string out;
  json_dump(out, v, indent, 0);
  return out;
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::of(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::of(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();  // Python's ints are unbounded; past int64 a float is closest
      return u <= static_cast<uint64_t>(INT64_MAX) ? Value::of(static_cast<int64_t>(u))
                                                   : Value::of(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::of(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::of(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      for (const auto& x : j) items.push_back(from_json(x));
      return Value::of(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict items;
      for (const auto& [k, x] : j.items()) items.emplace_back(Value::of(k), from_json(x));
      return Value::of(std::move(items));
    }
    default: return Value::undefined("a binary JSON value");
  }
}

}  // namespace gptq::chat::jinja
