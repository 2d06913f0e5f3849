#include "io/lora_adapter.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "core/fs.h"
#include "core/json.h"
#include "core/sha256.h"
#include "gptq/error.h"
#include "core/regex.h"

namespace gptq {

using nlohmann::json;

namespace {

constexpr int64_t kMaxRank = int64_t(1) << 20;
constexpr int64_t kMaxLayer = int64_t(1) << 20;
constexpr double kMaxAlpha = 1e9;

// Fields of PEFT's LoraConfig (and PeftConfig) that do not change the merged weights.
const std::set<std::string> kHarmless = {
    "task_type",      "peft_type",       "auto_mapping",   "base_model_name_or_path", "revision",
    "inference_mode", "lora_dropout",    "megatron_config", "megatron_core",          "loftq_config",
    "eva_config",     "corda_config",    "lora_ga_config", "runtime_config",          "qalora_group_size",
    "peft_version",   "layers_pattern",  "init_lora_weights"};
// Fields read below.
const std::set<std::string> kRead = {"r",           "lora_alpha",          "use_rslora",   "fan_in_fan_out",
                                     "bias",        "target_modules",      "exclude_modules", "layers_to_transform",
                                     "rank_pattern", "alpha_pattern",      "modules_to_save", "use_dora",
                                     "lora_bias",   "use_qalora"};

// null, false, "", [] or {}: the value PEFT writes for a feature that is off.
bool is_off(const json& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_string() && v.get<std::string>().empty()) ||
         ((v.is_array() || v.is_object()) && v.empty());
}

std::unique_ptr<Regex> compile(const std::string& pattern, const std::string& what) {
  try {
    return std::make_unique<Regex>(pattern);
  } catch (const Error& e) {
    fail(what, ": ", e.what());
  }
}

// A list of strings, or a single string (returned as the only element, *was_string set).
std::vector<std::string> strings_of(const json& v, const std::string& what, bool* was_string) {
  std::vector<std::string> out;
  if (was_string) *was_string = v.is_string();
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) fail(what, " must be a string or a list of strings, got ", v.type_name());
  for (const auto& e : v) {
    if (!e.is_string()) fail(what, " must hold strings, got ", json_preview(e));
    out.push_back(e.get<std::string>());
  }
  return out;
}

bool lowercase_equals(std::string s, const char* what) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s == what;
}

// The list form of target_modules / exclude_modules: the name, or its last dotted parts.
bool listed(const std::vector<std::string>& list, const std::string& module) {
  for (const auto& k : list)
    if (module == k || (module.size() > k.size() && module.compare(module.size() - k.size(), k.size(), k) == 0 &&
                        module[module.size() - k.size() - 1] == '.'))
      return true;
  return false;
}

}  // namespace

LoraAdapter::~LoraAdapter() = default;

