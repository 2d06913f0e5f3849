// The evaluator: walks the syntax tree with Jinja2's runtime semantics (scopes, Undefined, loops,
// filters, tests, str methods) under the bounds of Limits.
#include <algorithm>
#include <cmath>
#include <optional>

#include "chat/jinja.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_text.h"
#include "chat/jinja_value.h"
#include "gptq/error.h"

namespace gptq::chat::jinja {
namespace {

// A for-loop iteration, a macro call or the template: `set` writes the innermost one.
struct Scope {
  const Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent)
      for (const auto& [k, v] : s->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};

enum class Flow { kNormal, kBreak, kContinue };

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;

  // The argument at `index` or named `name`, else `fallback`.
  Value get(size_t index, const char* name, Value fallback = Value::none()) const {
    if (index < pos.size()) return pos[index];
    return named(name, std::move(fallback));
  }
  Value named(const char* name, Value fallback = Value::none()) const {
    for (const auto& [k, v] : kw)
      if (k == name) return v;
    return fallback;
  }
};

class Evaluator {
 public:
  explicit Evaluator(const Limits& limits) : limits_(limits) {}
  // A namespace can hold itself (set ns.me = [ns]): emptying them all breaks such cycles.
  ~Evaluator() {
    for (const auto& d : namespaces_) d->clear();
  }
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  std::string run(const Node& root, const nlohmann::ordered_json& globals) {
    Scope scope;
    root_ = &scope;
    for (const char* fn : {"range", "namespace", "raise_exception", "dict"}) scope.set(fn, Value::function(fn));
    for (const auto& [k, v] : globals.items()) scope.set(k, from_json(v));
    try {
      std::string out;
      exec_body(root.body, scope, out);
      return out;
    } catch (const EvalError& e) {
      if (e.raised) fail("chat template raised an exception at line ", line_, ": ", one_line(e.message));
      fail("chat template error at line ", line_, ": ", one_line(e.message));
    }
  }

