#include "server/openai.h"

#include <atomic>
#include <chrono>
#include <random>

#include "core/json.h"
#include "server/api_error.h"
#include "server/chat_prompt.h"

namespace gptq::server {

using nlohmann::json;

namespace {

constexpr const char* kOrigin = "request";
constexpr int kMaxTopLogprobs = 20;  // OpenAI's limit
constexpr size_t kMaxStops = 16;

// Runs a field reader of core/json.h; its gptq::Error becomes a 400 naming the field.
template <typename F>
auto field(const char* key, F&& read) {
  try {
    return read();
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw ApiError(400, e.what(), key);
  }
}

[[noreturn]] void bad(const std::string& key, const std::string& message) {
  throw ApiError(400, cat(kOrigin, ": field \"", key, "\" ", message), key);
}

std::vector<int32_t> token_ids(const json& arr, const char* key, int64_t vocab) {
  std::vector<int32_t> ids;
  for (const auto& v : arr) {
    if (!v.is_number_integer()) bad(key, "must be a string or a list of token ids (integers)");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab) bad(key, cat("has token id ", id, " outside the vocabulary [0, ", vocab, ")"));
    ids.push_back(int32_t(id));
  }
  return ids;
}

std::vector<int32_t> completion_prompt(const json& body, const ApiContext& ctx) {
  const auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) bad("prompt", "is required");
  if (it->is_string()) return ctx.tok->encode(it->get<std::string>(), true);
  // A list of one string is how some clients send a single prompt.
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) return ctx.tok->encode((*it)[0].get<std::string>(), true);
  if (it->is_array() && !it->empty() && (*it)[0].is_array())
    bad("prompt", "holds several prompts: this server takes one prompt per request");
  if (!it->is_array()) bad("prompt", cat("must be a string or a list of token ids, got ", it->type_name()));
  return token_ids(*it, "prompt", ctx.vocab_size);
}

// content: a string, or a list of {"type": "text", "text": ...} parts (joined); null for none.
std::string message_content(const json& m, size_t i) {
  const std::string key = cat("messages[", i, "].content");
  const auto it = m.find("content");
  if (it == m.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) bad(key, cat("must be a string or a list of text parts, got ", it->type_name()));
  std::string text;
  for (const auto& part : *it) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") || !part["text"].is_string())
      bad(key, "parts must be {\"type\": \"text\", \"text\": \"...\"} (only text is supported)");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<int32_t> chat_prompt(const json& body, const ApiContext& ctx) {
  if (!ctx.chat_template)
    throw ApiError(400,
                   "this model has no chat template (no chat_template in its tokenizer_config.json): start the "
                   "server with --chat-template FILE, or use /v1/completions",
                   "messages", "no_chat_template");
  const auto it = body.find("messages");
  if (it == body.end() || it->is_null()) bad("messages", "is required");
  if (!it->is_array() || it->empty()) bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects");
  std::vector<chat::Message> messages;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    if (!m.is_object()) bad(cat("messages[", i, "]"), "must be an object with \"role\" and \"content\"");
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) bad(cat("messages[", i, "].role"), "must be a string");
    messages.push_back({role->get<std::string>(), message_content(m, i)});
  }
  try {
    return chat_prompt_tokens(*ctx.chat_template, *ctx.tok, messages);
  } catch (const Error& e) {
    throw ApiError(400, cat("the chat template refused these messages: ", e.what()), "messages");
  }
}

std::vector<std::string> stop_strings(const json& body) {
  const auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return {};
  std::vector<std::string> out;
  if (it->is_string()) {
    out.push_back(it->get<std::string>());
  } else if (it->is_array()) {
    if (it->size() > kMaxStops) bad("stop", cat("may hold at most ", kMaxStops, " strings, got ", it->size()));
    for (const auto& s : *it) {
      if (!s.is_string()) bad("stop", "must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    bad("stop", cat("must be a string or a list of strings, got ", it->type_name()));
  }
  for (const auto& s : out)
    if (s.empty()) bad("stop", "must not hold an empty string");
  return out;
}

std::string piece_text(const Tokenizer& tok, int32_t id) {
  if (tok.kind() != "sentencepiece-bpe") return tok.decode({id}, false);
  // decode() of one piece would drop its leading space ("▁the"); the piece itself keeps it.
  std::string t = tok.token_text(id);
  if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += t[i++];
    }
  }
  return out;
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx%08llx", prefix, (unsigned long long)salt, (unsigned long long)counter++);
  return buf;
}

}  // namespace

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json error_object(int status, const std::string& message, const std::string& param, const std::string& code) {
  const ApiError e(status, message, param, code);
  return {{"error",
           {{"message", message}, {"type", e.type()}, {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}}}};
}