LoraAdapter::LoraAdapter(const std::string& dir) : dir_(dir) {
  if (!dir_exists(dir)) fail("--adapter ", dir, ": no such folder");
  config_path_ = path_join(dir, "adapter_config.json");
  weights_path_ = path_join(dir, "adapter_model.safetensors");
  const std::string bin = path_join(dir, "adapter_model.bin");
  if (!file_exists(weights_path_)) {
    if (file_exists(bin))
      fail(bin, ": a pickled PyTorch file, which gptq does not load (unpickling can run code); convert it with "
                "PEFT: PeftModel.from_pretrained(base, \"", dir,
           "\").save_pretrained(OUT, safe_serialization=True) writes adapter_model.safetensors");
    fail(dir, ": no adapter_model.safetensors (a PEFT adapter folder holds adapter_config.json and "
              "adapter_model.safetensors)");
  }
  if (!file_exists(config_path_)) fail(dir, ": no adapter_config.json (a PEFT adapter folder holds one)");
  const std::string& o = config_path_;
  const std::string text = read_text_file(o, size_t(16) << 20);
  const json j = parse_json(text, o);
  if (!j.is_object()) fail(o, ": not a JSON object");
  auto field = [&](const char* k) { return cat(o, ": field \"", k, "\""); };

  if (const auto pt = json_string(j, "peft_type", o); pt && *pt != "LORA")
    fail(o, ": peft_type \"", *pt, "\" is not a LoRA adapter (only LORA can be merged here)");
  if (json_bool(j, "use_dora", o).value_or(false))
    fail(o, ": use_dora is set: DoRA rescales every column of the merged weight by a trained magnitude vector, "
            "which gptq merge-lora does not implement; merge it with PEFT (merge_and_unload) instead");
  if (json_bool(j, "lora_bias", o).value_or(false))
    fail(o, ": lora_bias is set (a trained bias on lora_B), which gptq merge-lora does not merge");
  if (json_bool(j, "use_qalora", o).value_or(false))
    fail(o, ": use_qalora is set: a QA-LoRA adapter pools its inputs and cannot be merged as W + s*B*A");
  const std::string bias = json_string(j, "bias", o).value_or("none");
  if (bias != "none")
    fail(o, ": bias \"", bias, "\" (trained base-layer biases) is not supported: only bias \"none\" is merged");
  if (auto it = j.find("init_lora_weights"); it != j.end() && it->is_string()) {
    const std::string init = it->get<std::string>();
    // These leave the base alone (B starts at zero or the adapter only starts from another A/B).
    if (init != "gaussian" && init != "eva" && init != "orthogonal")
      fail(o, ": init_lora_weights \"", init, "\": ",
           init.rfind("pissa", 0) == 0 || init == "olora" || init == "corda" || init == "loftq" || init == "lora_ga"
               ? "this initialisation also rewrote the base weights, so the adapter belongs to a residual model; "
                 "convert it to a plain LoRA with PEFT (save_pretrained(..., "
                 "path_initial_model_for_weight_conversion=...)) first"
               : "not an initialisation gptq merge-lora knows to leave the base weights unchanged");
  } else if (it != j.end() && !it->is_boolean() && !it->is_null()) {
    fail(field("init_lora_weights"), " must be true, false or a string");
  }
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kHarmless.count(it.key()) && !kRead.count(it.key()) && !is_off(*it))
      fail(o, ": field \"", it.key(), "\" = ", json_preview(*it, 40),
           " is not supported by gptq merge-lora (it may change what the adapter computes)");

  r_ = json_int(j, "r", o, 1, kMaxRank).value_or(8);
  alpha_ = json_number(j, "lora_alpha", o, -kMaxAlpha, kMaxAlpha).value_or(8);
  use_rslora_ = json_bool(j, "use_rslora", o).value_or(false);
  fan_in_fan_out_ = json_bool(j, "fan_in_fan_out", o).value_or(false);

  auto it = j.find("target_modules");
  if (it == j.end() || it->is_null())
    fail(o, ": no target_modules (PEFT writes the modules it adapted there)");
  bool is_string = false;
  std::vector<std::string> t = strings_of(*it, field("target_modules"), &is_string);
  if (is_string && lowercase_equals(t[0], "all-linear"))
    all_linear_ = true;
  else if (is_string)
    target_regex_ = compile(t[0], field("target_modules"));
  else
    target_list_ = std::move(t);
  if (it = j.find("exclude_modules"); it != j.end() && !it->is_null()) {
    std::vector<std::string> e = strings_of(*it, field("exclude_modules"), &is_string);
    if (is_string)
      exclude_regex_ = compile(e[0], field("exclude_modules"));
    else
      exclude_list_ = std::move(e);
  }
  if (it = j.find("layers_to_transform"); it != j.end() && !it->is_null()) {
    if (it->is_array()) {
      for (const auto& v : *it) layers_.push_back(json_to_int(v, field("layers_to_transform"), 0, kMaxLayer));
    } else {
      layers_.push_back(json_to_int(*it, field("layers_to_transform"), 0, kMaxLayer));
    }
  }
  if (it = j.find("layers_pattern"); it != j.end() && !is_off(*it)) {
    for (const auto& p : strings_of(*it, field("layers_pattern"), nullptr))
      layer_patterns_.push_back(compile(".*?\\." + p + "\\.(\\d+)\\.", field("layers_pattern")));
  }
  if (layer_patterns_.empty()) layer_patterns_.push_back(compile(".*?\\.[^.]*\\.(\\d+)\\.", "layers_pattern"));
  if (it = j.find("modules_to_save"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) fail(field("modules_to_save"), " must be a list of strings");
    modules_to_save_ = strings_of(*it, field("modules_to_save"), nullptr);
    for (const auto& m : modules_to_save_)
      save_excludes_.push_back(compile("(^|.*\\.)" + m + "($|\\..*)", field("modules_to_save")));
  }
  // PEFT tries the pattern keys in the file's order: read them from an order-keeping parse.
  const nlohmann::ordered_json ordered = parse_ordered_json(text, o);
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    const auto f = j.find(k);
    if (f == j.end() || f->is_null()) continue;
    if (!f->is_object()) fail(field(k), " must be an object of module pattern -> value");
    for (auto e = ordered[k].begin(); e != ordered[k].end(); ++e) {
      const std::string what = cat(field(k), " entry \"", e.key(), "\"");
      auto re = compile("(.*\\.)?(" + e.key() + ")$", what);
      const json& v = f->at(e.key());
      if (std::string(k) == "rank_pattern")
        rank_pattern_.emplace_back(std::move(re), json_to_int(v, what, 1, kMaxRank));
      else if (!v.is_number() || !std::isfinite(v.get<double>()) || std::fabs(v.get<double>()) > kMaxAlpha)
        fail(what, " must be a number in [-1e9, 1e9]");
      else
        alpha_pattern_.emplace_back(std::move(re), v.get<double>());
    }
  }
  weights_ = std::make_unique<SafetensorsFile>(weights_path_);
}

