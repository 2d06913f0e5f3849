#include "server/chat_prompt.h"

#include "core/fs.h"
#include "gptq/error.h"

namespace gptq::server {

std::optional<chat::ChatTemplate> load_chat_template(const std::string& model_dir, const Tokenizer& tok,
                                                     const std::string& template_file) {
  if (template_file.empty()) return chat::ChatTemplate::from_model_dir(model_dir);
  const auto text = [&](int32_t id) { return id >= 0 ? tok.token_text(id) : std::string(); };
  const std::string source = read_text_file(template_file);  // its errors name the file already
  try {
    return chat::ChatTemplate(source, text(tok.bos_id()), text(tok.eos_id()));
  } catch (const Error& e) {
    fail(template_file, ": ", e.what());  // a syntax error, naming the line
  }
}

std::vector<int32_t> chat_prompt_tokens(const chat::ChatTemplate& tmpl, const Tokenizer& tok,
                                        const std::vector<chat::Message>& messages) {
  return tok.encode(tmpl.render(messages, /*add_generation_prompt=*/true), /*add_special=*/false);
}

}  // namespace gptq::server
