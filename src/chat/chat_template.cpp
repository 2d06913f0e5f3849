#include "chat/chat_template.h"

#include "chat/jinja.h"
#include "core/fs.h"
#include "core/json.h"
#include "gptq/error.h"

namespace gptq::chat {

struct ChatTemplate::Impl {
  jinja::Template tmpl;
  std::string bos_token, eos_token;
};

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token)
    : impl_(std::make_shared<const Impl>(Impl{jinja::Template(source), std::move(bos_token), std::move(eos_token)})) {}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::ChatTemplate(const ChatTemplate&) = default;
ChatTemplate& ChatTemplate::operator=(const ChatTemplate&) = default;

std::string ChatTemplate::render(const std::vector<Message>& messages, bool add_generation_prompt) const {
  nlohmann::ordered_json globals = nlohmann::ordered_json::object();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const Message& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  globals["messages"] = std::move(list);
  globals["add_generation_prompt"] = add_generation_prompt;
  globals["bos_token"] = impl_->bos_token;
  globals["eos_token"] = impl_->eos_token;
  return impl_->tmpl.render(globals);
}

namespace {

// A special token in tokenizer_config.json: a string, {"content": ...} (an AddedToken), or null.
std::string token_text(const nlohmann::json& config, const char* key, const std::string& origin) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    if (auto content = json_string(*it, "content", origin)) return *content;
  }
  fail(origin, ": field \"", key, "\" must be a string or an object with a string \"content\"");
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::from_model_dir(const std::string& dir) {
  const std::string path = path_join(dir, "tokenizer_config.json");
  if (!file_exists(path)) return std::nullopt;
  const nlohmann::json config = read_json_file(path);
  if (!config.is_object()) fail(path, ": expected a JSON object");
  const std::string bos = token_text(config, "bos_token", path);
  const std::string eos = token_text(config, "eos_token", path);
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    // Named templates (e.g. "default", "tool_use", "rag"): the default one is the chat template.
    bool found = false;
    for (const auto& entry : *it) {
      if (!entry.is_object()) fail(path, ": \"chat_template\" list entries must be {name, template} objects");
      if (json_string(entry, "name", path) == "default") {
        const auto text = json_string(entry, "template", path);
        if (!text) fail(path, ": the \"default\" chat template has no \"template\" string");
        source = *text;
        found = true;
      }
    }
    if (!found) return std::nullopt;
  } else {
    fail(path, ": field \"chat_template\" must be a string or a list of {name, template}");
  }
  try {
    return ChatTemplate(source, bos, eos);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

}  // namespace gptq::chat
