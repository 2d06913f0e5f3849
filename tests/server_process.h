// `gptq serve` as a child process on a free loopback port, and a JSON POST to it: shared by the
// server's tests and the tests that compare other commands with it.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "cli_runner.h"

namespace gptq_test {

// `gptq serve -m MODEL --port 0 ARGS...`; the port comes from its first stderr line.
class ServerProcess {
 public:
  ServerProcess(const std::string& model, const std::vector<std::string>& args) {
    static int counter = 0;
    log_ = testing::TempDir() + "/gptq_serve_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".err";
    const char* env = std::getenv("GPTQ_CLI");
    const std::string bin = env && *env ? env : GPTQ_CLI_PATH;
    std::vector<std::string> argv = {bin, "serve", "--port", "0", "-t", "1"};
    if (!model.empty()) argv.insert(argv.begin() + 2, {"-m", model});  // empty: args name the model
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      freopen(log_.c_str(), "w", stderr);
      freopen("/dev/null", "w", stdout);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    const std::regex listening("on http://[0-9.]+:([0-9]+)");
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::smatch m;
      const std::string err = slurp(log_);
      if (std::regex_search(err, m, listening)) port_ = std::stoi(m[1]);
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::remove(log_.c_str());
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return slurp(log_); }
  // SIGTERM, then the exit code.
  int terminate() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void signal_term() { kill(pid_, SIGTERM); }
  int wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
  std::string log_;
};

inline nlohmann::json post(const ServerProcess& s, const std::string& path, const std::string& body, int* status,
          const httplib::Headers& headers = {}) {
  auto c = s.client();
  auto r = c.Post(path, headers, body, "application/json");
  if (!r) {
    *status = -1;
    return {};
  }
  *status = r->status;
  return nlohmann::json::parse(r->body, nullptr, false);
}

}  // namespace gptq_test