ParsedRequest parse_request(Endpoint ep, const std::string& body_text, const ApiContext& ctx) {
  json body;
  try {
    body = parse_json(body_text, "request body");
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  if (!body.is_object()) throw ApiError(400, cat("request body: must be a JSON object, got ", body.type_name()));

  ParsedRequest p;
  Request& r = p.req;
  if (auto m = field("model", [&] { return json_string(body, "model", kOrigin); }); m && *m != ctx.model_name)
    throw ApiError(404, cat("the model '", *m, "' does not exist: this server serves '", ctx.model_name, "'"), "model",
                   "model_not_found");
  if (auto n = field("n", [&] { return json_int(body, "n", kOrigin, 1, INT32_MAX); }); n && *n != 1)
    throw ApiError(400, cat(kOrigin, ": field \"n\" must be 1 (one choice per request), got ", *n), "n");
  r.prompt = ep == Endpoint::kChat ? chat_prompt(body, ctx) : completion_prompt(body, ctx);
  if (r.prompt.empty()) bad(ep == Endpoint::kChat ? "messages" : "prompt", "gives no tokens");
  const int64_t room = ctx.max_sequence_tokens - int64_t(r.prompt.size());
  if (room < 1)
    throw ApiError(400, cat("the prompt has ", r.prompt.size(), " tokens but a sequence may hold at most ",
                            ctx.max_sequence_tokens, " tokens (prompt + max_tokens): shorten it"),
                   ep == Endpoint::kChat ? "messages" : "prompt", "context_length_exceeded");

  const char* max_key = body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const auto max_tokens = field(max_key, [&] { return json_int(body, max_key, kOrigin, 1, INT32_MAX); });
  // OpenAI's defaults: 16 for completions, as many as fit for chat.
  r.max_tokens = max_tokens.value_or(ep == Endpoint::kChat ? room : std::min<int64_t>(16, room));
  if (r.max_tokens > room)
    throw ApiError(400, cat("max_tokens is ", r.max_tokens, " but the prompt has ", r.prompt.size(),
                            " tokens and a sequence may hold at most ", ctx.max_sequence_tokens, " tokens: at most ",
                            room, " can be generated"),
                   max_key, "context_length_exceeded");

  SamplingParams& s = r.sampling;
  s.temperature = float(field("temperature", [&] { return json_number(body, "temperature", kOrigin, 0, 2); }).value_or(1.0));
  s.top_p = float(field("top_p", [&] { return json_number(body, "top_p", kOrigin, 0, 1); }).value_or(1.0));
  if (!(s.top_p > 0)) bad("top_p", "must be in (0, 1]");
  s.top_k = 0;
  s.min_p = 0;
  s.presence_penalty = float(field("presence_penalty", [&] { return json_number(body, "presence_penalty", kOrigin, -2, 2); }).value_or(0));
  s.frequency_penalty = float(field("frequency_penalty", [&] { return json_number(body, "frequency_penalty", kOrigin, -2, 2); }).value_or(0));
  const auto seed = field("seed", [&] { return json_int(body, "seed", kOrigin, INT64_MIN, INT64_MAX); });
  s.seed = seed ? uint64_t(*seed) : std::random_device{}();
  r.stop = stop_strings(body);

  if (ep == Endpoint::kCompletions) {
    const auto n = field("logprobs", [&] { return json_int(body, "logprobs", kOrigin, 0, kMaxTopLogprobs); });
    p.logprobs = n.has_value();
    r.top_logprobs = n ? int(*n) : -1;
  } else {
    p.logprobs = field("logprobs", [&] { return json_bool(body, "logprobs", kOrigin); }).value_or(false);
    const auto top = field("top_logprobs", [&] { return json_int(body, "top_logprobs", kOrigin, 0, kMaxTopLogprobs); });
    if (top && !p.logprobs) bad("top_logprobs", "needs \"logprobs\": true");
    r.top_logprobs = p.logprobs ? int(top.value_or(0)) : -1;
  }

  p.stream = field("stream", [&] { return json_bool(body, "stream", kOrigin); }).value_or(false);
  if (const auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!p.stream) bad("stream_options", "is only allowed with \"stream\": true");
    if (!it->is_object()) bad("stream_options", cat("must be an object, got ", it->type_name()));
    p.include_usage = field("stream_options", [&] { return json_bool(*it, "include_usage", "stream_options"); }).value_or(false);
  }
  return p;
}

