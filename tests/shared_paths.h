// Where the shared data (models, golden outputs, datasets) lives for tests.
// GPTQ_SHARED (environment) wins over the GPTQ_SHARED_DIR compile definition, so a test binary
// built in one checkout can be pointed at another copy of the data without rebuilding.
#pragma once

#include <cstdlib>
#include <string>
#include <sys/stat.h>

namespace gptq_test {

inline bool is_dir(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The shared folder, or "" when it is absent (callers GTEST_SKIP then).
inline std::string shared_dir() {
  if (const char* env = std::getenv("GPTQ_SHARED"); env != nullptr && *env != '\0')
    return is_dir(env) ? std::string(env) : std::string();
#ifdef GPTQ_SHARED_DIR
  if (is_dir(GPTQ_SHARED_DIR)) return GPTQ_SHARED_DIR;
#endif
  return {};
}

// shared_dir() + "/" + rel, or "" when the shared folder is absent.
inline std::string shared_path(const std::string& rel) {
  std::string dir = shared_dir();
  if (dir.empty()) return {};
  return dir + "/" + rel;
}

// shared_path("models/" + name) when that folder exists, else "".
inline std::string shared_model(const std::string& name) {
  const std::string p = shared_path("models/" + name);
  return is_dir(p) ? p : std::string();
}

}  // namespace gptq_test

// const std::string var = the shared model's folder, or the test is skipped with a message.
#define SHARED_MODEL_OR_SKIP(var, name)                \
  const std::string var = gptq_test::shared_model(name); \
  if (var.empty()) GTEST_SKIP() << "../shared/models/" << name << " not found: skipped"

using gptq_test::shared_dir;
using gptq_test::shared_path;
