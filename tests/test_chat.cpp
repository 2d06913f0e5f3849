// gptq chat driven as the tests drive it: the real binary with stdin, stdout and stderr on pipes,
// lines in, answers out, SIGINT from outside. No shared model ships a chat template, so each test
// makes a model folder of symlinks to a shared model's files plus a tokenizer_config.json that
// carries one.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "shared_paths.h"
#include "temp_dir_test.h"
#ifndef GPTQ_NO_SERVE
#include "server_process.h"
#endif

namespace {

namespace fs = std::filesystem;
using gptq_test::run_cli;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kTemplate =
    "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}";

// `gptq chat ARGS...` with its three standard streams on pipes. Every wait has a deadline: a
// hung chat fails the test instead of hanging it, and is killed at the end.
class ChatProcess {
 public:
  explicit ChatProcess(const std::vector<std::string>& args) {
    const char* env = std::getenv("GPTQ_CLI");
    std::vector<std::string> argv = {env && *env ? env : GPTQ_CLI_PATH, "chat", "-t", "1"};
    argv.insert(argv.end(), args.begin(), args.end());
    int in[2], o[2], e[2];
    if (pipe(in) != 0 || pipe(o) != 0 || pipe(e) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(o[1], 1);
      dup2(e[1], 2);
      for (int fd : {in[0], in[1], o[0], o[1], e[0], e[1]}) close(fd);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    close(in[0]);
    close(o[1]);
    close(e[1]);
    in_ = in[1];
    out_fd_ = o[0];
    err_fd_ = e[0];
    signal(SIGPIPE, SIG_IGN);  // a chat that died early: the write fails, the test says why
  }
  ~ChatProcess() {
    if (in_ >= 0) close(in_);
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    for (int fd : {out_fd_, err_fd_})
      if (fd >= 0) close(fd);
  }
  void send(const std::string& text) {
    for (size_t done = 0; done < text.size();) {
      const ssize_t n = write(in_, text.data() + done, text.size() - done);
      if (n <= 0) return;
      done += size_t(n);
    }
  }
  void close_input() {
    close(in_);
    in_ = -1;
  }
  void interrupt() { kill(pid_, SIGINT); }
  // Reads stdout and stderr until pred() holds (true) or `seconds` pass (false).
  bool wait_for(const std::function<bool()>& pred, double seconds) {
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    while (!pred()) {
      if (Clock::now() >= end) return false;
      if (!pump(50) && out_fd_ < 0 && err_fd_ < 0) return pred();
    }
    return true;
  }
  // Reads to the end and waits for the exit code; -1 (and the process killed) after `seconds`.
  int wait_exit(double seconds) {
    wait_for([&] { return out_fd_ < 0 && err_fd_ < 0; }, seconds);
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() >= end) return -1;
      usleep(10000);
    }
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string out, err;

