// Building a Tokenizer from tokenizer.json (and, like transformers' AutoTokenizer, the
// tokenizer_config.json next to it).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json.h"
#include "gptq/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace gptq {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A special-token entry of tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const auto& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// Whether a stage of this type appears anywhere in j (stages nest inside Sequence).
bool mentions_type(const json& j, const char* type) {
  if (j.is_object()) {
    if (j.contains("type") && j["type"] == type) return true;
    for (const auto& [k, v] : j.items())
      if (mentions_type(v, type)) return true;
  } else if (j.is_array()) {
    for (const auto& v : j)
      if (mentions_type(v, type)) return true;
  }
  return false;
}

// Fills impl.prefix_ids / suffix_ids from one post-processor; `Sequence` nests.
void parse_post_processor(const json& j, Tokenizer::Impl& impl) {
  if (j.is_null()) return;
  if (!j.is_object() || !j.contains("type")) fail("post_processor without a \"type\"");
  const auto type = j["type"].get<std::string>();
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    for (const auto& p : j.at("processors")) parse_post_processor(p, impl);
    return;
  }
  std::vector<int32_t> pre, post;
  if (type == "TemplateProcessing") {
    const auto& specials = j.at("special_tokens");
    bool seen_a = false;
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        seen_a = true;
        continue;
      }
      if (!item.contains("SpecialToken")) fail("TemplateProcessing: unknown template item ", json_preview(item));
      const auto name = item["SpecialToken"].at("id").get<std::string>();
      if (!specials.contains(name)) fail("TemplateProcessing: special token \"", name, "\" is not in special_tokens");
      for (const auto& id : specials[name].at("ids"))
        (seen_a ? post : pre).push_back(int32_t(json_to_int(id, "TemplateProcessing token id", 0, INT32_MAX)));
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    pre.push_back(int32_t(json_to_int(j.at("cls").at(1), "cls token id", 0, INT32_MAX)));
    post.push_back(int32_t(json_to_int(j.at("sep").at(1), "sep token id", 0, INT32_MAX)));
  } else {
    fail("unsupported post_processor type \"", type, "\"");
  }
  // A later processor wraps what the earlier ones produced.
  impl.prefix_ids.insert(impl.prefix_ids.begin(), pre.begin(), pre.end());
  impl.suffix_ids.insert(impl.suffix_ids.end(), post.begin(), post.end());
}

void parse_added_tokens(const json& list, Tokenizer::Impl& impl) {
  if (list.is_null()) return;
  if (!list.is_array()) fail("\"added_tokens\" is not a list");
  // Added tokens extend the vocabulary, densely too (see BpeModel::from_json).
  const int64_t max_added_id = int64_t(impl.model.max_id()) + 2 * int64_t(list.size()) + 1024;
  for (const auto& e : list) {
    if (!e.is_object()) fail("added token ", json_preview(e), " is not an object");
    tok::AddedToken t;
    t.id = int32_t(json_to_int(e.at("id"), "added token id", 0, INT32_MAX));
    t.content = e.at("content").get<std::string>();
    t.special = e.value("special", false);
    t.lstrip = e.value("lstrip", false);
    t.rstrip = e.value("rstrip", false);
    t.single_word = e.value("single_word", false);
    t.normalized = e.value("normalized", !t.special);
    if (t.content.empty() || t.id < 0) fail("added token ", json_preview(e), " has no content or a negative id");
    if (t.id > max_added_id)
      fail("added token ", json_preview(e), " has an id far beyond the vocabulary's ", impl.model.max_id() + 1, " ids");
    const int index = static_cast<int>(impl.added.size());
    impl.added_by_id[t.id] = index;
    impl.added_by_content[t.content] = t.id;
    impl.added.push_back(std::move(t));
  }
  // Normalized tokens are looked for in normalized text only when there is a normalizer to apply.
  for (size_t i = 0; i < impl.added.size(); ++i) {
    const auto& t = impl.added[i];
    (t.normalized && impl.normalizer ? impl.normalized_matcher : impl.raw_matcher).add(t, static_cast<int>(i));
  }
}

