// Chat templates: each input is a template source, parsed and rendered with a small conversation
// (with and without the generation prompt). A syntax or evaluation error (gptq::Error) is the clean
// failure; a crash, hang, sanitizer report or any other exception is a bug.
#include <string>

#include "chat/chat_template.h"
#include "gptq/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  const std::vector<gptq::chat::Message> messages = {
      {"system", "Be brief."}, {"user", " Hi {{ there }} \xE6\x97\xA5 "}, {"assistant", "Hello."}, {"user", "?"}};
  try {
    const gptq::chat::ChatTemplate t(source, "<s>", "</s>");
    for (bool gen : {false, true}) {
      try {
        t.render(messages, gen);
      } catch (const gptq::Error&) {
      }
    }
  } catch (const gptq::Error&) {
  }
  return 0;
}
