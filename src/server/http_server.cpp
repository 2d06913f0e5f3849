// The HTTP side of gptq serve on cpp-httplib: routes, authentication, errors as OpenAI error
// objects, server-sent events. Handler threads parse, submit to the engine and wait on the
// request's Stream; the engine thread never touches a socket.
#include <httplib.h>

#include <atomic>
#include <cstring>

#include "chat/chat_template.h"
#include "core/fs.h"
#include "gptq/server.h"
#include "server/api_error.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace gptq {

using namespace server;
using nlohmann::json;

namespace {
constexpr auto kPoll = std::chrono::milliseconds(100);

void declare_metrics(Metrics& m) {
  m.counter("gptq_requests_total", "HTTP requests answered, by endpoint and status");
  m.counter("gptq_prompt_tokens_total", "Prompt tokens of admitted requests");
  m.counter("gptq_generation_tokens_total", "Tokens generated");
  m.gauge("gptq_queue_depth", "Requests waiting for admission");
  m.gauge("gptq_running_sequences", "Sequences in the running batch");
  m.gauge("gptq_kv_blocks_used", "KV cache blocks in use");
  m.gauge("gptq_kv_blocks_total", "KV cache blocks the pool may hold");
  const std::vector<double> latency = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  m.histogram("gptq_time_to_first_token_seconds", "From arrival to the first generated token", latency);
  m.histogram("gptq_inter_token_latency_seconds", "Between consecutive tokens of a request", latency);
}

void reply_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
                 const std::string& code = "") {
  res.status = status;
  res.set_content(dump(error_object(status, message, param, code)), "application/json");
}

std::string endpoint_label(const std::string& path) {
  for (const char* p : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
    if (path == p) return p;
  return "other";
}
}  // namespace

struct Server::Impl {
  Impl(Model& model, const Tokenizer& tok, const ServerOptions& o) : opt(o), tok(tok) {
    declare_metrics(metrics);
    if (!o.chat_template_file.empty()) {
      const auto text = [&](int32_t id) { return id >= 0 ? tok.token_text(id) : std::string(); };
      chat_template.emplace(read_text_file(o.chat_template_file), text(tok.bos_id()), text(tok.eos_id()));
    } else {
      chat_template = chat::ChatTemplate::from_model_dir(model.dir());
    }
    if (!(o.timeout_s > 0)) fail("--timeout must be > 0 seconds, got ", o.timeout_s);
    EngineOptions e;
    e.max_batch = o.max_batch;
    e.max_tokens_in_flight = o.max_tokens_in_flight;
    e.ctx = o.ctx;
    e.max_queue = o.max_queue;
    engine = std::make_unique<Engine>(model, tok, e, metrics);
    ctx.tok = &tok;
    ctx.chat_template = chat_template ? &*chat_template : nullptr;
    ctx.model_name = o.model_name;
    ctx.max_sequence_tokens = engine->max_sequence_tokens();
    ctx.vocab_size = model.vocab_size();
    routes();
  }

  void routes();
  void generate(Endpoint ep, const httplib::Request& req, httplib::Response& res);

  ServerOptions opt;
  const Tokenizer& tok;
  Metrics metrics;
  std::optional<chat::ChatTemplate> chat_template;
  std::unique_ptr<Engine> engine;
  ApiContext ctx;
  httplib::Server http;
  std::atomic<bool> stopping{false};
  // Requests submitted whose response is not fully written yet: stop() waits for them, since
  // httplib's own stop() would cut running streams.
  std::mutex in_flight_mu;
  std::condition_variable in_flight_cv;
  int in_flight = 0;
  std::shared_ptr<void> in_flight_token() {
    std::lock_guard lock(in_flight_mu);
    ++in_flight;
    return std::shared_ptr<void>(nullptr, [this](void*) {
      std::lock_guard lock(in_flight_mu);
      if (--in_flight == 0) in_flight_cv.notify_all();
    });
  }
};

