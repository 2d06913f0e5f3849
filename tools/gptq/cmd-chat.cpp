// gptq chat: a conversation in the terminal, on the model's chat template and the engine gptq serve
// runs (src/server/engine.h; the prompt is rendered by the same code as /v1/chat/completions, so
// the same messages give the same greedy answer). Lines in, answers streamed out; works the same
// with stdin not a terminal (one message per line), which is how the tests drive it.
//
// Ctrl-C during an answer stops that answer (the partial answer stays in the history) and returns
// to the prompt; Ctrl-C at the prompt, EOF, /exit or /quit end the program with exit code 0.
// /reset clears the history (the --system message stays). A conversation that no longer fits the
// context loses its oldest exchanges (user message + answer), with a note on stderr; a message that
// does not fit even alone is refused and left out of the history.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>

#include "chat/chat_template.h"
#include "common.h"
#include "gptq/error.h"
#include "gptq/generate.h"
#include "gptq/model.h"
#include "gptq/tokenizer.h"
#include "server/chat_prompt.h"
#include "server/engine.h"
#include "server/metrics.h"

namespace gptq::cli {

namespace {

// SIGINT may land on any thread (OpenBLAS and the engine run their own): the handler only counts
// it and wakes the main thread's poll() through a pipe. The main thread decides what it means.
std::atomic<int> g_interrupts{0};
int g_wake[2] = {-1, -1};
void on_sigint(int) {
  g_interrupts.fetch_add(1);
  const char c = 1;
  (void)!write(g_wake[1], &c, 1);  // non-blocking: a full pipe already wakes the reader
}
void drain_wake_pipe() {
  char buf[64];
  while (read(g_wake[0], buf, sizeof buf) > 0) {
  }
}

// Lines of stdin, read with poll() beside the wake pipe, so that Ctrl-C at the prompt ends the wait
// (a blocking getline would not return when the signal goes to another thread).
class LineReader {
 public:
  enum class Status { kLine, kEof, kInterrupted };
  // interrupts_seen: the count of SIGINTs already handled; one more means "quit".
  Status next(std::string& line, int interrupts_seen) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Status::kLine;
      }
      if (eof_) {
        if (buf_.empty()) return Status::kEof;
        line = std::move(buf_);  // a last line without its newline
        buf_.clear();
        return Status::kLine;
      }
      if (g_interrupts.load() != interrupts_seen) return Status::kInterrupted;
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {g_wake[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        fail("cannot wait for input: ", std::strerror(errno));
      }
      if (fds[1].revents & POLLIN) drain_wake_pipe();
      if (fds[0].revents & POLLNVAL) eof_ = true;  // stdin closed: as EOF
      else if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char b[4096];
        const ssize_t n = read(STDIN_FILENO, b, sizeof b);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) eof_ = true;
        else buf_.append(b, size_t(n));
      }
    }
  }

 private:
  std::string buf_;
  bool eof_ = false;
};

void out(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

struct ChatArgs {
  std::string model, device = "auto", system, chat_template_file;
  std::string kv_cache = "auto";
  SamplingArgs sampling;
  std::vector<std::string> stop;
  int64_t max_tokens = 0, ctx = 0;
  int threads = 0;
};

// The conversation's prompt, after dropping its oldest exchanges (never the system message) until
// prompt + max_tokens fits; nullopt when even the newest message alone does not fit.
// `first`: the index of the first droppable message (1 with a system message, else 0).
std::optional<std::vector<int32_t>> fit_prompt(std::vector<chat::Message>& history, size_t first,
                                               const chat::ChatTemplate& tmpl, const Tokenizer& tok,
                                               int64_t max_tokens, int64_t limit) {
  int dropped = 0;
  for (;;) {
    std::vector<int32_t> ids = server::chat_prompt_tokens(tmpl, tok, history);
    if (int64_t(ids.size()) + max_tokens <= limit) {
      if (dropped > 0)
        std::fprintf(stderr, "[the conversation is over the context of %lld tokens: dropped the oldest %d exchange%s]\n",
                     (long long)limit, dropped, dropped == 1 ? "" : "s");
      return ids;
    }
    if (history.size() - first <= 1) {  // only the newest user message is left
      std::fprintf(stderr,
                   "[not sent: this message needs %zu prompt tokens + %lld for the answer (--max-tokens), over the "
                   "context of %lld tokens; shorten it or lower --max-tokens]\n",
                   ids.size(), (long long)max_tokens, (long long)limit);
      return std::nullopt;
    }
    // The oldest exchange: a user message and the answer after it (history alternates).
    const size_t n = history.size() - first >= 3 ? 2 : 1;
    history.erase(history.begin() + ptrdiff_t(first), history.begin() + ptrdiff_t(first + n));
    ++dropped;
  }
}

}  // namespace

