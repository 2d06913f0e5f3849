// A Jinja2 interpreter for the subset that chat templates use, configured as Hugging Face
// transformers configures Jinja2 for apply_chat_template: trim_blocks, lstrip_blocks, loop controls
// (break/continue), no autoescape, a sandbox (no mutating methods), tojson as json.dumps with
// ensure_ascii=False, and the globals raise_exception, namespace and range.
//
// Hostile templates cannot crash or hang the process: nesting depth, output size, loop iterations and
// the bytes that string operations touch are bounded (Limits); exceeding one is a gptq::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace gptq::chat::jinja {

struct Limits {
  size_t max_output_bytes = size_t{16} << 20;  // also the size of any one string
  int64_t max_iterations = 1'000'000;          // loop iterations in one render; items of one list
  int64_t max_work_bytes = int64_t{256} << 20;  // bytes made, copied or scanned by string and list operations
  int max_depth = 256;                         // evaluation recursion (expressions, blocks, macro calls)
};

// Deeper syntax nesting than this (brackets, blocks, operator chains) is a syntax error.
inline constexpr int kMaxSyntaxDepth = 128;

struct Node;

class Template {
 public:
  // Parses `source`; a syntax error is a gptq::Error "chat template syntax error at line N: ...".
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `globals` (a JSON object, its values seen as Python's json.loads makes them) next to
  // the built-in globals. An error is a gptq::Error "chat template error at line N: ...".
  std::string render(const nlohmann::ordered_json& globals, const Limits& limits = {}) const;

 private:
  std::unique_ptr<Node> root_;
};

}  // namespace gptq::chat::jinja