void Server::Impl::generate(Endpoint ep, const httplib::Request& req, httplib::Response& res) {
  ParsedRequest p = parse_request(ep, req.body, ctx);
  p.req.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.timeout_s));
  auto stream = engine->submit(p.req);
  auto token = in_flight_token();
  auto writer = std::make_shared<ResponseWriter>(ep, ctx, p);
  if (!p.stream) {
    std::vector<Piece> pieces;
    while (!stream->done()) stream->next(pieces, kPoll);
    stream->next(pieces, std::chrono::milliseconds(0));
    if (stream->error_status != 0) return reply_error(res, stream->error_status, stream->error_message);
    res.set_content(dump(writer->complete(pieces, *stream)), "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream, writer, token](size_t, httplib::DataSink& sink) {
        std::vector<Piece> pieces;
        if (!stream->next(pieces, kPoll)) return true;  // nothing yet: called again
        const bool done = stream->done();
        std::string out = writer->chunks(pieces);
        if (done) {
          stream->next(pieces, std::chrono::milliseconds(0));  // none can come after done
          out += writer->last_chunks(*stream);
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;  // the client is gone
        if (done) sink.done();
        return true;
      },
      // Runs when the response ends, also when the client went away mid-stream: then the engine
      // drops the request and frees its cache blocks at its next step.
      [this, stream](bool) {
        if (!stream->done()) engine->cancel(stream);
      });
}

void Server::Impl::routes() {
  http.set_payload_max_length(opt.max_body_bytes);
  http.set_keep_alive_max_count(1000);
  // A streaming request holds its handler thread to the end: enough threads for every running and
  // queued request, plus some to answer the rest (429, /health, /metrics).
  const size_t threads = size_t(opt.max_batch) + size_t(opt.max_queue) + 4;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + opt.api_key) return httplib::Server::HandlerResponse::Unhandled;
    reply_error(res, 401, "invalid or missing API key: send \"Authorization: Bearer KEY\"", "", "invalid_api_key");
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses that httplib sets itself (404, 413, 400 for a bad request line) get an error object too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string msg = res.status == 404   ? "no route " + req.method + " " + req.path
                            : res.status == 413 ? "the request body is too large"
                                                : "HTTP error " + std::to_string(res.status);
    reply_error(res, res.status, msg);
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      reply_error(res, e.status, e.what(), e.param, e.code);
    } catch (const Error& e) {
      reply_error(res, 400, e.what());
    } catch (const std::exception& e) {
      reply_error(res, 500, e.what());
    }
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.add("gptq_requests_total", 1,
                Metrics::label("endpoint", endpoint_label(req.path)) + "," + Metrics::label("status", std::to_string(res.status)));
  });

  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { generate(Endpoint::kCompletions, req, res); });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { generate(Endpoint::kChat, req, res); });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json m = {{"id", opt.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "gptq"},
              {"max_model_len", engine->context_length()}};
    res.set_content(dump({{"object", "list"}, {"data", json::array({m})}}), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (stopping) return reply_error(res, 503, "the server is shutting down");
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.text(), "text/plain; version=0.0.4; charset=utf-8");
  });
}

Server::Server(Model& model, const Tokenizer& tok, const ServerOptions& o) : impl_(std::make_unique<Impl>(model, tok, o)) {}
Server::~Server() = default;

int Server::bind() {
  const int port = impl_->opt.port == 0 ? impl_->http.bind_to_any_port(impl_->opt.host)
                                        : (impl_->http.bind_to_port(impl_->opt.host, impl_->opt.port) ? impl_->opt.port : -1);
  if (port < 0) fail("cannot listen on ", impl_->opt.host, ":", impl_->opt.port, ": ", std::strerror(errno));
  return port;
}

// httplib's listen returns after stop(), once its handler threads have finished: every accepted
// request has been answered by then.
void Server::run() { impl_->http.listen_after_bind(); }

// New requests get 503 from here on; the listening socket closes once the last response is out.
void Server::stop() {
  impl_->stopping = true;
  impl_->engine->drain();
  {
    std::unique_lock lock(impl_->in_flight_mu);
    impl_->in_flight_cv.wait(lock, [&] { return impl_->in_flight == 0; });
  }
  impl_->http.stop();
}

}  // namespace gptq