// transformers (v5) does not run a SentencePiece-style tokenizer.json as written when
// tokenizer_config.json names LlamaTokenizer: LlamaTokenizer.__init__ keeps only vocab and merges
// and rebuilds the rest (models/llama/tokenization_llama.py): BPE(fuse_unk, byte_fallback, no
// unk_token), no normalizer, Metaspace(prepend_scheme from add_prefix_space/legacy, split=False),
// decoder Replace/ByteFallback/Fuse/Strip. Older conversions (Prepend + Replace normalizer, an
// unk_token) therefore encode differently (" Hello" gets one "▁", not two; characters with no
// piece and no byte token are dropped instead of becoming <unk>). The golden outputs come from
// transformers, so we do the same. Byte-level files are left alone.
void apply_llama_tokenizer_class(const json& cfg, Tokenizer::Impl& impl) {
  const bool add_prefix_space = cfg.contains("add_prefix_space") && cfg["add_prefix_space"].is_boolean()
                                    ? cfg["add_prefix_space"].get<bool>()
                                    : true;
  const bool legacy = cfg.contains("legacy") && cfg["legacy"].is_boolean() ? cfg["legacy"].get<bool>() : false;
  const auto scheme = !add_prefix_space ? tok::PrependScheme::kNever
                      : legacy          ? tok::PrependScheme::kAlways
                                        : tok::PrependScheme::kFirst;
  impl.normalizer.reset();
  impl.normalized_matcher = {};
  impl.raw_matcher = {};
  for (size_t i = 0; i < impl.added.size(); ++i) impl.raw_matcher.add(impl.added[i], static_cast<int>(i));
  impl.pre_tokenizer = tok::make_metaspace("\xE2\x96\x81", scheme, false);
  impl.model.set_unk_id(-1);
  impl.model.set_byte_fallback(true);
  impl.model.set_fuse_unk(true);
  impl.decoder = tok::make_llama_decoder(add_prefix_space);
  impl.decoder_byte_fallback = true;

  // Like LlamaTokenizerFast.update_post_processor: BOS/EOS from add_bos_token/add_eos_token.
  const bool has_bos_flag = cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean();
  const bool has_eos_flag = cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean();
  if (has_bos_flag || has_eos_flag) {
    auto id_of = [&](const char* key) -> int32_t {
      const auto name = config_token(cfg, key);
      if (!name) return -1;
      if (auto it = impl.added_by_content.find(*name); it != impl.added_by_content.end()) return it->second;
      return impl.model.token_to_id(*name);
    };
    const bool add_bos = has_bos_flag ? cfg["add_bos_token"].get<bool>() : true;
    const bool add_eos = has_eos_flag ? cfg["add_eos_token"].get<bool>() : false;
    impl.prefix_ids.clear();
    impl.suffix_ids.clear();
    if (const int32_t b = id_of("bos_token"); add_bos && b >= 0) impl.prefix_ids.push_back(b);
    if (const int32_t e = id_of("eos_token"); add_eos && e >= 0) impl.suffix_ids.push_back(e);
  }
}

// j: tokenizer.json; cfg: tokenizer_config.json next to it, or null.
void build(const json& j, const json& cfg, Tokenizer::Impl& impl) {
  if (!j.is_object()) fail("top level is not a JSON object");
  if (!j.contains("model") || !j["model"].is_object()) fail("no \"model\" object");
  const auto& model = j["model"];
  const std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>()
                           : model.contains("merges")                          ? "BPE"
                                                                               : "(none)";
  if (type != "BPE") fail("unsupported model type \"", type, "\" (only BPE is supported)");
  if (!model.contains("vocab")) fail("model has no \"vocab\"");

  impl.model = tok::BpeModel::from_json(model);
  const json null;
  const json& decoder = j.contains("decoder") ? j["decoder"] : null;
  const json& pre_tokenizer = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : null;
  impl.normalizer = tok::make_normalizer(j.contains("normalizer") ? j["normalizer"] : null);
  impl.pre_tokenizer = tok::make_pre_tokenizer(pre_tokenizer);
  impl.decoder = tok::make_decoder(decoder);
  impl.decoder_byte_fallback = mentions_type(decoder, "ByteFallback");
  impl.byte_level = mentions_type(pre_tokenizer, "ByteLevel") || mentions_type(decoder, "ByteLevel");
  parse_added_tokens(j.contains("added_tokens") ? j["added_tokens"] : null, impl);
  parse_post_processor(j.contains("post_processor") ? j["post_processor"] : null, impl);

  if (cfg.is_object()) {
    const std::string cls = cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string()
                                ? cfg["tokenizer_class"].get<std::string>()
                                : std::string();
    if ((cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast") && !impl.byte_level)
      apply_llama_tokenizer_class(cfg, impl);
  }

  int32_t max_id = impl.model.max_id();
  for (const auto& t : impl.added) max_id = std::max(max_id, t.id);
  impl.vocab_size = max_id + 1;
  for (const auto* ids : {&impl.prefix_ids, &impl.suffix_ids})
    for (int32_t id : *ids)
      if (id < 0 || id >= impl.vocab_size)
        fail("post_processor adds token id ", id, ", outside the vocabulary (", impl.vocab_size, " ids)");

  impl.bos = impl.prefix_ids.empty() ? -1 : impl.prefix_ids.front();
  // EOS: what tokenizer_config.json names, else the first conventional end token present.
  auto added_id = [&](const std::string& name) -> int32_t {
    auto it = impl.added_by_content.find(name);
    return it == impl.added_by_content.end() ? -1 : it->second;
  };
  if (cfg.is_object())
    if (auto name = config_token(cfg, "eos_token")) {
      impl.eos = added_id(*name);
      if (impl.eos < 0) impl.eos = impl.model.token_to_id(*name);
    }
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>"})
    if (impl.eos < 0) impl.eos = added_id(name);
}

}  // namespace

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  const json j = read_json_file(tokenizer_json_path);
  // transformers' AutoTokenizer reads tokenizer_config.json from the same folder; so do we.
  json cfg;
  const fs::path cfg_path = fs::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::exists(cfg_path, ec)) cfg = read_json_file(cfg_path.string());

  auto impl = std::make_unique<Impl>();
  impl->path = tokenizer_json_path;
  try {
    build(j, cfg, *impl);
  } catch (const json::exception& e) {
    fail(tokenizer_json_path, ": unexpected structure: ", json_error_text(e));
  } catch (const Error& e) {
    fail(tokenizer_json_path, ": ", e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_model_dir(const std::string& dir) {
  const fs::path p = fs::path(dir) / "tokenizer.json";
  std::error_code ec;
  if (!fs::exists(p, ec)) fail("no tokenizer.json in ", dir);
  return from_file(p.string());
}

}  // namespace gptq
