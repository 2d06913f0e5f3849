// The syntax tree of a parsed Jinja template (jinja_parse.cpp builds it, jinja_eval.cpp walks it).
// One generic node per expression and per statement: the few fields a kind uses are listed beside it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace gptq::chat::jinja {

enum class Op {
  kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow, kConcat,  // arithmetic, `~`
  kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn,               // comparisons
  kAnd, kOr, kNot, kNeg, kPos,                             // logic, unary signs
};

// none (monostate), bool, int, float, string.
using Literal = std::variant<std::monostate, bool, int64_t, double, std::string>;

enum class ExprKind {
  kLiteral,    // literal
  kName,       // name
  kList,       // kids: the items
  kTuple,      // kids: the items
  kDict,       // kids: key, value, key, value, ...
  kAttr,       // kids[0] . name
  kItem,       // kids[0] [ kids[1] ]
  kSlice,      // kids[0] [ kids[1] : kids[2] : kids[3] ]; an absent bound is null
  kCall,       // kids[0] ( kids[1..], kwargs )
  kFilter,     // kids[0] | name ( kids[1..], kwargs )
  kTest,       // kids[0] is [not: negated] name ( kids[1..] )
  kUnary,      // op kids[0]
  kBinary,     // kids[0] op kids[1]
  kCompare,    // kids[0] ops[0] kids[1] ops[1] kids[2] ... (chained as Python does)
  kCondition,  // kids[1] if kids[0] else kids[2]; no else: kids[2] is null (undefined)
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind;
  int line = 0;
  int depth = 1;  // of the subtree, bounded by the parser so that walking it cannot exhaust the stack
  Op op{};
  std::vector<Op> ops;
  bool negated = false;
  std::string name;
  Literal literal;
  std::vector<ExprPtr> kids;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodeList = std::vector<std::unique_ptr<Node>>;

struct Branch {
  ExprPtr cond;
  NodeList body;
};

enum class NodeKind {
  kText,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches (if, elif...), else_body
  kFor,       // for names in expr [if cond]: body, else_body
  kSet,       // set names = expr; set names[0].attr = expr
  kSetBlock,  // set names[0]: body rendered to a string
  kMacro,     // macro text(names with defaults): body
  kBreak,
  kContinue,
};

struct Node {
  NodeKind kind;
  int line = 0;
  std::string text;
  std::string attr;
  std::vector<std::string> names;
  std::vector<ExprPtr> defaults;  // kMacro: one per parameter, null when it has none
  ExprPtr expr;
  ExprPtr cond;
  std::vector<Branch> branches;
  NodeList body;
  NodeList else_body;
};

}  // namespace gptq::chat::jinja
