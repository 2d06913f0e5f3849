// Runs the gptq binary as a user would, capturing exit code, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace gptq_test {

struct CliResult {
  int rc = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// args are passed to the shell quoted one by one; env: "NAME=value" assignments for the command.
inline CliResult run_cli(const std::vector<std::string>& args, const std::vector<std::string>& env_vars = {}) {
  static int counter = 0;
  const std::string base = testing::TempDir() + "/gptq_cli_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  // GPTQ_CLI (environment) wins, so a test binary can run on another machine beside its gptq.
  const char* env = std::getenv("GPTQ_CLI");
  std::string cmd;
  for (const auto& e : env_vars) cmd += e + " ";
  cmd += shell_quote(env && *env ? env : GPTQ_CLI_PATH);
  for (const auto& a : args) {
    cmd += ' ';  // not " " + ...: gcc 12 warns falsely (-Wrestrict, GCC bug 105329)
    cmd += shell_quote(a);
  }
  cmd += " >" + base + ".out 2>" + base + ".err </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return r;
}

// Exit code 2 and exactly one line on stderr containing every needle.
inline void expect_cli_error(const CliResult& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' not in: " << r.err;
}

}  // namespace gptq_test
