// Errors, two tiers (see DESIGN.md):
//  - gptq::Error: user and I/O errors (bad files, bad flags). Carries an actionable message;
//    the CLI prints it as one line on stderr and exits with code 2.
//  - GPTQ_ASSERT: programmer bugs. Aborts with file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace gptq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates anything streamable into one string: cat("tensor ", name, " has ", n, " dims").
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace gptq

#define GPTQ_ASSERT(cond, ...)                                                             \
  do {                                                                                     \
    if (!(cond)) ::gptq::assert_fail(#cond, __FILE__, __LINE__, ::gptq::cat("" __VA_ARGS__)); \
  } while (0)
