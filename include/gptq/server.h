// gptq serve: an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions,
// /v1/models, /health, /metrics) over one model, with continuous batching (src/server/engine.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "gptq/model.h"
#include "gptq/tokenizer.h"

namespace gptq {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                   // 0: any free port (bind() says which)
  std::string model_name;            // what clients name in "model"
  std::string api_key;               // non-empty: /v1/* need "Authorization: Bearer KEY"
  std::string chat_template_file;    // overrides the model's tokenizer_config.json chat_template
  std::string template_dir;          // folder of that tokenizer_config.json (empty: the model's)
  int max_batch = 32;
  int64_t max_tokens_in_flight = 0;  // 0: max_batch × ctx
  int64_t ctx = 0;                   // 0: the model's context
  int max_queue = 64;
  int64_t prefill_chunk = 256;       // prompt tokens prefilled per engine step, all requests together
  double timeout_s = 600;            // a request's limit, from arrival to its last token
  size_t max_body_bytes = 1 << 20;
};

class Server {
 public:
  // Throws gptq::Error for bad options or a chat template that does not parse.
  Server(Model& model, const Tokenizer& tok, const ServerOptions& o);
  ~Server();
  int bind();   // listens on host:port; returns the port; gptq::Error when it cannot
  void run();   // serves until stop(); returns once the queued and running requests are done
  void stop();  // from any thread: stop accepting, drain

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gptq
