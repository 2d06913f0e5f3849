// gptq tokenize: show how a text is split into tokens.
#include <cstdio>

#include "common.h"
#include "gptq/tokenizer.h"

namespace gptq::cli {

Runner add_tokenize(CLI::App& app) {
  struct Args {
    std::string model, prompt, file;
    bool json = false, no_special = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("tokenize", "Tokenize a text with a model's tokenizer.json");
  c->add_option("-m,--model", a->model, "Model folder (or any folder with tokenizer.json)")->required();
  c->add_option("-p,--prompt", a->prompt, "Text");
  c->add_option("-f,--file", a->file, "Read the text from a file");
  c->add_flag("--no-special", a->no_special, "Do not add special tokens (BOS)");
  c->add_flag("--json", a->json, "Print JSON: ids, tokens, decoded");
  return [a]() {
    const std::string text = read_prompt(a->prompt, a->file);
    const Tokenizer tok = Tokenizer::from_model_dir(a->model);
    const auto ids = tok.encode(text, !a->no_special);
    if (a->json) {
      nlohmann::json j;
      j["ids"] = ids;
      std::vector<std::string> pieces;
      for (int32_t id : ids) pieces.push_back(tok.token_text(id));
      j["tokens"] = pieces;
      j["count"] = ids.size();
      j["decoded"] = tok.decode(ids);
      print_json(j);
    } else {
      for (int32_t id : ids) std::printf("%6d  '%s'\n", id, tok.token_text(id).c_str());
      std::printf("%zu tokens\n", ids.size());
    }
    return 0;
  };
}

}  // namespace gptq::cli
