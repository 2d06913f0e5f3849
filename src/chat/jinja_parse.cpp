// Lexer and parser: template text → tokens → syntax tree, following Jinja2's lexer.py and parser.py
// (same whitespace control, operator precedence and error cases) for the subset in jinja.h.
#include <charconv>
#include <cstring>
#include <initializer_list>

#include "chat/jinja.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_text.h"
#include "tokenizer/unicode.h"
#include "gptq/error.h"

namespace gptq::chat::jinja {
namespace {

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEnd };

struct Token {
  Tok type;
  int line;
  std::string text;  // text, name, operator, or the unescaped string literal
  int64_t int_value = 0;
  double float_value = 0;
};

[[noreturn]] void syntax_error(int line, const std::string& what) {
  fail("chat template syntax error at line ", line, ": ", what);
}

bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Python's "unicode-escape" decoding of a string literal's body, as Jinja2 applies it.
std::string unescape(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    switch (c) {
      case '\n': break;  // line continuation
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        char32_t cp = 0;
        for (size_t k = 1; k <= digits; ++k) {
          if (i + k >= body.size() || !is_hex(body[i + k])) fail("truncated \\", c, " escape in a string literal");
          const char h = body[i + k];
          cp = cp * 16 + static_cast<char32_t>(is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        if (cp > 0x10FFFF) fail("\\", c, " escape beyond U+10FFFF in a string literal");
        tok::utf8_append(out, cp);
        i += digits;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          char32_t cp = 0;
          size_t k = 0;
          for (; k < 3 && i + k < body.size() && body[i + k] >= '0' && body[i + k] <= '7'; ++k)
            cp = cp * 8 + static_cast<char32_t>(body[i + k] - '0');
          tok::utf8_append(out, cp);
          i += k - 1;
        } else {
          out += '\\';  // Python keeps unknown escapes as they are
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    // Jinja2 normalizes newlines before lexing and drops one trailing newline (keep_trailing_newline
    // is off).
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    // line_starting: the previous match ended a line (or this is the start), so lstrip_blocks may
    // strip the indentation before a tag even without a newline in the text before it.
    bool line_starting = true;
    while (pos_ < src_.size()) {
      const size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      if (tag == src_.size()) {
        emit_text(std::move(text));
        advance_to(tag);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (sign == '-') {
        text.resize(py_rstrip(text).size());
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: a block or comment tag preceded on its line by whitespace only.
        const size_t line_start = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((line_start > 0 || line_starting) && line_start < text.size() &&
            py_lstrip(std::string_view(text).substr(line_start)).empty())
          text.resize(line_start);
      }
      emit_text(std::move(text));
      advance_to(tag + 2 + (sign == '-' || sign == '+' ? 1 : 0));
      if (kind == '#') {
        lex_comment_end();
      } else {
        tokens_.push_back({kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, line_, "", 0, 0});
        lex_tag(kind == '{' ? '}' : '%');
      }
      line_starting = pos_ > 0 && src_[pos_ - 1] == '\n';
    }
    tokens_.push_back({Tok::kEnd, line_, "", 0, 0});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t p = src_.find('{', from); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    }
    return src_.size();
  }

  void advance_to(size_t to) {
    for (; pos_ < to; ++pos_) line_ += src_[pos_] == '\n';
  }

  void emit_text(std::string text) {
    if (!text.empty()) tokens_.push_back({Tok::kText, line_, std::move(text), 0, 0});
  }

  // After "-X}": all whitespace goes; after "X}" (trim_blocks) one newline; after "+X}" nothing.
  void skip_after_end(char before_brace, bool trim) {
    if (before_brace == '-') {
      while (size_t n = py_space_at(src_, pos_)) advance_to(pos_ + n);
    } else if (trim && before_brace != '+' && pos_ < src_.size() && src_[pos_] == '\n') {
      advance_to(pos_ + 1);
    }
  }

  void lex_comment_end() {
    const int start_line = line_;
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) syntax_error(start_line, "unclosed comment");
    const char before = end > pos_ ? src_[end - 1] : '\0';
    advance_to(end + 2);
    skip_after_end(before, true);
  }

  // The tokens inside {{ }} or {% %}, up to and including the end delimiter. As in Jinja2, "}}" and
  // "%}" end the tag only outside brackets, so "{{ {'a': {'b': 1}} }}" is one expression.
  void lex_tag(char end_char) {
    const int start_line = line_;
    std::vector<char> brackets;
    while (true) {
      while (size_t n = py_space_at(src_, pos_)) advance_to(pos_ + n);
      if (pos_ >= src_.size()) syntax_error(start_line, cat("unexpected end of template, expected '", end_char, "}'"));
      const char c = src_[pos_];
      if (brackets.empty()) {
        const bool signed_end =
            (c == '-' || (c == '+' && end_char == '%')) && src_.compare(pos_ + 1, 2, std::string{end_char, '}'}) == 0;
        if (signed_end || src_.compare(pos_, 2, std::string{end_char, '}'}) == 0) {
          advance_to(pos_ + (signed_end ? 3 : 2));
          tokens_.push_back({end_char == '}' ? Tok::kVarEnd : Tok::kBlockEnd, line_, "", 0, 0});
          skip_after_end(signed_end ? c : '\0', end_char == '%');
          return;
        }
      }
      if (is_name_start(c)) {
        size_t end = pos_ + 1;
        while (end < src_.size() && (is_name_start(src_[end]) || is_digit(src_[end]))) ++end;
        push(Tok::kName, src_.substr(pos_, end - pos_), end);
      } else if (is_digit(c)) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        lex_operator(brackets);
      }
    }
  }

  void push(Tok type, std::string text, size_t end) {
    tokens_.push_back({type, line_, std::move(text), 0, 0});
    advance_to(end);
  }

  void lex_number() {
    auto digits = [&](size_t p) {
      while (p < src_.size() && (is_digit(src_[p]) || (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1]))))
        ++p;
      return p;
    };
    size_t end = digits(pos_);
    bool is_float = false;
    // No float right after a dot: "x.0.1" is x[0][1], as Jinja2's lookbehind has it.
    const bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';
    if (!after_dot && end + 1 < src_.size() && src_[end] == '.' && is_digit(src_[end + 1])) {
      end = digits(end + 1);
      is_float = true;
    }
    if (!after_dot && end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t p = end + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && is_digit(src_[p])) {
        end = digits(p);
        is_float = true;
      }
    }
    std::string text;
    for (size_t p = pos_; p < end; ++p)
      if (src_[p] != '_') text += src_[p];
    Token t{is_float ? Tok::kFloat : Tok::kInt, line_, text, 0, 0};
    const char* first = text.data();
    const char* last = text.data() + text.size();
    const auto r = is_float ? std::from_chars(first, last, t.float_value) : std::from_chars(first, last, t.int_value);
    if (r.ec != std::errc() || r.ptr != last) syntax_error(line_, cat("number out of range: ", text));
    tokens_.push_back(std::move(t));
    advance_to(end);
  }

  void lex_string(char quote) {
    const int start_line = line_;
    size_t p = pos_ + 1;
    while (p < src_.size() && src_[p] != quote) p += src_[p] == '\\' ? 2 : 1;
    if (p >= src_.size()) syntax_error(start_line, "unterminated string literal");
    std::string value;
    try {
      value = unescape(std::string_view(src_).substr(pos_ + 1, p - pos_ - 1));
    } catch (const Error& e) {
      syntax_error(start_line, e.what());
    }
    tokens_.push_back({Tok::kString, line_, std::move(value), 0, 0});
    advance_to(p + 1);
  }

  void lex_operator(std::vector<char>& brackets) {
    static constexpr const char* kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo) {
      if (src_.compare(pos_, 2, op) == 0) return push(Tok::kOp, op, pos_ + 2);
    }
    const char c = src_[pos_];
    if (std::strchr("+-*/%~<>=()[]{},.:|", c) == nullptr) {
      size_t len = 0;
      std::string ch;
      tok::utf8_append(ch, decode_utf8(src_, pos_, &len));
      syntax_error(line_, cat("unexpected character '", ch, "'"));
    }
    if (c == '(' || c == '[' || c == '{') brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty() || brackets.back() != c) syntax_error(line_, cat("unexpected '", c, "'"));
      brackets.pop_back();
    }
    push(Tok::kOp, std::string(1, c), pos_ + 1);
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  std::unique_ptr<Node> parse_template() {
    auto root = std::make_unique<Node>();
    root->kind = NodeKind::kSetBlock;  // a body rendered to a string
    root->body = parse_body({});
    return root;
  }

 private:
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t ahead = 1) const { return toks_[std::min(pos_ + ahead, toks_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::kName && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::kText: return "text";
      case Tok::kVarBegin: return "'{{'";
      case Tok::kVarEnd: return "'}}'";
      case Tok::kBlockBegin: return "'{%'";
      case Tok::kBlockEnd: return "'%}'";
      case Tok::kString: return "a string";
      case Tok::kInt:
      case Tok::kFloat: return "a number";
      case Tok::kEnd: return "the end of the template";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void unexpected(const char* expected) const {
    syntax_error(cur().line, cat("expected ", expected, ", got ", describe(cur())));
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) unexpected(cat("'", op, "'").c_str());
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) unexpected("a name");
    std::string name = cur().text;
    next();
    return name;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) unexpected("'%}'");
    next();
  }

  // ---- statements ----------------------------------------------------------------------------

  // Nodes up to a block tag named in `stops` (left unconsumed: the tag's name is current) or to the
  // end of the template when `stops` is empty.
  NodeList parse_body(std::initializer_list<const char*> stops, const char* opener = nullptr, int opener_line = 0) {
    if (++nesting_ > kMaxSyntaxDepth) syntax_error(cur().line, cat("blocks nested deeper than ", kMaxSyntaxDepth));
    NodeList body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEnd) {
        if (opener != nullptr)
          syntax_error(t.line, cat("unexpected end of template: '", opener, "' at line ", opener_line,
                                   " is never closed (expected '", *(stops.end() - 1), "')"));
        break;
      }
      if (t.type == Tok::kText) {
        auto n = node(NodeKind::kText);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == Tok::kVarBegin) {
        next();
        auto n = node(NodeKind::kOutput);
        n->expr = parse_tuple(true);
        if (cur().type != Tok::kVarEnd) unexpected("'}}'");
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::kBlockBegin) {
        const Token& name = peek();
        bool stop = false;
        for (const char* s : stops) stop = stop || (name.type == Tok::kName && name.text == s);
        if (stop) {
          next();
          break;
        }
        next();
        parse_statement(body);
      } else {
        unexpected("text or a tag");
      }
    }
    --nesting_;
    return body;
  }

  std::unique_ptr<Node> node(NodeKind kind) const {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = cur().line;
    return n;
  }

  // After "{%": one statement, appended to `body`.
  void parse_statement(NodeList& body) {
    if (cur().type != Tok::kName) unexpected("a statement name");
    const std::string name = cur().text;
    const int line = cur().line;
    next();
    if (name == "if") {
      body.push_back(parse_if(line));
    } else if (name == "for") {
      body.push_back(parse_for(line));
    } else if (name == "set") {
      body.push_back(parse_set(line));
    } else if (name == "macro") {
      body.push_back(parse_macro(line));
    } else if (name == "break" || name == "continue") {
      if (loops_ == 0) syntax_error(line, cat("'", name, "' outside of a loop"));
      auto n = node(name == "break" ? NodeKind::kBreak : NodeKind::kContinue);
      expect_block_end();
      body.push_back(std::move(n));
    } else if (name == "generation") {
      // transformers' {% generation %} marks assistant text for its token masks; it renders its body.
      expect_block_end();
      NodeList inner = parse_body({"endgeneration"}, "generation", line);
      next();
      expect_block_end();
      for (auto& n : inner) body.push_back(std::move(n));
    } else {
      syntax_error(line, cat("unknown or unexpected tag '", name, "'"));
    }
  }

  std::unique_ptr<Node> parse_if(int line) {
    auto n = node(NodeKind::kIf);
    n->line = line;
    while (true) {
      Branch b;
      b.cond = parse_tuple(true);
      expect_block_end();
      b.body = parse_body({"elif", "else", "endif"}, "if", line);
      n->branches.push_back(std::move(b));
      const std::string tag = cur().text;
      next();
      if (tag == "elif") continue;
      if (tag == "else") {
        expect_block_end();
        n->else_body = parse_body({"endif"}, "if", line);
        next();
      }
      expect_block_end();
      return n;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names{expect_name()};
    while (skip_op(",")) {
      if (cur().type != Tok::kName || is_name("in")) break;
      names.push_back(expect_name());
    }
    return names;
  }

  std::unique_ptr<Node> parse_for(int line) {
    auto n = node(NodeKind::kFor);
    n->line = line;
    n->names = parse_targets();
    if (!skip_name("in")) unexpected("'in'");
    n->expr = parse_tuple(false);
    if (skip_name("if")) n->cond = parse_expression(true);
    if (is_name("recursive")) syntax_error(cur().line, "recursive loops are not supported");
    expect_block_end();
    ++loops_;
    n->body = parse_body({"else", "endfor"}, "for", line);
    --loops_;  // Jinja2 treats break/continue in the else block as outside the loop
    if (cur().text == "else") {
      next();
      expect_block_end();
      n->else_body = parse_body({"endfor"}, "for", line);
    }
    next();
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_set(int line) {
    auto n = node(NodeKind::kSet);
    n->line = line;
    if (peek().type == Tok::kOp && peek().text == ".") {
      n->names.push_back(expect_name());
      next();
      n->attr = expect_name();
    } else {
      n->names = parse_targets();
    }
    if (skip_op("=")) {
      n->expr = parse_tuple(true);
      expect_block_end();
      return n;
    }
    if (n->names.size() != 1 || !n->attr.empty()) unexpected("'='");
    n->kind = NodeKind::kSetBlock;
    expect_block_end();
    n->body = parse_body({"endset"}, "set", line);
    next();
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_macro(int line) {
    auto n = node(NodeKind::kMacro);
    n->line = line;
    n->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!n->names.empty()) expect_op(",");
      if (is_op(")")) break;
      n->names.push_back(expect_name());
      n->defaults.push_back(skip_op("=") ? parse_expression(true) : nullptr);
    }
    next();
    expect_block_end();
    const int loops = loops_;
    loops_ = 0;  // a loop around the macro's definition is not a loop around its body
    n->body = parse_body({"endmacro"}, "macro", line);
    loops_ = loops;
    next();
    if (cur().type == Tok::kName && cur().text == n->text) next();
    expect_block_end();
    return n;
  }

  // ---- expressions (precedence from loosest to tightest, as in Jinja2's parser) ---------------

  static void add_depth(Expr& e, const ExprPtr& kid) {
    if (!kid) return;
    e.depth = std::max(e.depth, kid->depth + 1);
    if (e.depth > kMaxSyntaxDepth) syntax_error(e.line, cat("expression nested deeper than ", kMaxSyntaxDepth));
  }
  ExprPtr expr(ExprKind kind, int line, std::vector<ExprPtr> kids) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    for (const auto& k : kids) add_depth(*e, k);
    e->kids = std::move(kids);
    return e;
  }
  template <typename... Kids>
  ExprPtr expr(ExprKind kind, int line, Kids&&... kids) {
    std::vector<ExprPtr> v;
    (v.push_back(std::forward<Kids>(kids)), ...);
    return expr(kind, line, std::move(v));
  }
  ExprPtr binary(Op op, ExprPtr a, ExprPtr b) {
    const int line = a->line;
    auto e = expr(ExprKind::kBinary, line, std::move(a), std::move(b));
    e->op = op;
    return e;
  }

  // Jinja2's parse_tuple: "a, b" is a tuple wherever a whole expression stands ({{ }}, set, for ... in).
  ExprPtr parse_tuple(bool with_condexpr, bool in_parens = false) {
    const int line = cur().line;
    if (in_parens && is_op(")")) return expr(ExprKind::kTuple, line, std::vector<ExprPtr>{});
    std::vector<ExprPtr> items;
    items.push_back(parse_expression(with_condexpr));
    bool is_tuple = false;
    while (skip_op(",")) {
      is_tuple = true;
      if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || is_op(")") || is_name("if")) break;
      items.push_back(parse_expression(with_condexpr));
    }
    if (!is_tuple) return std::move(items[0]);
    return expr(ExprKind::kTuple, line, std::move(items));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    ExprPtr e = parse_or();
    while (with_condexpr && is_name("if")) {
      const int line = cur().line;
      next();
      ExprPtr cond = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_expression(true) : nullptr;
      e = expr(ExprKind::kCondition, line, std::move(cond), std::move(e), std::move(otherwise));
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (skip_name("or")) e = binary(Op::kOr, std::move(e), parse_and());
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (skip_name("and")) e = binary(Op::kAnd, std::move(e), parse_not());
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const int line = cur().line;
      next();
      auto e = expr(ExprKind::kUnary, line, parse_not());
      e->op = Op::kNot;
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    std::vector<ExprPtr> kids;
    std::vector<Op> ops;
    while (true) {
      static constexpr std::pair<const char*, Op> kOps[] = {{"==", Op::kEq}, {"!=", Op::kNe}, {"<", Op::kLt},
                                                            {"<=", Op::kLe}, {">", Op::kGt},  {">=", Op::kGe}};
      bool found = false;
      for (const auto& [text, op] : kOps) {
        if (skip_op(text)) {
          ops.push_back(op);
          found = true;
          break;
        }
      }
      if (!found && skip_name("in")) {
        ops.push_back(Op::kIn);
      } else if (!found && is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        next();
        next();
        ops.push_back(Op::kNotIn);
      } else if (!found) {
        break;
      }
      if (kids.empty()) kids.push_back(std::move(first));
      kids.push_back(parse_math1());
    }
    if (kids.empty()) return first;
    auto e = expr(ExprKind::kCompare, line, std::move(kids));
    e->ops = std::move(ops);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Op op = is_op("+") ? Op::kAdd : Op::kSub;
      next();
      e = binary(op, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (skip_op("~")) e = binary(Op::kConcat, std::move(e), parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (true) {
      Op op;
      if (is_op("*")) op = Op::kMul;
      else if (is_op("/")) op = Op::kDiv;
      else if (is_op("//")) op = Op::kFloorDiv;
      else if (is_op("%")) op = Op::kMod;
      else break;
      next();
      e = binary(op, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (skip_op("**")) e = binary(Op::kPow, std::move(e), parse_unary(true));
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    // Each level of brackets passes here once: bound it before the C++ stack is at risk.
    if (++nesting_ > kMaxSyntaxDepth) syntax_error(cur().line, cat("expression nested deeper than ", kMaxSyntaxDepth));
    const int line = cur().line;
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Op op = is_op("-") ? Op::kNeg : Op::kPos;
      next();
      e = expr(ExprKind::kUnary, line, parse_unary(false));
      e->op = op;
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filters(std::move(e));
    --nesting_;
    return e;
  }

  ExprPtr literal(Literal value, int line) {
    auto e = expr(ExprKind::kLiteral, line, std::vector<ExprPtr>{});
    e->literal = std::move(value);
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    const int line = t.line;
    switch (t.type) {
      case Tok::kName: {
        const std::string name = t.text;
        next();
        if (name == "true" || name == "True") return literal(true, line);
        if (name == "false" || name == "False") return literal(false, line);
        if (name == "none" || name == "None") return literal(std::monostate{}, line);
        auto e = expr(ExprKind::kName, line, std::vector<ExprPtr>{});
        e->name = name;
        return e;
      }
      case Tok::kString: {
        std::string s;
        while (cur().type == Tok::kString) {  // adjacent literals concatenate, as in Python
          s += cur().text;
          next();
        }
        return literal(std::move(s), line);
      }
      case Tok::kInt: {
        const int64_t v = t.int_value;
        next();
        return literal(v, line);
      }
      case Tok::kFloat: {
        const double v = t.float_value;
        next();
        return literal(v, line);
      }
      default: break;
    }
    if (skip_op("(")) {
      ExprPtr e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      std::vector<ExprPtr> items;
      while (!is_op("]")) {
        if (!items.empty()) expect_op(",");
        if (is_op("]")) break;
        items.push_back(parse_expression(true));
      }
      next();
      return expr(ExprKind::kList, line, std::move(items));
    }
    if (skip_op("{")) {
      std::vector<ExprPtr> items;
      while (!is_op("}")) {
        if (!items.empty()) expect_op(",");
        if (is_op("}")) break;
        items.push_back(parse_expression(true));
        expect_op(":");
        items.push_back(parse_expression(true));
      }
      next();
      return expr(ExprKind::kDict, line, std::move(items));
    }
    unexpected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const int line = cur().line;
      if (skip_op(".")) {
        if (cur().type == Tok::kInt) {
          ExprPtr index = literal(cur().int_value, line);
          next();
          e = expr(ExprKind::kItem, line, std::move(e), std::move(index));
        } else {
          std::string name = expect_name();
          e = expr(ExprKind::kAttr, line, std::move(e));
          e->name = std::move(name);
        }
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), line);
        expect_op("]");
      } else if (is_op("(")) {
        e = parse_call(ExprKind::kCall, "", std::move(e));
      } else {
        return e;
      }
    }
  }

  // After "[": an index, or a slice [start:stop:step] with any part left out.
  ExprPtr parse_subscript(ExprPtr target, int line) {
    ExprPtr start = is_op(":") ? nullptr : parse_expression(true);
    if (!skip_op(":")) return expr(ExprKind::kItem, line, std::move(target), std::move(start));
    ExprPtr stop = is_op(":") || is_op("]") ? nullptr : parse_expression(true);
    ExprPtr step;
    if (skip_op(":") && !is_op("]")) step = parse_expression(true);
    return expr(ExprKind::kSlice, line, std::move(target), std::move(start), std::move(stop), std::move(step));
  }

  // "( args )" after a callee, filter or test: positional arguments then name=value ones.
  ExprPtr parse_call(ExprKind kind, std::string name, ExprPtr target) {
    const int line = cur().line;
    expect_op("(");
    std::vector<ExprPtr> kids;
    kids.push_back(std::move(target));
    std::vector<std::pair<std::string, ExprPtr>> kwargs;
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = cur().text;
        next();
        next();
        kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!kwargs.empty()) syntax_error(cur().line, "a positional argument after a keyword argument");
        kids.push_back(parse_expression(true));
      }
    }
    next();
    auto e = expr(kind, line, std::move(kids));
    for (const auto& kw : kwargs) add_depth(*e, kw.second);
    e->name = std::move(name);
    e->kwargs = std::move(kwargs);
    return e;
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      const int line = cur().line;
      if (skip_op("|")) {
        std::string name = expect_name();
        if (is_op("(")) {
          e = parse_call(ExprKind::kFilter, std::move(name), std::move(e));
        } else {
          e = expr(ExprKind::kFilter, line, std::move(e));
          e->name = std::move(name);
        }
      } else if (skip_name("is")) {
        const bool negated = skip_name("not");
        std::string name = expect_name();
        const Token& t = cur();
        if (is_op("(")) {
          e = parse_call(ExprKind::kTest, std::move(name), std::move(e));
        } else if ((t.type == Tok::kName || t.type == Tok::kString || t.type == Tok::kInt || t.type == Tok::kFloat ||
                    is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          // "x is divisibleby 3": one argument without parentheses.
          ExprPtr arg = parse_postfix(parse_primary());
          e = expr(ExprKind::kTest, line, std::move(e), std::move(arg));
          e->name = std::move(name);
        } else {
          e = expr(ExprKind::kTest, line, std::move(e));
          e->name = std::move(name);
        }
        e->negated = negated;
      } else if (is_op("(")) {
        e = parse_call(ExprKind::kCall, "", std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int loops_ = 0;
};

}  // namespace

Template::Template(std::string_view source) : root_(Parser(Lexer(source).run()).parse_template()) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

}  // namespace gptq::chat::jinja
