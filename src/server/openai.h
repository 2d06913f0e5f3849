// The OpenAI API's request and response shapes for /v1/completions and /v1/chat/completions: a
// request body to an engine Request (every field checked, errors naming the field), and the
// results to response objects and server-sent-event chunks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "gptq/tokenizer.h"
#include "server/engine.h"

namespace gptq::server {

enum class Endpoint { kCompletions, kChat };

// What parsing needs to know about the server.
struct ApiContext {
  const Tokenizer* tok = nullptr;
  const chat::ChatTemplate* chat_template = nullptr;  // null: the model has none (chat is a 400)
  std::string model_name;
  int64_t max_sequence_tokens = 0;  // prompt + max_tokens limit
  int64_t vocab_size = 0;
};

struct ParsedRequest {
  Request req;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return logprobs (then req.top_logprobs >= 0)
};

// Throws ApiError (400, or 404 for an unknown model) naming the field at fault.
ParsedRequest parse_request(Endpoint ep, const std::string& body, const ApiContext& ctx);

// Builds the responses of one request. id and created are fixed at construction.
class ResponseWriter {
 public:
  ResponseWriter(Endpoint ep, const ApiContext& ctx, const ParsedRequest& p);
  // The whole response (non-streaming) from every piece, once the stream is done.
  nlohmann::json complete(const std::vector<Piece>& pieces, const Stream& s) const;
  // Streaming: the SSE events ("data: {...}\n\n") for new pieces; then the last ones (the held-back
  // text, finish_reason, usage when asked, and "data: [DONE]").
  std::string chunks(const std::vector<Piece>& pieces);
  std::string last_chunks(const Stream& s);

 private:
  nlohmann::json chunk(const std::string& text, const std::vector<const Piece*>& tokens,
                       const nlohmann::json& finish_reason) const;
  nlohmann::json logprobs(const std::vector<const Piece*>& tokens, size_t text_offset) const;
  nlohmann::json usage(const Stream& s) const;
  Endpoint ep_;
  const ApiContext& ctx_;
  bool logprobs_, include_usage_;
  std::string id_;
  int64_t created_;
  bool sent_role_ = false;  // chat streams open with a delta {"role": "assistant"}
  size_t text_offset_ = 0;  // completions logprobs' text_offset of the next token
};

// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_object(int status, const std::string& message, const std::string& param = "",
                            const std::string& code = "");
// j's text; invalid UTF-8 (a lone byte token's text in logprobs) becomes U+FFFD instead of throwing.
std::string dump(const nlohmann::json& j);

}  // namespace gptq::server