 private:
  static std::string one_line(std::string s) {
    std::replace_if(
        s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
    return s;
  }

  struct DepthGuard {
    explicit DepthGuard(Evaluator& e) : ev(e) {
      if (++ev.depth_ > ev.limits_.max_depth) eval_fail(cat("evaluation nested deeper than ", ev.limits_.max_depth));
    }
    ~DepthGuard() { --ev.depth_; }
    Evaluator& ev;
  };

  void charge(size_t bytes) {
    work_ += static_cast<int64_t>(bytes);
    if (work_ > limits_.max_work_bytes)
      eval_fail(cat("string operations over the limit of ", limits_.max_work_bytes, " bytes"));
  }
  Value make_string(std::string s) {
    if (s.size() > limits_.max_output_bytes)
      eval_fail(cat("a string over the limit of ", limits_.max_output_bytes, " bytes"));
    charge(s.size());
    return Value::of(std::move(s));
  }
  Value make_list(List items, bool tuple = false) {
    if (items.size() > max_list_items())
      eval_fail(cat("a list over the limit of ", max_list_items(), " items"));
    charge(items.size() * sizeof(Value));  // what the list holds in memory
    return Value::of(std::move(items), tuple);
  }
  // As many items as loops may visit: a longer list could not be walked anyway.
  size_t max_list_items() const { return static_cast<size_t>(limits_.max_iterations); }
  void count_iteration() {
    if (++iterations_ > limits_.max_iterations)
      eval_fail(cat("loops over the limit of ", limits_.max_iterations, " iterations"));
  }
  void write(std::string& out, std::string_view s) {
    if (out.size() + s.size() > limits_.max_output_bytes)
      eval_fail(cat("output over the limit of ", limits_.max_output_bytes, " bytes"));
    charge(s.size());
    out += s;
  }

  [[noreturn]] static void undefined_error(const Value& v) { eval_fail(v.s()); }

  // ---- statements -----------------------------------------------------------------------------

  Flow exec_body(const NodeList& body, Scope& scope, std::string& out) {
    for (const auto& n : body) {
      const Flow f = exec(*n, scope, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Node& n, Scope& scope, std::string& out) {
    DepthGuard guard(*this);
    line_ = n.line;
    switch (n.kind) {
      case NodeKind::kText: write(out, n.text); break;
      case NodeKind::kOutput: {
        const Value v = eval(*n.expr, scope);
        write(out, py_str(v));
        break;
      }
      case NodeKind::kIf:
        for (const auto& b : n.branches)
          if (truthy(eval(*b.cond, scope))) return exec_body(b.body, scope, out);
        return exec_body(n.else_body, scope, out);
      case NodeKind::kFor: exec_for(n, scope, out); break;
      case NodeKind::kSet: {
        Value v = eval(*n.expr, scope);
        line_ = n.line;
        if (!n.attr.empty()) {
          const Value* ns = scope.find(n.names[0]);
          if (ns == nullptr || !ns->is(Type::kNamespace)) eval_fail("cannot assign attribute on non-namespace object");
          if (v.depth >= kMaxValueDepth) eval_fail(cat("lists or dicts nested deeper than ", kMaxValueDepth));
          dict_set(*ns->dict, Value::of(n.attr), std::move(v));
        } else {
          assign(n.names, std::move(v), scope);
        }
        break;
      }
      case NodeKind::kSetBlock: {
        std::string captured;
        exec_body(n.body, scope, captured);
        scope.set(n.names[0], Value::of(std::move(captured)));
        break;
      }
      case NodeKind::kMacro: {
        Value m = Value::function(n.text);
        m.macro = &n;
        scope.set(n.text, std::move(m));
        break;
      }
      case NodeKind::kBreak: return Flow::kBreak;
      case NodeKind::kContinue: return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  void assign(const std::vector<std::string>& names, Value v, Scope& scope) {
    if (names.size() == 1) {
      scope.set(names[0], std::move(v));
      return;
    }
    const List items = iterate(v);
    if (items.size() != names.size())
      eval_fail(cat(items.size() < names.size() ? "not enough" : "too many", " values to unpack (expected ",
                    names.size(), ", got ", items.size(), ")"));
    for (size_t i = 0; i < names.size(); ++i) scope.set(names[i], items[i]);
  }

  // The items a for loop (or list()) sees: list items, dict keys, string characters.
  List iterate(const Value& v) {
    switch (v.type) {
      case Type::kUndefined: return {};
      case Type::kList: return *v.list;
      case Type::kDict: {
        List keys;
        for (const auto& kv : *v.dict) keys.push_back(kv.first);
        return keys;
      }
      case Type::kString: {
        charge(v.s().size());
        List chars;
        const auto starts = code_point_starts(v.s());
        for (size_t i = 0; i + 1 < starts.size(); ++i)
          chars.push_back(Value::of(v.s().substr(starts[i], starts[i + 1] - starts[i])));
        return chars;
      }
      default: eval_fail(cat("'", type_name(v), "' object is not iterable"));
    }
  }

  void exec_for(const Node& n, Scope& scope, std::string& out) {
    const List all = iterate(eval(*n.expr, scope));
    // The filter (for x in xs if cond) runs first: loop.length and loop.last count what passes.
    List items;
    for (const Value& item : all) {
      count_iteration();
      if (!n.cond) {
        items.push_back(item);
        continue;
      }
      Scope s{&scope, {}};
      assign(n.names, item, s);
      if (truthy(eval(*n.cond, s))) items.push_back(item);
    }
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      // Jinja2 starts each iteration in a fresh scope: a `set` in the body does not reach the next one.
      Scope s{&scope, {}};
      assign(n.names, items[static_cast<size_t>(i)], s);
      // The keys are made once: a loop object per iteration is the evaluator's hottest allocation.
      static const std::vector<Value> kKeys = {Value::of("index"),     Value::of("index0"), Value::of("revindex"),
                                               Value::of("revindex0"), Value::of("first"),  Value::of("last"),
                                               Value::of("length"),    Value::of("cycle"),  Value::of("previtem"),
                                               Value::of("nextitem")};
      Dict loop = {{kKeys[0], Value::of(i + 1)},
                   {kKeys[1], Value::of(i)},
                   {kKeys[2], Value::of(len - i)},
                   {kKeys[3], Value::of(len - i - 1)},
                   {kKeys[4], Value::of(i == 0)},
                   {kKeys[5], Value::of(i == len - 1)},
                   {kKeys[6], Value::of(len)},
                   {kKeys[7], Value::function("cycle", std::make_shared<const Value>(Value::of(i)))}};
      if (i > 0) loop.emplace_back(kKeys[8], items[static_cast<size_t>(i - 1)]);
      if (i + 1 < len) loop.emplace_back(kKeys[9], items[static_cast<size_t>(i + 1)]);
      s.set("loop", Value::of(std::move(loop)));
      if (exec_body(n.body, s, out) == Flow::kBreak) break;
    }
    if (items.empty()) exec_body(n.else_body, scope, out);
  }

  // ---- expressions ----------------------------------------------------------------------------

  Value eval(const Expr& e, const Scope& scope) {
    DepthGuard guard(*this);
    line_ = e.line;
    switch (e.kind) {
      case ExprKind::kLiteral:
        return std::visit(
            [](const auto& x) -> Value {
              if constexpr (std::is_same_v<std::decay_t<decltype(x)>, std::monostate>) return Value::none();
              else return Value::of(x);
            },
            e.literal);
      case ExprKind::kName: {
        const Value* v = scope.find(e.name);
        return v != nullptr ? *v : Value::undefined(cat("'", e.name, "' is undefined"));
      }
      case ExprKind::kList:
      case ExprKind::kTuple: {
        List items;
        for (const auto& k : e.kids) items.push_back(eval(*k, scope));
        return make_list(std::move(items), e.kind == ExprKind::kTuple);
      }
      case ExprKind::kDict: {
        Dict items;
        for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
          Value key = eval(*e.kids[i], scope);
          dict_set(items, std::move(key), eval(*e.kids[i + 1], scope));
        }
        return Value::of(std::move(items));
      }
      case ExprKind::kAttr: return get_attr(eval(*e.kids[0], scope), e.name);
      case ExprKind::kItem: return get_item(eval(*e.kids[0], scope), eval(*e.kids[1], scope));
      case ExprKind::kSlice: return slice(e, scope);
      case ExprKind::kCall: {
        const Value callee = eval(*e.kids[0], scope);
        const Args args = eval_args(e, scope);
        line_ = e.line;
        return call(callee, args);
      }
      case ExprKind::kFilter: {
        const Value v = eval(*e.kids[0], scope);
        const Args args = eval_args(e, scope);
        line_ = e.line;
        return filter(e.name, v, args);
      }
      case ExprKind::kTest: {
        const Value v = eval(*e.kids[0], scope);
        const Args args = eval_args(e, scope);
        line_ = e.line;
        return Value::of(test(e.name, v, args) != e.negated);
      }
      case ExprKind::kUnary: {
        const Value v = eval(*e.kids[0], scope);
        if (e.op == Op::kNot) return Value::of(!truthy(v));
        if (v.is(Type::kUndefined)) undefined_error(v);
        if (v.is(Type::kFloat)) return Value::of(e.op == Op::kNeg ? -v.number : v.number);
        if (!v.is(Type::kInt) && !v.is(Type::kBool))
          eval_fail(cat("bad operand type for unary ", e.op == Op::kNeg ? "-" : "+", ": '", type_name(v), "'"));
        const int64_t i = v.is(Type::kBool) ? v.boolean : v.integer;
        if (e.op == Op::kNeg && i == INT64_MIN) eval_fail("integer overflow");
        return Value::of(e.op == Op::kNeg ? -i : i);
      }
      case ExprKind::kBinary: {
        if (e.op == Op::kAnd || e.op == Op::kOr) {  // short-circuit, returning an operand as Python does
          Value a = eval(*e.kids[0], scope);
          if (truthy(a) == (e.op == Op::kOr)) return a;
          return eval(*e.kids[1], scope);
        }
        const Value a = eval(*e.kids[0], scope);
        const Value b = eval(*e.kids[1], scope);
        line_ = e.line;
        return binary(e.op, a, b);
      }
      case ExprKind::kCompare: {
        Value left = eval(*e.kids[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.kids[i + 1], scope);
          line_ = e.line;
          if (!compare(e.ops[i], left, right)) return Value::of(false);
          left = std::move(right);
        }
        return Value::of(true);
      }
      case ExprKind::kCondition:
        if (truthy(eval(*e.kids[0], scope))) return eval(*e.kids[1], scope);
        return e.kids[2] ? eval(*e.kids[2], scope) : Value::undefined("the condition was false and there is no else");
    }
    return Value::none();
  }

  Args eval_args(const Expr& e, const Scope& scope) {
    Args args;
    for (size_t i = 1; i < e.kids.size(); ++i) args.pos.push_back(eval(*e.kids[i], scope));
    for (const auto& [k, v] : e.kwargs) args.kw.emplace_back(k, eval(*v, scope));
    return args;
  }

  static bool is_number(const Value& v) { return v.is(Type::kInt) || v.is(Type::kBool) || v.is(Type::kFloat); }
  static double as_double(const Value& v) {
    return v.is(Type::kFloat) ? v.number : static_cast<double>(v.is(Type::kBool) ? v.boolean : v.integer);
  }
  static int64_t as_int(const Value& v) { return v.is(Type::kBool) ? v.boolean : v.integer; }

  Value binary(Op op, const Value& a, const Value& b) {
    if (op == Op::kConcat) return make_string(py_str(a) + py_str(b));
    if (a.is(Type::kUndefined)) undefined_error(a);
    if (b.is(Type::kUndefined)) undefined_error(b);
    const char* sym = op == Op::kAdd        ? "+"
                      : op == Op::kSub      ? "-"
                      : op == Op::kMul      ? "*"
                      : op == Op::kDiv      ? "/"
                      : op == Op::kFloorDiv ? "//"
                      : op == Op::kMod      ? "%"
                                            : "**";
    if (op == Op::kAdd && a.is(Type::kString) && b.is(Type::kString)) return make_string(a.s() + b.s());
    if (op == Op::kAdd && a.is(Type::kList) && b.is(Type::kList)) {
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return make_list(std::move(items), a.tuple);
    }
    if (op == Op::kMul && (a.is(Type::kString) || a.is(Type::kList) || b.is(Type::kString) || b.is(Type::kList))) {
      const Value& seq = a.is(Type::kString) || a.is(Type::kList) ? a : b;
      const Value& count = &seq == &a ? b : a;
      if (!count.is(Type::kInt) && !count.is(Type::kBool))
        eval_fail(cat("can't multiply sequence by non-int of type '", type_name(count), "'"));
      const int64_t n = std::max<int64_t>(0, as_int(count));
      const size_t unit = seq.is(Type::kString) ? seq.s().size() : seq.list->size();
      const size_t limit = seq.is(Type::kString) ? limits_.max_output_bytes : max_list_items();
      if (unit != 0 && static_cast<uint64_t>(n) > limit / unit)
        eval_fail(cat("a repeated sequence over the limit of ", limit));
      if (seq.is(Type::kString)) {
        std::string s;
        for (int64_t i = 0; i < n; ++i) s += seq.s();
        return make_string(std::move(s));
      }
      List items;
      for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.list->begin(), seq.list->end());
      return make_list(std::move(items), seq.tuple);
    }
    if (!is_number(a) || !is_number(b))
      eval_fail(cat("unsupported operand type(s) for ", sym, ": '", type_name(a), "' and '", type_name(b), "'"));
    if (op == Op::kDiv) {
      if (as_double(b) == 0) eval_fail("division by zero");
      return Value::of(as_double(a) / as_double(b));
    }
    if (a.is(Type::kFloat) || b.is(Type::kFloat) || (op == Op::kPow && as_int(b) < 0)) {
      const double x = as_double(a), y = as_double(b);
      switch (op) {
        case Op::kAdd: return Value::of(x + y);
        case Op::kSub: return Value::of(x - y);
        case Op::kMul: return Value::of(x * y);
        case Op::kPow: return Value::of(std::pow(x, y));
        default: {
          if (y == 0) eval_fail("float division by zero");
          const double q = std::floor(x / y);
          return Value::of(op == Op::kFloorDiv ? q : x - q * y);
        }
      }
    }
    const int64_t x = as_int(a), y = as_int(b);
    int64_t r = 0;
    bool overflow = false;
    switch (op) {
      case Op::kAdd: overflow = __builtin_add_overflow(x, y, &r); break;
      case Op::kSub: overflow = __builtin_sub_overflow(x, y, &r); break;
      case Op::kMul: overflow = __builtin_mul_overflow(x, y, &r); break;
      case Op::kPow:
        r = 1;
        for (int64_t i = 0; i < y && !overflow; ++i) overflow = __builtin_mul_overflow(r, x, &r);
        break;
      default: {  // Python's floor division and modulo: the remainder takes the divisor's sign
        if (y == 0) eval_fail("integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) eval_fail("integer overflow");
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        r = op == Op::kFloorDiv ? q : m;
      }
    }
    if (overflow) eval_fail("integer overflow");
    return Value::of(r);
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.type) {
      case Type::kString:
        if (!item.is(Type::kString))
          eval_fail(cat("'in <string>' requires string as left operand, not ", type_name(item)));
        charge(container.s().size());
        return container.s().find(item.s()) != std::string::npos;
      case Type::kList:
        return std::any_of(container.list->begin(), container.list->end(),
                           [&](const Value& v) { return equal(v, item); });
      case Type::kDict: return dict_find(*container.dict, item) != nullptr;
      case Type::kUndefined: return false;
      default: eval_fail(cat("argument of type '", type_name(container), "' is not iterable"));
    }
  }

  bool compare(Op op, const Value& a, const Value& b) {
    switch (op) {
      case Op::kEq: return equal(a, b);
      case Op::kNe: return !equal(a, b);
      case Op::kIn: return contains(b, a);
      case Op::kNotIn: return !contains(b, a);
      default: break;
    }
    if (a.is(Type::kUndefined)) undefined_error(a);
    if (b.is(Type::kUndefined)) undefined_error(b);
    int c = 0;
    if (is_number(a) && is_number(b)) {
      c = as_double(a) < as_double(b) ? -1 : as_double(a) > as_double(b) ? 1 : 0;
    } else if (a.is(Type::kString) && b.is(Type::kString)) {
      c = a.s().compare(b.s());  // byte order of UTF-8 is code point order
    } else {
      const char* sym = op == Op::kLt ? "<" : op == Op::kLe ? "<=" : op == Op::kGt ? ">" : ">=";
      eval_fail(cat("'", sym, "' not supported between instances of '", type_name(a), "' and '", type_name(b), "'"));
    }
    switch (op) {
      case Op::kLt: return c < 0;
      case Op::kLe: return c <= 0;
      case Op::kGt: return c > 0;
      default: return c >= 0;
    }
  }

  // ---- attributes, items, slices --------------------------------------------------------------

  static bool is_method(const Value& v, const std::string& name) {
    static const char* const kStr[] = {"strip",   "lstrip", "rstrip", "startswith", "endswith",
                                       "split",   "upper",  "lower",  "title",      "capitalize",
                                       "replace", "find",   "count",  "join",       "format"};
    static const char* const kDict[] = {"items", "keys", "values", "get"};
    if (v.is(Type::kString)) return std::find(std::begin(kStr), std::end(kStr), name) != std::end(kStr);
    if (v.is(Type::kDict)) return std::find(std::begin(kDict), std::end(kDict), name) != std::end(kDict);
    return false;
  }

  // obj.name: an attribute (a method) first, then an item, as Jinja2's getattr.
  Value get_attr(const Value& obj, const std::string& name) {
    if (obj.is(Type::kUndefined)) undefined_error(obj);
    if (is_method(obj, name)) return Value::function(name, std::make_shared<const Value>(obj));
    if (obj.is(Type::kDict) || obj.is(Type::kNamespace)) {
      if (const Value* v = dict_find(*obj.dict, Value::of(name))) return *v;
    }
    return Value::undefined(cat("'", type_name(obj), " object' has no attribute '", name, "'"));
  }

  // obj[key]: an item first, then an attribute, as Jinja2's getitem.
  Value get_item(const Value& obj, const Value& key) {
    if (obj.is(Type::kUndefined)) undefined_error(obj);
    if (obj.is(Type::kDict)) {
      if (const Value* v = dict_find(*obj.dict, key)) return *v;
    } else if ((obj.is(Type::kList) || obj.is(Type::kString)) && (key.is(Type::kInt) || key.is(Type::kBool))) {
      const std::vector<size_t> starts = obj.is(Type::kString) ? code_point_starts(obj.s()) : std::vector<size_t>{};
      const auto n = static_cast<int64_t>(obj.is(Type::kList) ? obj.list->size() : starts.size() - 1);
      int64_t i = as_int(key);
      if (i < 0) i += n;
      if (i >= 0 && i < n) {
        if (obj.is(Type::kList)) return (*obj.list)[static_cast<size_t>(i)];
        const auto at = static_cast<size_t>(i);
        return Value::of(obj.s().substr(starts[at], starts[at + 1] - starts[at]));
      }
    }
    if (key.is(Type::kString)) return get_attr(obj, key.s());
    return Value::undefined(cat(type_name(obj), " object has no element ", py_repr(key)));
  }

  Value slice(const Expr& e, const Scope& scope) {
    const Value obj = eval(*e.kids[0], scope);
    auto bound = [&](int k) -> std::optional<int64_t> {
      if (!e.kids[static_cast<size_t>(k)]) return std::nullopt;
      const Value v = eval(*e.kids[static_cast<size_t>(k)], scope);
      if (v.is(Type::kNone)) return std::nullopt;
      if (!v.is(Type::kInt) && !v.is(Type::kBool)) eval_fail("slice indices must be integers or None");
      return as_int(v);
    };
    const auto start = bound(1), stop = bound(2), step_opt = bound(3);
    line_ = e.line;
    if (obj.is(Type::kUndefined)) undefined_error(obj);
    const int64_t step = step_opt.value_or(1);
    if (step == 0) eval_fail("slice step cannot be zero");
    const std::vector<size_t> starts = obj.is(Type::kString) ? code_point_starts(obj.s()) : std::vector<size_t>{};
    int64_t n = 0;
    if (obj.is(Type::kList)) n = static_cast<int64_t>(obj.list->size());
    else if (obj.is(Type::kString)) n = static_cast<int64_t>(starts.size() - 1);
    else eval_fail(cat("'", type_name(obj), "' object is not subscriptable"));
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v < 0 ? *v + n : *v;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t lo = clamp(start, step > 0 ? 0 : n - 1), hi = clamp(stop, step > 0 ? n : -1);
    List items;
    std::string s;
    for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step) {
      if (obj.is(Type::kList)) {
        items.push_back((*obj.list)[static_cast<size_t>(i)]);
      } else {
        const auto at = static_cast<size_t>(i);
        s.append(obj.s(), starts[at], starts[at + 1] - starts[at]);
      }
    }
    return obj.is(Type::kList) ? make_list(std::move(items), obj.tuple) : make_string(std::move(s));
  }

  // ---- calls ----------------------------------------------------------------------------------

  Value call(const Value& callee, const Args& args) {
    if (callee.is(Type::kUndefined)) undefined_error(callee);
    if (!callee.is(Type::kFunction)) eval_fail(cat("'", type_name(callee), "' object is not callable"));
    if (callee.macro != nullptr) return call_macro(*callee.macro, args);
    if (callee.self) return call_method(*callee.self, callee.fn, args);
    const std::string& fn = callee.fn;
    if (fn == "raise_exception") throw EvalError{py_str(args.get(0, "message", Value::of(std::string()))), true};
    if (fn == "namespace" || fn == "dict") {
      Dict d;
      for (const auto& [k, v] : args.kw) dict_set(d, Value::of(k), v);
      Value made = Value::of(std::move(d), fn == "namespace" ? Type::kNamespace : Type::kDict);
      if (made.is(Type::kNamespace)) namespaces_.push_back(made.dict);
      return made;
    }
    if (fn == "range") return range(args);
    eval_fail(cat("unknown function '", fn, "'"));
  }

  Value range(const Args& args) {
    for (const Value& v : args.pos)
      if (!v.is(Type::kInt) && !v.is(Type::kBool))
        eval_fail(cat("'", type_name(v), "' object cannot be interpreted as an integer"));
    if (args.pos.empty() || args.pos.size() > 3) eval_fail("range expected 1 to 3 arguments");
    const int64_t start = args.pos.size() > 1 ? as_int(args.pos[0]) : 0;
    const int64_t stop = args.pos.size() > 1 ? as_int(args.pos[1]) : as_int(args.pos[0]);
    const int64_t step = args.pos.size() > 2 ? as_int(args.pos[2]) : 1;
    if (step == 0) eval_fail("range() arg 3 must not be zero");
    const double count =
        std::max(0.0, std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step)));
    if (count > static_cast<double>(limits_.max_iterations))
      eval_fail(cat("range() of ", static_cast<int64_t>(count), " items over the limit of ", limits_.max_iterations));
    List items;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) items.push_back(Value::of(i));
    return make_list(std::move(items));
  }

  Value call_macro(const Node& m, const Args& args) {
    if (args.pos.size() > m.names.size())
      eval_fail(cat("macro '", m.text, "' takes not more than ", m.names.size(), " arguments"));
    Scope s{root_, {}};
    for (size_t i = 0; i < m.names.size(); ++i) {
      Value v = args.get(i, m.names[i].c_str(), Value::undefined(cat("parameter '", m.names[i], "' was not provided")));
      if (v.is(Type::kUndefined) && m.defaults[i]) v = eval(*m.defaults[i], s);
      s.set(m.names[i], std::move(v));
    }
    std::string out;
    exec_body(m.body, s, out);
    return Value::of(std::move(out));
  }

  // ---- str and dict methods -------------------------------------------------------------------

  std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
    charge(s.size());
    if (chars.is(Type::kNone) || chars.is(Type::kUndefined)) {
      std::string_view v = s;
      if (left) v = py_lstrip(v);
      if (right) v = py_rstrip(v);
      return std::string(v);
    }
    if (!chars.is(Type::kString)) eval_fail("strip arg must be None or str");
    const std::vector<size_t> cs = code_point_starts(chars.s());
    auto in_set = [&](std::string_view cp) {
      for (size_t i = 0; i + 1 < cs.size(); ++i)
        if (chars.s().compare(cs[i], cs[i + 1] - cs[i], cp) == 0) return true;
      return false;
    };
    const std::vector<size_t> starts = code_point_starts(s);
    size_t lo = 0, hi = starts.size() - 1;
    while (left && lo < hi && in_set(std::string_view(s).substr(starts[lo], starts[lo + 1] - starts[lo]))) ++lo;
    while (right && hi > lo && in_set(std::string_view(s).substr(starts[hi - 1], starts[hi] - starts[hi - 1]))) --hi;
    return s.substr(starts[lo], starts[hi] - starts[lo]);
  }

  std::string replace(const std::string& s, const Value& old_v, const Value& new_v, int64_t count) {
    if (!old_v.is(Type::kString) || !new_v.is(Type::kString)) eval_fail("replace() arguments must be str");
    charge(s.size());
    const std::string& from = old_v.s();
    const std::string& to = new_v.s();
    std::string out;
    if (from.empty()) {  // Python inserts `to` around every character
      const auto starts = code_point_starts(s);
      for (size_t i = 0; i + 1 < starts.size(); ++i) {
        if (count < 0 || static_cast<int64_t>(i) < count) out += to;
        out.append(s, starts[i], starts[i + 1] - starts[i]);
        if (out.size() > limits_.max_output_bytes) break;
      }
      if (count < 0 || static_cast<int64_t>(starts.size() - 1) < count) out += to;
      return out;
    }
    size_t pos = 0;
    for (int64_t n = 0; count < 0 || n < count; ++n) {
      const size_t at = s.find(from, pos);
      if (at == std::string::npos) break;
      out.append(s, pos, at - pos);
      out += to;
      pos = at + from.size();
      if (out.size() > limits_.max_output_bytes)
        eval_fail(cat("a string over the limit of ", limits_.max_output_bytes, " bytes"));
    }
    out.append(s, pos);
    return out;
  }

  Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
    charge(s.size());
    List parts;
    if (sep.is(Type::kNone)) {  // runs of whitespace, no empty parts
      size_t pos = 0;
      while (true) {
        while (size_t n = py_space_at(s, pos)) pos += n;
        if (pos >= s.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          parts.push_back(Value::of(std::string(py_rstrip(std::string_view(s).substr(pos)))));
          break;
        }
        size_t end = pos;
        while (end < s.size() && py_space_at(s, end) == 0) {
          size_t len = 0;
          decode_utf8(s, end, &len);
          end += len;
        }
        parts.push_back(Value::of(s.substr(pos, end - pos)));
        pos = end;
      }
      return make_list(std::move(parts));
    }
    if (!sep.is(Type::kString)) eval_fail("must be str or None");
    if (sep.s().empty()) eval_fail("empty separator");
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      const size_t at = s.find(sep.s(), pos);
      if (at == std::string::npos) break;
      parts.push_back(Value::of(s.substr(pos, at - pos)));
      pos = at + sep.s().size();
    }
    parts.push_back(Value::of(s.substr(pos)));
    return make_list(std::move(parts));
  }

  bool affix(const std::string& s, const Value& arg, bool prefix) {
    auto one = [&](const Value& a) {
      if (!a.is(Type::kString))
        eval_fail(cat(prefix ? "startswith" : "endswith", " first arg must be str or a tuple of str"));
      const std::string& x = a.s();
      return x.size() <= s.size() && s.compare(prefix ? 0 : s.size() - x.size(), x.size(), x) == 0;
    };
    if (arg.is(Type::kList)) return std::any_of(arg.list->begin(), arg.list->end(), one);
    return one(arg);
  }

  Value call_method(const Value& self, const std::string& name, const Args& args) {
    if (self.is(Type::kDict)) {
      if (name == "get") {
        const Value* v = dict_find(*self.dict, args.get(0, "key"));
        return v != nullptr ? *v : args.get(1, "default");
      }
      List items;
      for (const auto& [k, v] : *self.dict)
        items.push_back(name == "keys" ? k : name == "values" ? v : Value::of(List{k, v}, true));
      return make_list(std::move(items));
    }
    if (self.is(Type::kInt) && name == "cycle") {  // loop.cycle(a, b, ...): self is loop.index0
      if (args.pos.empty()) eval_fail("no items for cycling given");
      return args.pos[static_cast<size_t>(self.integer) % args.pos.size()];
    }
    const std::string& s = self.s();
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return make_string(strip_chars(s, args.get(0, "chars"), name != "rstrip", name != "lstrip"));
    if (name == "upper") return make_string(py_upper(s));
    if (name == "lower") return make_string(py_lower(s));
    if (name == "title") return make_string(py_title(s, false));
    if (name == "capitalize") return make_string(py_capitalize(s));
    if (name == "startswith" || name == "endswith")
      return Value::of(affix(s, args.get(0, "prefix"), name == "startswith"));
    if (name == "split") {
      const Value maxsplit = args.get(1, "maxsplit", Value::of(int64_t{-1}));
      return split(s, args.get(0, "sep"), as_int(maxsplit));
    }
    if (name == "replace")
      return make_string(
          replace(s, args.get(0, "old"), args.get(1, "new"), as_int(args.get(2, "count", Value::of(int64_t{-1})))));
    if (name == "find" || name == "count") {
      const Value sub = args.get(0, "sub");
      if (!sub.is(Type::kString)) eval_fail(cat("must be str, not ", type_name(sub)));
      charge(s.size());
      if (name == "find") {
        const size_t at = s.find(sub.s());
        return Value::of(at == std::string::npos
                             ? int64_t{-1}
                             : static_cast<int64_t>(code_point_count(std::string_view(s).substr(0, at))));
      }
      if (sub.s().empty()) return Value::of(static_cast<int64_t>(code_point_count(s) + 1));
      int64_t n = 0;
      for (size_t at = s.find(sub.s()); at != std::string::npos; at = s.find(sub.s(), at + sub.s().size())) ++n;
      return Value::of(n);
    }
    if (name == "join") return make_string(join(args.get(0, "iterable"), s, true));
    eval_fail(cat("str.", name, "() is not supported"));
  }

  std::string join(const Value& seq, const std::string& sep, bool strict) {
    std::string out;
    const List items = iterate(seq);
    for (size_t i = 0; i < items.size(); ++i) {
      if (strict && !items[i].is(Type::kString))
        eval_fail(cat("sequence item ", i, ": expected str instance, ", type_name(items[i]), " found"));
      if (i) out += sep;
      out += py_str(items[i]);
      if (out.size() > limits_.max_output_bytes)
        eval_fail(cat("a string over the limit of ", limits_.max_output_bytes, " bytes"));
    }
    return out;
  }

  // ---- filters and tests ----------------------------------------------------------------------

  int64_t length(const Value& v) {
    switch (v.type) {
      case Type::kUndefined: return 0;
      case Type::kString: return static_cast<int64_t>(code_point_count(v.s()));
      case Type::kList: return static_cast<int64_t>(v.list->size());
      case Type::kDict: return static_cast<int64_t>(v.dict->size());
      default: eval_fail(cat("object of type '", type_name(v), "' has no len()"));
    }
  }

  Value to_int(const Value& v, const Value& fallback) {
    if (v.is(Type::kInt) || v.is(Type::kBool)) return Value::of(as_int(v));
    if (v.is(Type::kFloat) && std::isfinite(v.number) && std::fabs(v.number) < 9.2e18)
      return Value::of(static_cast<int64_t>(v.number));
    if (v.is(Type::kString)) {
      const std::string t(py_strip(v.s()));
      size_t used = 0;
      try {
        const int64_t i = std::stoll(t, &used);
        if (used == t.size()) return Value::of(i);
        const double d = std::stod(t, &used);
        if (used == t.size() && std::fabs(d) < 9.2e18) return Value::of(static_cast<int64_t>(d));
      } catch (const std::exception&) {
      }
    }
    return fallback;
  }

  // The attribute path of map/selectattr/join(attribute=...): "a.b" or an index.
  Value attribute(const Value& item, const Value& attr) {
    if (attr.is(Type::kInt)) return get_item(item, attr);
    Value v = item;
    const std::string path = py_str(attr);
    size_t pos = 0;
    while (true) {
      const size_t dot = path.find('.', pos);
      v = get_item(v, Value::of(path.substr(pos, dot - pos)));
      if (dot == std::string::npos) return v;
      pos = dot + 1;
    }
  }

  Value select(const std::string& name, const Value& v, const Args& args) {
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep = name == "select" || name == "selectattr";
    List out;
    for (const Value& item : iterate(v)) {
      count_iteration();
      const Value subject = by_attr ? attribute(item, args.get(0, "attribute")) : item;
      const size_t first_test_arg = by_attr ? 1 : 0;
      bool pass;
      if (args.pos.size() <= first_test_arg) {
        pass = truthy(subject);
      } else {
        Args test_args;
        test_args.pos.assign(args.pos.begin() + static_cast<long>(first_test_arg) + 1, args.pos.end());
        pass = test(py_str(args.pos[first_test_arg]), subject, test_args);
      }
      if (pass == keep) out.push_back(item);
    }
    return make_list(std::move(out));
  }

  Value filter(const std::string& name, const Value& v, const Args& args) {
    auto text = [&] { return py_str(v); };
    if (name == "trim") return make_string(strip_chars(text(), args.get(0, "chars"), true, true));
    if (name == "upper") return make_string(py_upper(text()));
    if (name == "lower") return make_string(py_lower(text()));
    if (name == "capitalize") return make_string(py_capitalize(text()));
    if (name == "title") return make_string(py_title(text(), true));
    if (name == "length" || name == "count") return Value::of(length(v));
    if (name == "default" || name == "d") {
      const bool boolean = truthy(args.get(1, "boolean", Value::of(false)));
      if (v.is(Type::kUndefined) || (boolean && !truthy(v)))
        return args.get(0, "default_value", Value::of(std::string()));
      return v;
    }
    if (name == "tojson") {
      const Value indent = args.get(0, "indent");
      const std::string json =
          to_json(v, indent.is(Type::kInt) ? static_cast<int>(std::clamp<int64_t>(indent.integer, 0, 64)) : -1);
      return make_string(json);
    }
    if (name == "string") return make_string(text());
    if (name == "safe") return v;
    if (name == "int") return to_int(v, args.get(0, "default", Value::of(int64_t{0})));
    if (name == "float") {
      if (is_number(v)) return Value::of(as_double(v));
      try {
        return Value::of(std::stod(std::string(py_strip(text()))));
      } catch (const std::exception&) {
        return args.get(0, "default", Value::of(0.0));
      }
    }
    if (name == "abs") {
      if (v.is(Type::kFloat)) return Value::of(std::fabs(v.number));
      if (!v.is(Type::kInt) && !v.is(Type::kBool)) eval_fail(cat("bad operand type for abs(): '", type_name(v), "'"));
      if (as_int(v) == INT64_MIN) eval_fail("integer overflow");
      return Value::of(std::abs(as_int(v)));
    }
    if (name == "replace") {
      return make_string(replace(text(), args.get(0, "old"), args.get(1, "new"),
                                 as_int(args.get(2, "count", Value::of(int64_t{-1})))));
    }
    if (name == "join") {
      const Value attr = args.get(1, "attribute");
      Value seq = v;
      if (!attr.is(Type::kNone)) {
        List mapped;
        for (const Value& item : iterate(v)) mapped.push_back(attribute(item, attr));
        seq = make_list(std::move(mapped));
      }
      return make_string(join(seq, py_str(args.get(0, "d", Value::of(std::string()))), false));
    }
    if (name == "first" || name == "last") {
      const List items = iterate(v);
      if (items.empty()) return Value::undefined(cat("No ", name, " item, sequence was empty."));
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return make_list(iterate(v));
    if (name == "reverse") {
      if (v.is(Type::kString)) {
        const auto starts = code_point_starts(v.s());
        std::string out;
        for (size_t i = starts.size() - 1; i > 0; --i) out.append(v.s(), starts[i - 1], starts[i] - starts[i - 1]);
        return make_string(std::move(out));
      }
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      return make_list(std::move(items));
    }
    if (name == "items") {
      if (v.is(Type::kUndefined)) return make_list({});
      if (!v.is(Type::kDict)) eval_fail(cat("can only get item pairs from a mapping, not '", type_name(v), "'"));
      return call_method(v, "items", {});
    }
    if (name == "map") {
      const Value attr = args.named("attribute");
      List out;
      for (const Value& item : iterate(v)) {
        count_iteration();
        if (!attr.is(Type::kNone)) {
          out.push_back(attribute(item, attr));
        } else {
          if (args.pos.empty()) eval_fail("map requires a filter name or attribute=");
          Args rest;
          rest.pos.assign(args.pos.begin() + 1, args.pos.end());
          out.push_back(filter(py_str(args.pos[0]), item, rest));
        }
      }
      return make_list(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
      return select(name, v, args);
    eval_fail(cat("no filter named '", name, "'"));
  }

  bool test(const std::string& name, const Value& v, const Args& args) {
    if (name == "defined") return !v.is(Type::kUndefined);
    if (name == "undefined") return v.is(Type::kUndefined);
    if (name == "none") return v.is(Type::kNone);
    if (name == "boolean") return v.is(Type::kBool);
    if (name == "true") return v.is(Type::kBool) && v.boolean;
    if (name == "false") return v.is(Type::kBool) && !v.boolean;
    if (name == "integer") return v.is(Type::kInt);
    if (name == "float") return v.is(Type::kFloat);
    if (name == "number") return is_number(v);
    if (name == "string") return v.is(Type::kString);
    if (name == "mapping") return v.is(Type::kDict);
    if (name == "iterable")
      return v.is(Type::kString) || v.is(Type::kList) || v.is(Type::kDict) || v.is(Type::kUndefined);
    if (name == "sequence")
      return v.is(Type::kString) || v.is(Type::kList) || v.is(Type::kDict) || v.is(Type::kUndefined);
    if (name == "callable") return v.is(Type::kFunction);
    if (name == "lower") return v.is(Type::kString) && py_lower(v.s()) == v.s();
    if (name == "upper") return v.is(Type::kString) && py_upper(v.s()) == v.s();
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (!v.is(Type::kInt) && !v.is(Type::kBool))
        eval_fail(cat("the '", name, "' test needs an integer, not '", type_name(v), "'"));
      const int64_t d = name == "divisibleby" ? as_int(args.get(0, "num")) : 2;
      if (d == 0) eval_fail("integer division or modulo by zero");
      const int64_t r = as_int(v) % d;
      return name == "odd" ? r != 0 : r == 0;
    }
    static const std::pair<const char*, Op> kCompare[] = {
        {"eq", Op::kEq}, {"equalto", Op::kEq}, {"==", Op::kEq},       {"ne", Op::kNe},
        {"!=", Op::kNe}, {"lt", Op::kLt},      {"lessthan", Op::kLt}, {"<", Op::kLt},
        {"le", Op::kLe}, {"<=", Op::kLe},      {"gt", Op::kGt},       {"greaterthan", Op::kGt},
        {">", Op::kGt},  {"ge", Op::kGe},      {">=", Op::kGe},       {"in", Op::kIn}};
    for (const auto& [test_name, op] : kCompare)
      if (name == test_name) return compare(op, v, args.get(0, "other"));
    eval_fail(cat("no test named '", name, "'"));
  }

  const Limits& limits_;
  std::vector<std::shared_ptr<Dict>> namespaces_;
  const Scope* root_ = nullptr;  // where macros look up names: the template's globals and top-level sets
  int line_ = 0;
  int depth_ = 0;
  int64_t iterations_ = 0;
  int64_t work_ = 0;
};

}  // namespace

std::string Template::render(const nlohmann::ordered_json& globals, const Limits& limits) const {
  if (!globals.is_object()) fail("chat template globals must be a JSON object");
  return Evaluator(limits).run(*root_, globals);
}

}  // namespace gptq::chat::jinja