bool LoraAdapter::targets(const std::string& module, bool decoder_linear) const {
  if (exclude_regex_ ? exclude_regex_->full_match(module) : listed(exclude_list_, module)) return false;
  for (const auto& re : save_excludes_)
    if (re->match_start(module)) return false;
  if (all_linear_) return decoder_linear;
  if (target_regex_) return target_regex_->full_match(module);
  if (std::find(target_list_.begin(), target_list_.end(), module) != target_list_.end()) return true;
  if (!listed(target_list_, module)) return false;
  if (layers_.empty()) return true;
  for (const auto& re : layer_patterns_)
    if (const auto idx = re->match_start(module, 1)) {
      // \d+ of a module name: digits only, but maybe more than an int64 holds
      if (idx->size() > 18) return false;
      return std::find(layers_.begin(), layers_.end(), std::stoll(*idx)) != layers_.end();
    }
  return false;
}

bool LoraAdapter::saves(const std::string& module) const {
  for (const auto& m : modules_to_save_)
    if (module.size() >= m.size() && module.compare(module.size() - m.size(), m.size(), m) == 0) return true;
  return false;
}

int64_t LoraAdapter::rank(const std::string& module) const {
  for (const auto& [re, v] : rank_pattern_)
    if (re->match_start(module)) return v;
  return r_;
}

double LoraAdapter::alpha(const std::string& module) const {
  for (const auto& [re, v] : alpha_pattern_)
    if (re->match_start(module)) return v;
  return alpha_;
}

double LoraAdapter::scale(const std::string& module) const {
  const double r = double(rank(module));
  return alpha(module) / (use_rslora_ ? std::sqrt(r) : r);
}

std::string LoraAdapter::targets_text() const {
  if (all_linear_) return "\"all-linear\"";
  if (target_regex_) return "/" + target_regex_->pattern() + "/";
  std::string s = "[";
  for (size_t i = 0; i < target_list_.size(); ++i) s += (i ? ", " : "") + target_list_[i];
  return s + "]";
}

std::vector<std::pair<std::string, std::string>> LoraAdapter::file_hashes() const {
  return {{"adapter_config.json", sha256_of_file(config_path_)},
          {"adapter_model.safetensors", sha256_of_file(weights_path_)}};
}

}  // namespace gptq
