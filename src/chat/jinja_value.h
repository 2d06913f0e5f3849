// Values of the Jinja evaluator, with Python's semantics for what templates observe: str() and repr()
// text, truthiness, equality, and json.dumps as transformers' tojson calls it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace gptq::chat::jinja {

struct Node;
struct Value;
using List = std::vector<Value>;
// Insertion-ordered like a Python dict; chat template dicts are small, so lookups are linear.
using Dict = std::vector<std::pair<Value, Value>>;

// An evaluation error without its line (the evaluator adds the line of the expression at fault).
struct EvalError {
  std::string message;
  bool raised = false;  // from raise_exception(): the template's own message
};
[[noreturn]] void eval_fail(std::string message);

// Lists and dicts nest at most this deep (deeper values could exhaust the stack when they are
// printed, compared or destroyed).
inline constexpr int kMaxValueDepth = 256;

enum class Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kFunction };

struct Value {
  Type type = Type::kUndefined;
  bool boolean = false;
  bool tuple = false;  // a kList that came from a tuple: only repr() differs
  int depth = 1;       // of nested lists and dicts
  int64_t integer = 0;
  double number = 0;
  std::shared_ptr<const std::string> str;  // kString; kUndefined: why it is undefined, for errors
  std::shared_ptr<const List> list;
  std::shared_ptr<Dict> dict;  // kDict (never changed once built), kNamespace (changed by set ns.x)
  // kFunction: a builtin (fn names it), a method of *self, or a macro.
  std::string fn;
  std::shared_ptr<const Value> self;
  const Node* macro = nullptr;

  static Value undefined(std::string why) { return with_str(Type::kUndefined, std::move(why)); }
  static Value none() { return make(Type::kNone); }
  static Value of(bool b) { Value v = make(Type::kBool); v.boolean = b; return v; }
  static Value of(int64_t i) { Value v = make(Type::kInt); v.integer = i; return v; }
  static Value of(double f) { Value v = make(Type::kFloat); v.number = f; return v; }
  static Value of(std::string s) { return with_str(Type::kString, std::move(s)); }
  static Value of(const char* s) { return of(std::string(s)); }  // not of(bool)
  static Value of(List items, bool tuple = false) {
    Value v = make(Type::kList);
    for (const Value& x : items) v.nest(x);
    v.list = std::make_shared<const List>(std::move(items));
    v.tuple = tuple;
    return v;
  }
  static Value of(Dict items, Type type = Type::kDict) {
    Value v = make(type);
    for (const auto& [key, x] : items) v.nest(x);
    v.dict = std::make_shared<Dict>(std::move(items));
    return v;
  }
  static Value function(std::string name, std::shared_ptr<const Value> self = nullptr) {
    Value v = make(Type::kFunction);
    v.fn = std::move(name);
    v.self = std::move(self);
    return v;
  }

  bool is(Type t) const { return type == t; }
  const std::string& s() const { return *str; }

 private:
  void nest(const Value& child) {
    depth = std::max(depth, child.depth + 1);
    if (depth > kMaxValueDepth) eval_fail("lists or dicts nested deeper than " + std::to_string(kMaxValueDepth));
  }
  static Value make(Type type) {
    Value v;
    v.type = type;
    return v;
  }
  static Value with_str(Type type, std::string s) {
    Value v = make(type);
    v.str = std::make_shared<const std::string>(std::move(s));
    return v;
  }
};

// Python's type(x).__name__ ("str", "int", "dict", ...).
const char* type_name(const Value& v);
bool truthy(const Value& v);
bool equal(const Value& a, const Value& b);
// The entry of `key` in a dict, or null.
const Value* dict_find(const Dict& d, const Value& key);
void dict_set(Dict& d, Value key, Value value);

std::string py_str(const Value& v);
std::string py_repr(const Value& v);
std::string py_float(double f);
// json.dumps(v, ensure_ascii=False, indent=indent) (indent < 0: None).
std::string to_json(const Value& v, int indent);
Value from_json(const nlohmann::ordered_json& j);

}  // namespace gptq::chat::jinja