 private:
  // One poll over the open pipes; false when none is open.
  bool pump(int timeout_ms) {
    pollfd fds[2];
    int n = 0;
    for (int fd : {out_fd_, err_fd_})
      if (fd >= 0) fds[n++] = {fd, POLLIN, 0};
    if (n == 0) return false;
    if (poll(fds, nfds_t(n), timeout_ms) <= 0) return true;
    for (int i = 0; i < n; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      const ssize_t r = read(fds[i].fd, buf, sizeof buf);
      int& fd = fds[i].fd == out_fd_ ? out_fd_ : err_fd_;
      std::string& s = fds[i].fd == out_fd_ ? out : err;
      if (r > 0) {
        s.append(buf, size_t(r));
      } else {
        close(fd);
        fd = -1;
      }
    }
    return true;
  }
  pid_t pid_ = -1;
  int in_ = -1, out_fd_ = -1, err_fd_ = -1;
  bool exited_ = false;
};

class Chat : public gptq_test::TempDirTest {
 protected:
  // dir_/NAME: symlinks to every file of the shared model, and its tokenizer_config.json with
  // chat_template set to tmpl. The model files stay where they are.
  std::string model_with_template(const std::string& shared, const std::string& tmpl = kTemplate) {
    const fs::path dir = dir_ / fs::path(shared).filename();
    fs::create_directories(dir);
    for (const auto& f : fs::directory_iterator(shared))
      if (f.path().filename() != "tokenizer_config.json") fs::create_symlink(f.path(), dir / f.path().filename());
    json cfg = json::parse(gptq_test::slurp(shared + "/tokenizer_config.json"));
    cfg["chat_template"] = tmpl;
    std::ofstream(dir / "tokenizer_config.json") << cfg.dump(2);
    return dir.string();
  }
};

// stdout of a chat fed `lines` then EOF (exit code 0 checked).
std::string chat_answers(const std::vector<std::string>& args, const std::string& lines) {
  ChatProcess c(args);
  c.send(lines);
  c.close_input();
  EXPECT_EQ(c.wait_exit(300), 0) << c.err;
  return c.out;
}

const std::vector<std::string> kGreedy = {"--temperature", "0", "--repeat-penalty", "1"};

std::vector<std::string> args(const std::string& model, std::vector<std::string> more) {
  std::vector<std::string> a = {"-m", model};
  a.insert(a.end(), kGreedy.begin(), kGreedy.end());
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

TEST_F(Chat, GreedyAnswersEqualTheServersChatCompletions) {
  SHARED_MODEL_OR_SKIP(shared, "babyllama-361");
  const std::string m = model_with_template(shared);
  const std::string got = chat_answers(args(m, {"-n", "24"}), "Once upon a time\nTell me more\n");
#ifdef GPTQ_NO_SERVE
  GTEST_SKIP() << "a build without gptq serve";
#else
  gptq_test::ServerProcess s(m, {});
  ASSERT_GT(s.port(), 0) << s.log();
  json messages = {{{"role", "user"}, {"content", "Once upon a time"}}};
  auto answer = [&] {
    int status = 0;
    const json r = gptq_test::post(s, "/v1/chat/completions",
                                   json{{"messages", messages}, {"max_tokens", 24}, {"temperature", 0}}.dump(), &status);
    EXPECT_EQ(status, 200) << r;
    return r["choices"][0]["message"]["content"].get<std::string>();
  };
  const std::string a1 = answer();
  messages.push_back({{"role", "assistant"}, {"content", a1}});
  messages.push_back({{"role", "user"}, {"content", "Tell me more"}});
  const std::string a2 = answer();
  EXPECT_FALSE(a1.empty());
  EXPECT_EQ(got, a1 + "\n" + a2 + "\n");
  EXPECT_EQ(s.terminate(), 0);
#endif
}

TEST_F(Chat, ResetMakesTheNextAnswerTheFirstOneAgain) {
  SHARED_MODEL_OR_SKIP(shared, "babyllama-361");
  const std::string m = model_with_template(shared);
  const std::string first = chat_answers(args(m, {"-n", "16"}), "Once upon a time\n");
  ASSERT_GT(first.size(), 1u);
  ChatProcess c(args(m, {"-n", "16"}));
  c.send("Once upon a time\n/reset\nOnce upon a time\n");
  c.close_input();
  EXPECT_EQ(c.wait_exit(300), 0) << c.err;
  EXPECT_EQ(c.out, first + first);
  EXPECT_NE(c.err.find("[history cleared]"), std::string::npos) << c.err;
}

TEST_F(Chat, TemplateFileOnAModelWithoutOne) {
  SHARED_MODEL_OR_SKIP(shared, "babyllama-361");
  const std::string with = chat_answers(args(model_with_template(shared), {"-n", "12"}), "Once upon a time\n");
  const std::string file = write("chat.jinja", kTemplate);
  EXPECT_EQ(chat_answers(args(shared, {"-n", "12", "--chat-template", file}), "Once upon a time\n"), with);
  // Without either: one line naming the way out, before the weights load.
  gptq_test::expect_cli_error(run_cli({"chat", "-m", shared}), {"no chat template", "--chat-template"});
}

TEST_F(Chat, CtrlCStopsTheAnswerNotTheProgram) {
  SHARED_MODEL_OR_SKIP(shared, "llama-gutenberg-22m");
  const std::string m = model_with_template(shared);
  // Greedy answers of this model run to --max-tokens (no eos): long enough to be interrupted.
  const std::vector<std::string> a = args(m, {"-n", "400"});
  const std::string alone = chat_answers(a, "The sea\n");
  ASSERT_GT(alone.size(), 1u);
  ChatProcess c(a);
  c.send("Once upon a time there was a long story. Tell it.\n");
  ASSERT_TRUE(c.wait_for([&] { return c.out.size() >= 8; }, 120)) << c.err;
  c.interrupt();
  ASSERT_TRUE(c.wait_for([&] { return c.err.find("[interrupted]") != std::string::npos; }, 60)) << c.err;
  // The program goes on: the next line gets its answer (the history cleared first, so the answer is
  // the one "The sea" gets alone).
  const size_t before = c.out.size();
  c.send("/reset\nThe sea\n");
  ASSERT_TRUE(c.wait_for([&] { return c.out.size() >= before + alone.size(); }, 120)) << c.err;
  EXPECT_EQ(c.out.substr(before), alone);
  EXPECT_EQ(c.err.find("[interrupted]"), c.err.rfind("[interrupted]")) << c.err;  // the second answer ran to its end
  // Ctrl-C at the prompt quits, with exit code 0.
  c.interrupt();
  EXPECT_EQ(c.wait_exit(60), 0) << c.err;
}

TEST_F(Chat, EofExitsZeroAndBadInputIsOneLine) {
  SHARED_MODEL_OR_SKIP(shared, "babyllama-361");
  const std::string m = model_with_template(shared);
  const auto eof = run_cli({"chat", "-m", m, "-t", "1"});  // stdin is /dev/null
  EXPECT_EQ(eof.rc, 0) << eof.err;
  EXPECT_EQ(eof.out, "");
  gptq_test::expect_cli_error(run_cli({"chat", "-m", (dir_ / "nothing").string()}), {"nothing"});
  gptq_test::expect_cli_error(run_cli({"chat", "-m", m, "--chat-template", (dir_ / "none.jinja").string()}),
                              {"none.jinja"});
  gptq_test::expect_cli_error(run_cli({"chat", "-m", m, "--chat-template", write("bad.jinja", "{% for")}),
                              {"bad.jinja", "line 1"});
  gptq_test::expect_cli_error(run_cli({"chat", "-m", m, "-c", "64", "-n", "64"}), {"--max-tokens"});
  gptq_test::expect_cli_error(run_cli({"chat", "-m", m, "--top-p", "0"}), {"top_p"});
  gptq_test::expect_cli_error(run_cli({"chat", "-m", m, "--stop", ""}), {"stop"});
}

// A context of 64 tokens: the conversation drops its oldest exchanges to go on; a message that
// cannot fit even alone is refused and the chat answers the next one.
TEST_F(Chat, HistoryOverTheContextDropsTheOldestExchanges) {
  SHARED_MODEL_OR_SKIP(shared, "babyllama-361");
  const std::string m = model_with_template(shared);
  ChatProcess c(args(m, {"-c", "64", "-n", "8"}));
  c.send("The sun was warm today\nThe dog ran to the park\nThe cat sat on the mat\n" + std::string(200, 'a') +
         "\n/reset\nThe sun was warm today\n");
  c.close_input();
  EXPECT_EQ(c.wait_exit(300), 0) << c.err;
  EXPECT_NE(c.err.find("dropped the oldest"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("[not sent: this message needs"), std::string::npos) << c.err;
  // 4 answers (the refused message has none); the last, after /reset, equals the first.
  const std::string first = chat_answers(args(m, {"-c", "64", "-n", "8"}), "The sun was warm today\n");
  ASSERT_GE(c.out.size(), first.size());
  EXPECT_EQ(c.out.substr(0, first.size()), first);
  EXPECT_EQ(c.out.substr(c.out.size() - first.size()), first);
}

}  // namespace