// ---- responses ----------------------------------------------------------------------------------

ResponseWriter::ResponseWriter(Endpoint ep, const ApiContext& ctx, const ParsedRequest& p)
    : ep_(ep), ctx_(ctx), logprobs_(p.logprobs), include_usage_(p.include_usage),
      id_(new_id(ep == Endpoint::kChat ? "chatcmpl-" : "cmpl-")),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {}

json ResponseWriter::usage(const Stream& s) const {
  return {{"prompt_tokens", s.prompt_tokens}, {"completion_tokens", s.completion_tokens},
          {"total_tokens", s.prompt_tokens + s.completion_tokens}};
}

json ResponseWriter::logprobs(const std::vector<const Piece*>& tokens, size_t text_offset) const {
  const Tokenizer& tok = *ctx_.tok;
  if (ep_ == Endpoint::kCompletions) {
    json toks = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    for (const Piece* p : tokens) {
      toks.push_back(piece_text(tok, p->id));
      lps.push_back(p->logprob);
      json top = json::object();
      for (const auto& [id, lp] : p->top) top[piece_text(tok, id)] = lp;
      tops.push_back(top);
      offsets.push_back(text_offset);
      text_offset += p->text.size();
    }
    return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
  }
  auto entry = [&](int32_t id, float lp) {
    const std::string t = piece_text(tok, id);
    json bytes = json::array();
    for (unsigned char c : t) bytes.push_back(int(c));
    return json{{"token", t}, {"logprob", lp}, {"bytes", bytes}};
  };
  json content = json::array();
  for (const Piece* p : tokens) {
    json e = entry(p->id, p->logprob);
    e["top_logprobs"] = json::array();
    for (const auto& [id, lp] : p->top) e["top_logprobs"].push_back(entry(id, lp));
    content.push_back(e);
  }
  return {{"content", content}};
}

json ResponseWriter::complete(const std::vector<Piece>& pieces, const Stream& s) const {
  std::string text;
  std::vector<const Piece*> tokens;
  for (const auto& p : pieces) {
    text += p.text;
    tokens.push_back(&p);
  }
  text += s.tail;
  json choice = {{"index", 0}, {"logprobs", logprobs_ ? logprobs(tokens, 0) : json()}, {"finish_reason", s.finish_reason}};
  if (ep_ == Endpoint::kChat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  return {{"id", id_}, {"object", ep_ == Endpoint::kChat ? "chat.completion" : "text_completion"}, {"created", created_},
          {"model", ctx_.model_name}, {"choices", json::array({choice})}, {"usage", usage(s)}};
}

json ResponseWriter::chunk(const std::string& text, const std::vector<const Piece*>& tokens, const json& finish_reason) const {
  json choice = {{"index", 0}, {"logprobs", logprobs_ && !tokens.empty() ? logprobs(tokens, text_offset_) : json()},
                 {"finish_reason", finish_reason}};
  if (ep_ == Endpoint::kChat) {
    choice["delta"] = json::object();
    if (!sent_role_) choice["delta"]["role"] = "assistant";
    if (!text.empty() || !sent_role_) choice["delta"]["content"] = text;
  } else {
    choice["text"] = text;
  }
  json j = {{"id", id_}, {"object", ep_ == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_}, {"model", ctx_.model_name}, {"choices", json::array({choice})}};
  if (include_usage_) j["usage"] = nullptr;  // only the last chunk carries it
  return j;
}

std::string ResponseWriter::chunks(const std::vector<Piece>& pieces) {
  std::string out;
  for (const auto& p : pieces) {
    // A token whose text is held back (half a character, a possible stop string) sends nothing
    // unless logprobs were asked for.
    if (p.text.empty() && !logprobs_ && sent_role_) continue;
    out += "data: " + dump(chunk(p.text, {&p}, nullptr)) + "\n\n";
    sent_role_ = true;
    text_offset_ += p.text.size();
  }
  return out;
}

std::string ResponseWriter::last_chunks(const Stream& s) {
  std::string out;
  if (s.error_status != 0) {
    out += "data: " + dump(error_object(s.error_status, s.error_message)) + "\n\n";
  } else {
    out += "data: " + dump(chunk(s.tail, {}, s.finish_reason)) + "\n\n";
    if (include_usage_) {
      json u = chunk("", {}, nullptr);
      u["choices"] = json::array();
      u["usage"] = usage(s);
      out += "data: " + dump(u) + "\n\n";
    }
  }
  return out + "data: [DONE]\n\n";
}

}  // namespace gptq::server
