// gptq serve: the OpenAI-compatible HTTP server. SIGTERM or SIGINT stops accepting, lets the
// queued and running requests finish, and exits 0.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common.h"
#include "gptq/error.h"
#include "gptq/server.h"

namespace gptq::cli {

namespace {
// The handler may run on any thread (OpenBLAS starts its own before main, so masks cannot steer
// the signal to one thread): it only writes the signal number to a pipe that a waiter thread reads.
int stop_pipe[2] = {-1, -1};
void on_stop_signal(int sig) {
  const char c = char(sig);
  (void)!write(stop_pipe[1], &c, 1);
}

struct ServeArgs {
  std::string model, device = "auto";
  std::string kv_cache = "auto";
  ServerOptions server;
  int threads = 0;
  // --synthetic: random weights of an architecture's shapes (speed under load without the files)
  std::string synthetic, tokenizer, dtype = "f16";
  int bits = 0, group_size = 128;
  int64_t layers = 0;
};
}  // namespace

Runner add_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  ServerOptions& s = a->server;
  CLI::App* c = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  c->add_option("-m,--model", a->model, "Model folder (Hugging Face layout)");
  c->add_option("--synthetic", a->synthetic,
                "Instead of -m: random weights of this architecture's shapes, made on the device (llama2-7b, "
                "llama2-13b, llama2-70b, llama3-8b), to measure speed under load; needs --tokenizer");
  c->add_option("--tokenizer", a->tokenizer, "--synthetic: a model folder whose tokenizer (and chat template) to use");
  add_synthetic_weight_options(c, a->dtype, a->bits, a->group_size);
  c->add_option("--layers", a->layers, "--synthetic: only its first N decoder layers (0: all)")->check(int_in(0, 1 << 20));
  c->add_option("--host", s.host, "Address to listen on");
  c->add_option("--port", s.port, "Port (0: any free port)")->check(int_in(0, 65535));
  c->add_option("--max-batch", s.max_batch, "Sequences decoded together")->check(int_in(1, 4096));
  c->add_option("--max-tokens-in-flight", s.max_tokens_in_flight,
                "KV cache tokens all running requests may reserve (prompt + max_tokens each; 0: max-batch x ctx)")
      ->check(int_in(0, int64_t(1) << 40));
  c->add_option("-c,--ctx", s.ctx, "Context per sequence (0: the model's)")->check(int_in(0, int64_t(1) << 32));
  c->add_option("--api-key", s.api_key, "Require \"Authorization: Bearer KEY\" on /v1/*");
  c->add_option("--max-queue", s.max_queue, "Requests that may wait for a slot; more get 429")->check(int_in(0, 1 << 20));
  c->add_option("--prefill-chunk", s.prefill_chunk,
                "Prompt tokens prefilled per step, all requests together: long prompts go in chunks so that "
                "running streams keep flowing")
      ->check(int_in(1, int64_t(1) << 30));
  c->add_option("--timeout", s.timeout_s, "Seconds a request may take, queue included")->check(number_in(0.001, 1e9));
  c->add_option("--served-model-name", s.model_name, "The model's name in the API (default: the folder's name)");
  c->add_option("--chat-template", s.chat_template_file, "Jinja chat template file (default: tokenizer_config.json's)");
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  add_kv_cache_option(c, a->kv_cache);
  return [a]() {
    if (pipe(stop_pipe) != 0) fail("cannot create a pipe: ", std::strerror(errno));
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not the end of the server

    if (a->synthetic.empty() == a->model.empty()) fail("serve needs -m MODEL or --synthetic NAME (one of them)");
    if (!a->synthetic.empty() && a->tokenizer.empty())
      fail("serve --synthetic needs --tokenizer DIR (a model folder whose tokenizer to use)");
    if (a->synthetic.empty() && !a->tokenizer.empty()) fail("--tokenizer goes with --synthetic (-m has its own)");
    const int threads = cap_threads(a->threads);
    std::shared_ptr<Backend> be = make_backend(a->device, threads);
    std::unique_ptr<Model> model;
    ServerOptions o = a->server;
    if (!a->synthetic.empty()) {
      SyntheticOptions so;
      so.dtype = synthetic_dtype(a->dtype);
      so.bits = a->bits;
      so.group_size = a->group_size;
      so.layers = a->layers;
      so.backend = be;
      so.kv_fp16 = kv_cache_fp16(a->kv_cache);
      model = Model::synthetic(a->synthetic, so);
      o.template_dir = a->tokenizer;
    } else {
      LoadOptions lo;
      lo.threads = threads;
      lo.backend = be;
      lo.kv_fp16 = kv_cache_fp16(a->kv_cache);
      model = Model::load(a->model, lo);
    }
    Tokenizer tok = Tokenizer::from_model_dir(a->synthetic.empty() ? a->model : a->tokenizer);
    if (!a->synthetic.empty() && tok.vocab_size() > model->vocab_size())
      fail("--tokenizer ", a->tokenizer, " has ", tok.vocab_size(), " tokens, more than ", model->dir(), "'s vocabulary of ",
           model->vocab_size());
    if (o.model_name.empty()) o.model_name = a->synthetic.empty() ? model_name(a->model) : model->dir();
    Server server(*model, tok, o);
    const int port = server.bind();
    std::fprintf(stderr, "gptq serve: %s on http://%s:%d (Ctrl-C or SIGTERM to stop)\n", o.model_name.c_str(),
                 o.host.c_str(), port);
    std::thread waiter([&] {
      char sig = 0;
      while (read(stop_pipe[0], &sig, 1) < 0 && errno == EINTR) {
      }
      if (sig != 0) std::fprintf(stderr, "gptq serve: %s: finishing the requests in progress, then exiting\n", strsignal(sig));
      server.stop();
    });
    server.run();
    const char wake = 0;  // run() may also end without a signal: let the waiter go
    (void)!write(stop_pipe[1], &wake, 1);
    waiter.join();
    return 0;
  };
}

}  // namespace gptq::cli
