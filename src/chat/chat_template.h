// Chat templates: the Jinja subset that Hugging Face models ship in tokenizer_config.json, rendered
// as transformers' apply_chat_template does (Jinja2 with trim_blocks, lstrip_blocks and loop
// controls; the template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
// `raise_exception(msg)`).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gptq::chat {

struct Message {
  std::string role, content;
};

class ChatTemplate {
 public:
  // Parses `source` (gptq::Error on a syntax error, naming the line).
  explicit ChatTemplate(const std::string& source, std::string bos_token = "", std::string eos_token = "");
  // The model's template from DIR/tokenizer_config.json ("chat_template": a string, or a list of
  // {name, template} where "default" is taken), with its bos/eos token strings (string or
  // {content: ...}); nullopt when the model has none; gptq::Error for a malformed file.
  static std::optional<ChatTemplate> from_model_dir(const std::string& dir);
  // The prompt text (gptq::Error from raise_exception or an evaluation error).
  std::string render(const std::vector<Message>& messages, bool add_generation_prompt) const;

  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  // Copies share the parsed template (it is immutable after construction).
  ChatTemplate(const ChatTemplate&);
  ChatTemplate& operator=(const ChatTemplate&);

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace gptq::chat
