// The HTTP side of gptq serve on cpp-httplib: routes, authentication, errors as OpenAI error
// objects, server-sent events. Handler threads parse, submit to the engine and wait on the
// request's Stream; the engine thread never touches a socket.
#include <httplib.h>

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "chat/chat_template.h"
#include "gptq/server.h"
#include "server/api_error.h"
#include "server/chat_prompt.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace gptq {

using namespace server;
using nlohmann::json;

namespace {
constexpr auto kPoll = std::chrono::milliseconds(100);

void reply_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
                 const std::string& code = "") {
  res.status = status;
  res.set_content(dump(error_object(status, message, param, code)), "application/json");
}

bool numeric_address(const sockaddr_storage& a, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST], p[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(p);
  return true;
}

// The first of this process's sockets for which pred(fd) holds, or -1.
int find_socket(const std::function<bool(int)>& pred) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    const int fd = std::atoi(e->d_name);
    struct stat st {};
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d) || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (pred(fd)) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

// cpp-httplib 0.11 (Debian 12's) shows a handler nothing of its connection (later versions have
// Request::is_connection_closed). The connection's socket is found among this process's file
// descriptors by its two ends, the request's local and remote address and port (the pair is
// unique while the connection is open, and the handler holds it open). -1 when not found.
int connection_fd(const httplib::Request& req) {
  return find_socket([&](int fd) {
    sockaddr_storage local {}, peer {};
    socklen_t llen = sizeof local, plen = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0)
      return false;  // the listening socket has no peer
    std::string lhost, phost;
    int lport = -1, pport = -1;
    return numeric_address(local, llen, lhost, lport) && numeric_address(peer, plen, phost, pport) &&
           lport == req.local_port && pport == req.remote_port && phost == req.remote_addr;
  });
}

// The listening socket on `port`: one that accepts connections, bound to that port.
int listening_fd(int port) {
  return find_socket([&](int fd) {
    int accepting = 0;
    socklen_t alen = sizeof accepting;
    sockaddr_storage local {};
    socklen_t llen = sizeof local;
    std::string host;
    int lport = -1;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) == 0 && accepting &&
           getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) == 0 &&
           numeric_address(local, llen, host, lport) && lport == port;
  });
}

// Whether the client closed its end: a hang-up or error, or end-of-file waiting to be read (httplib
// has consumed the whole request by now, so readable with nothing to read means closed). A client
// that only shuts down its sending side after the request reads the same; HTTP clients do not.
bool peer_closed(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
  char c;
  return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

std::string endpoint_label(const std::string& path) {
  for (const char* p : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
    if (path == p) return p;
  return "other";
}
}  // namespace

struct Server::Impl {
  Impl(Model& model, const Tokenizer& tok, const ServerOptions& o) : opt(o), tok(tok) {
    declare_server_metrics(metrics);
    chat_template = load_chat_template(o.template_dir.empty() ? model.dir() : o.template_dir, tok, o.chat_template_file);
    if (!(o.timeout_s > 0)) fail("--timeout must be > 0 seconds, got ", o.timeout_s);
    EngineOptions e;
    e.max_batch = o.max_batch;
    e.max_tokens_in_flight = o.max_tokens_in_flight;
    e.ctx = o.ctx;
    e.max_queue = o.max_queue;
    e.prefill_chunk = o.prefill_chunk;
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
  auto token = in_flight_token();  // before submit: stop() must not see zero in flight while it runs
  auto stream = engine->submit(p.req);
  auto writer = std::make_shared<ResponseWriter>(ep, ctx, p);
  if (!p.stream) {
    // A client that goes away while waiting frees its slot (or its place in the queue) and its KV
    // blocks at the engine's next step, as a stream's does when a write fails.
    const int fd = connection_fd(req);
    std::vector<Piece> pieces;
    while (!stream->done()) {
      stream->next(pieces, kPoll);
      if (fd >= 0 && !stream->done() && peer_closed(fd)) {
        engine->cancel(stream);
        // nginx's "client closed request": what the request log and gptq_requests_total count.
        return reply_error(res, 499, "the client closed the connection before the answer");
      }
    }
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
    metrics.add("gptq_requests_total", 1, {{"endpoint", endpoint_label(req.path)}, {"status", std::to_string(res.status)}});
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
  // Debian's libcpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into
  // the library): a burst of new connections overflows it, the kernel drops their handshakes, and
  // a client whose request then arrives more than httplib's 5-second keep-alive wait after the
  // accept is closed unanswered. listen() again on a listening socket only raises its backlog
  // (to what net.core.somaxconn allows).
  const int fd = listening_fd(port);
  if (fd < 0 || ::listen(fd, SOMAXCONN) != 0)
    fail("cannot raise the listen backlog on ", impl_->opt.host, ":", port, ": ", fd < 0 ? "socket not found" : std::strerror(errno));
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
