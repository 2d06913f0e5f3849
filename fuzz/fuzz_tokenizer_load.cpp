// tokenizer.json loading (with tokenizer_config.json). Input: tokenizer.json, optionally followed
// by a NUL byte and tokenizer_config.json (JSON text holds no raw NUL). A tokenizer that loads
// then encodes a fixed text and decodes its ids and the first ids of its vocabulary.
// GPTQ_FUZZ_WRITE_SEEDS=DIR writes the shared tokenizers (GPTQ_SHARED) cut down to their first
// ids, with and without their tokenizer_config.json, as seeds (the full files are megabytes).
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "fuzz_tokenizer_invariants.h"
#include "gptq/error.h"

namespace {

std::string dir;

// ASCII, an added-token lookalike, CJK, an emoji, a lone continuation byte, spaces and a newline.
const std::string kText = "Hello world <s></s><|endoftext|>  \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82 a\x80z\n\tend";

// tokenizer.json with the vocabulary cut to ids below `keep` and the merges that stay within it.
std::string trimmed(const std::string& path, int64_t keep) {
  using nlohmann::json;
  json j = json::parse(gptq::read_text_file(path));
  json& model = j["model"];
  json vocab = json::object();
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it)
    if (it.value().get<int64_t>() < keep) vocab[it.key()] = it.value();
  json merges = json::array();
  for (const auto& m : model["merges"]) {
    std::string a, b;
    if (m.is_string()) {
      const auto t = m.get<std::string>();
      a = t.substr(0, t.find(' '));
      b = t.substr(t.find(' ') + 1);
    } else {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    }
    if (vocab.contains(a) && vocab.contains(b) && vocab.contains(a + b)) merges.push_back(m);
  }
  model["vocab"] = vocab;
  model["merges"] = merges;
  return j.dump(1);
}

void write_seeds(const std::string& out) {
  namespace fs = std::filesystem;
  const fs::path models = fs::path(gptq_fuzz::shared_dir()) / "models";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(models, ec)) {
    const fs::path tj = e.path() / "tokenizer.json";
    if (!fs::is_regular_file(tj)) continue;
    const std::string name = e.path().filename().string();
    const std::string text = trimmed(tj.string(), 400);
    gptq_fuzz::write_file(out + "/" + name + ".json", text);
    const fs::path cfg = e.path() / "tokenizer_config.json";
    if (fs::is_regular_file(cfg))
      gptq_fuzz::write_file(out + "/" + name + "_with_config.bin", text + std::string(1, '\0') + gptq::read_text_file(cfg));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  gptq_fuzz::write_seeds_if_asked(write_seeds);
  dir = gptq_fuzz::scratch_subdir("tok");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  gptq_fuzz::write_file(dir + "/tokenizer.json", in.substr(0, nul));
  if (nul != std::string_view::npos)
    gptq_fuzz::write_file(dir + "/tokenizer_config.json", in.substr(nul + 1));
  else
    gptq_fuzz::remove_file(dir + "/tokenizer_config.json");
  try {
    const gptq::Tokenizer tok = gptq::Tokenizer::from_file(dir + "/tokenizer.json");
    for (bool add_special : {true, false}) {
      const auto ids = tok.encode(kText, add_special);
      gptq_fuzz::check_ids(tok, ids);
      gptq_fuzz::check_decode(tok, ids);
    }
    std::vector<int32_t> first;
    for (int32_t id = -1; id < tok.vocab_size() && id < 300; ++id) first.push_back(id);
    gptq_fuzz::check_decode(tok, first);
    (void)tok.token_text(0);
    (void)tok.token_id("a");
  } catch (const gptq::Error&) {
  }
  return 0;
}
