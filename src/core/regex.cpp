#include "core/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "gptq/error.h"

namespace gptq {

namespace {

// Length of the UTF-8 sequence that starts with `lead` (text is valid UTF-8).
size_t utf8_length(unsigned char lead) { return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  if (code == nullptr)
    fail("regex /", pattern, "/ does not compile at offset ", err_offset, ": ", pcre2_message(err));
  code_ = code;
  // JIT is an optimisation only: without it (unsupported CPU, SELinux) the interpreter still works.
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  pcre2_match_context* mctx = pcre2_match_context_create(nullptr);
  // Patterns like \s+(?!\S) backtrack over whole runs of spaces; the default 32 KiB JIT stack
  // overflows on long runs, so give the JIT room to grow (reserved lazily by PCRE2).
  pcre2_jit_stack* stack = jit_ ? pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr) : nullptr;
  if (stack != nullptr) pcre2_jit_stack_assign(mctx, nullptr, stack);
  struct Cleanup {
    pcre2_match_data* md;
    pcre2_match_context* mctx;
    pcre2_jit_stack* stack;
    ~Cleanup() {
      pcre2_match_data_free(md);
      pcre2_match_context_free(mctx);
      if (stack != nullptr) pcre2_jit_stack_free(stack);
    }
  } cleanup{md, mctx, stack};

  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, mctx)
                        : pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0)
      fail("pre-tokenizer regex /", pattern_.size() > 60 ? pattern_.substr(0, 60) + "..." : pattern_,
           "/ gave up at byte ", pos, " of the text: ", pcre2_message(rc),
           rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT
               ? " (the pattern backtracks too much on this text)"
               : "");
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (end > start) {
      on_match(start, end);
      pos = end;
    } else {
      // An empty match yields no piece; step over one character so the scan makes progress.
      if (start >= text.size()) break;
      pos = start + utf8_length(static_cast<unsigned char>(text[start]));
    }
  }
}

namespace {

// One anchored match of code against text (options: PCRE2_ANCHORED, maybe PCRE2_ENDANCHORED);
// the ovector of group `group`, or false. The JIT code was compiled for unanchored matching only,
// so these go through the interpreter (short module names, a handful of calls).
bool anchored_match(void* code_ptr, const std::string& pattern, std::string_view text, uint32_t options, int group,
                    size_t* begin, size_t* end) {
  auto* code = static_cast<pcre2_code*>(code_ptr);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, options, md, nullptr);
  bool found = false;
  if (rc >= 0) {
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const uint32_t pairs = pcre2_get_ovector_count(md);
    found = true;
    *begin = *end = 0;
    if (uint32_t(group) < pairs && ov[2 * group] != PCRE2_UNSET) {
      *begin = ov[2 * group];
      *end = ov[2 * group + 1];
    }
  }
  pcre2_match_data_free(md);
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
    fail("regex /", pattern.size() > 60 ? pattern.substr(0, 60) + "..." : pattern, "/ failed on \"", text, "\": ",
         pcre2_message(rc));
  return found;
}

}  // namespace

bool Regex::full_match(std::string_view text) const {
  size_t b = 0, e = 0;
  return anchored_match(code_, pattern_, text, PCRE2_ANCHORED | PCRE2_ENDANCHORED, 0, &b, &e);
}

std::optional<std::string> Regex::match_start(std::string_view text, int group) const {
  size_t b = 0, e = 0;
  if (!anchored_match(code_, pattern_, text, PCRE2_ANCHORED, group, &b, &e)) return std::nullopt;
  return std::string(text.substr(b, e - b));
}

}  // namespace gptq