Runner add_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* c = app.add_subcommand("chat", "Chat with the model in the terminal (its chat template; /reset, /exit)");
  c->add_option("-m,--model", a->model, "Model folder (Hugging Face layout)")->required();
  c->add_option("--system", a->system, "System message at the start of the conversation");
  c->add_option("--chat-template", a->chat_template_file, "Jinja chat template file (default: tokenizer_config.json's)");
  c->add_option("-n,--max-tokens", a->max_tokens, "Tokens an answer may have (0: 512, or half the context if less)")
      ->check(int_in(0, int64_t(1) << 32));
  c->add_option("-c,--ctx", a->ctx, "Context of the conversation (0: the model's)")->check(int_in(0, int64_t(1) << 32));
  add_sampling_options(c, a->sampling);
  c->add_option("--stop", a->stop, "Stop string (repeatable); ends the answer, not printed");
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  add_kv_cache_option(c, a->kv_cache);
  return [a, c]() {
    // Tokenizer and template first: a model without a template fails before its weights load.
    Tokenizer tok = Tokenizer::from_model_dir(a->model);
    const std::optional<chat::ChatTemplate> tmpl = server::load_chat_template(a->model, tok, a->chat_template_file);
    if (!tmpl)
      fail(a->model, ": the model has no chat template (no chat_template in its tokenizer_config.json): give "
                     "--chat-template FILE, or use gptq generate");
    LoadOptions lo;
    lo.threads = cap_threads(a->threads);
    lo.backend = make_backend(a->device, lo.threads);
    lo.kv_fp16 = kv_cache_fp16(a->kv_cache);
    auto model = Model::load(a->model, lo);

    server::Metrics metrics;  // the engine reports into it; nobody reads it here
    server::declare_server_metrics(metrics);
    server::EngineOptions eo;
    eo.max_batch = 1;  // one conversation
    eo.ctx = a->ctx;
    server::Engine engine(*model, tok, eo, metrics);
    const int64_t limit = engine.max_sequence_tokens();
    const int64_t max_tokens = a->max_tokens > 0 ? a->max_tokens : std::min<int64_t>(512, limit / 2);
    if (max_tokens >= limit)
      fail("--max-tokens ", max_tokens, " leaves no room for a prompt in the context of ", limit, " tokens");
    server::Request base;
    base.max_tokens = max_tokens;
    base.sampling = sampling_params(a->sampling, c, model->config().generation);
    base.stop = a->stop;
    const uint64_t seed = base.sampling.seed;
    {  // what the engine will build for every answer, checked once here: bad options fail at the start
      Sampler check_sampling(base.sampling);
      TextStream check_stop(tok, base.stop);
    }

    if (pipe2(g_wake, O_NONBLOCK | O_CLOEXEC) != 0) fail("cannot create a pipe: ", std::strerror(errno));
    struct sigaction sa {};
    sa.sa_handler = on_sigint;  // no SA_RESTART: poll() in the main thread returns EINTR
    sigaction(SIGINT, &sa, nullptr);

    const bool tty = isatty(STDIN_FILENO) == 1;
    std::fprintf(stderr,
                 "gptq chat: %s (context %lld tokens, answers up to %lld). /reset clears the history, /exit or "
                 "Ctrl-D quits, Ctrl-C stops an answer.\n",
                 model_name(a->model).c_str(), (long long)limit, (long long)max_tokens);

    std::vector<chat::Message> history;
    if (!a->system.empty()) history.push_back({"system", a->system});
    const size_t first = history.size();
    uint64_t turn = 0;  // answers since the start or /reset: turn t samples with seed + t
    int seen = g_interrupts.load();
    LineReader in;
    for (;;) {
      if (tty) out("> ");
      std::string line;
      const LineReader::Status st = in.next(line, seen);
      if (st != LineReader::Status::kLine) {
        if (tty) out("\n");
        break;
      }
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        history.resize(first);
        turn = 0;
        std::fprintf(stderr, "[history cleared]\n");
        continue;
      }
      if (line[0] == '/' && line.find_first_of(" \t/", 1) == std::string::npos) {
        std::fprintf(stderr, "[unknown command %s: /reset clears the history, /exit quits]\n", line.c_str());
        continue;
      }

      history.push_back({"user", line});
      std::optional<std::vector<int32_t>> ids;
      try {
        ids = fit_prompt(history, first, *tmpl, tok, max_tokens, limit);
      } catch (const Error& e) {  // raise_exception in the template, or an evaluation error
        std::fprintf(stderr, "[not sent: the chat template refused the conversation: %s]\n", e.what());
      }
      if (!ids) {
        history.pop_back();
        continue;
      }
      server::Request req = base;
      req.prompt = std::move(*ids);
      req.sampling.seed = seed + turn;
      std::shared_ptr<server::Stream> stream;
      try {
        stream = engine.submit(std::move(req));
      } catch (const Error& e) {
        std::fprintf(stderr, "[not sent: %s]\n", e.what());
        history.pop_back();
        continue;
      }

      std::string answer;
      bool interrupted = false;
      std::vector<server::Piece> pieces;
      for (;;) {
        pieces.clear();
        stream->next(pieces, std::chrono::milliseconds(50));
        const bool done = stream->done();
        if (done) stream->next(pieces, std::chrono::milliseconds(0));  // what came just before done
        for (const auto& p : pieces) {
          out(p.text);
          answer += p.text;
        }
        if (done) break;
        if (g_interrupts.load() != seen) {
          seen = g_interrupts.load();
          engine.cancel(stream);  // the engine drops it and frees its blocks at its next step
          interrupted = true;
          break;
        }
      }
      if (!interrupted && stream->error_status != 0) {
        out("\n");
        std::fprintf(stderr, "[the answer failed: %s]\n", stream->error_message.c_str());
        history.pop_back();
        continue;
      }
      if (!interrupted) {
        out(stream->tail);
        answer += stream->tail;
      }
      out("\n");
      if (interrupted) std::fprintf(stderr, "[interrupted]\n");
      else if (stream->finish_reason == "length")
        std::fprintf(stderr, "[the answer reached --max-tokens %lld]\n", (long long)max_tokens);
      history.push_back({"assistant", answer});
      ++turn;
    }
    return 0;
  };
}

}  // namespace gptq::cli
