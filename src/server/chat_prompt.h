// A conversation turned into prompt tokens, defined once for gptq serve (/v1/chat/completions)
// and gptq chat, so both give the model the same tokens for the same messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "gptq/tokenizer.h"

namespace gptq::server {

// The template to chat with: template_file when given (its bos_token/eos_token are the tokenizer's
// BOS and EOS strings), else the model's tokenizer_config.json chat_template; nullopt when there
// is neither. gptq::Error for a file that cannot be read or a template that does not parse.
std::optional<chat::ChatTemplate> load_chat_template(const std::string& model_dir, const Tokenizer& tok,
                                                     const std::string& template_file);

// The messages rendered with the generation prompt and tokenized as transformers'
// apply_chat_template(tokenize=True) does: no BOS added, the template writes the special tokens
// itself. gptq::Error when the template refuses the messages (raise_exception) or fails.
std::vector<int32_t> chat_prompt_tokens(const chat::ChatTemplate& tmpl, const Tokenizer& tok,
                                        const std::vector<chat::Message>& messages);

}  // namespace gptq::server
