#include "gptq/model_config.h"

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "gptq/error.h"

namespace gptq {

using nlohmann::json;

namespace {

const char* const kSupported[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

json parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(origin, ": malformed JSON: ", e.what());
  }
}

template <typename T>
T get_or(const json& j, const char* key, T def, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail(origin, ": field \"", key, "\" has the wrong type (", it->type_name(), ")");
  }
}

int64_t require_int(const json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) fail(origin, ": missing field \"", key, "\"");
  if (!it->is_number_integer()) fail(origin, ": field \"", key, "\" must be an integer");
  const int64_t v = it->get<int64_t>();
  if (v <= 0) fail(origin, ": field \"", key, "\" must be positive, got ", v);
  return v;
}

std::vector<int32_t> int_or_list(const json& j, const char* key, const std::string& origin) {
  std::vector<int32_t> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (it->is_number_integer()) {
    out.push_back(it->get<int32_t>());
  } else if (it->is_array()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer()) fail(origin, ": field \"", key, "\" must hold integers");
      out.push_back(v.get<int32_t>());
    }
  } else {
    fail(origin, ": field \"", key, "\" must be an integer or a list of integers");
  }
  return out;
}

QuantConfig parse_quant(const json& q, const std::string& origin) {
  QuantConfig c;
  c.quant_method = get_or<std::string>(q, "quant_method", "gptq", origin);
  c.bits = int(get_or<int64_t>(q, "bits", 4, origin));
  c.group_size = int(get_or<int64_t>(q, "group_size", 128, origin));
  c.desc_act = get_or<bool>(q, "desc_act", false, origin);
  c.sym = get_or<bool>(q, "sym", true, origin);
  c.damp_percent = get_or<double>(q, "damp_percent", 0.01, origin);
  c.true_sequential = get_or<bool>(q, "true_sequential", true, origin);
  c.static_groups = get_or<bool>(q, "static_groups", false, origin);
  c.checkpoint_format = get_or<std::string>(q, "checkpoint_format", "gptq", origin);
  if (c.checkpoint_format.empty()) c.checkpoint_format = "gptq";
  return c;
}

void parse_rope(const json& j, ModelConfig& c, const std::string& origin) {
  // transformers 5 moves rope_theta and the scaling dict into "rope_parameters".
  const json* rp = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rp = &j["rope_parameters"];
  c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, origin);
  if (rp) c.rope_theta = get_or<double>(*rp, "rope_theta", c.rope_theta, origin);
  const json* rs = nullptr;
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rs = &j["rope_scaling"];
  else if (rp) rs = rp;
  if (!rs) return;
  std::string type = get_or<std::string>(*rs, "rope_type", "", origin);
  if (type.empty()) type = get_or<std::string>(*rs, "type", "default", origin);
  c.rope_scaling.type = type;
  c.rope_scaling.factor = get_or<double>(*rs, "factor", 1.0, origin);
  c.rope_scaling.low_freq_factor = get_or<double>(*rs, "low_freq_factor", 1.0, origin);
  c.rope_scaling.high_freq_factor = get_or<double>(*rs, "high_freq_factor", 4.0, origin);
  c.rope_scaling.original_max_position_embeddings =
      get_or<int64_t>(*rs, "original_max_position_embeddings", 8192, origin);
  if (type != "default" && type != "linear" && type != "llama3")
    fail(origin, ": unsupported rope scaling type \"", type, "\" (supported: default, linear, llama3)");
}

}  // namespace

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& origin) {
  const json j = parse_json(text, origin);
  if (!j.is_object()) fail(origin, ": expected a JSON object");
  ModelConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string())
    fail(origin, ": missing \"architectures\" (expected e.g. [\"LlamaForCausalLM\"])");
  c.architecture = j["architectures"][0].get<std::string>();
  bool ok = false;
  for (const char* a : kSupported) ok |= c.architecture == a;
  if (!ok)
    fail(origin, ": unsupported architecture ", c.architecture,
         " (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  c.model_type = get_or<std::string>(j, "model_type", "", origin);
  c.hidden_size = require_int(j, "hidden_size", origin);
  c.intermediate_size = require_int(j, "intermediate_size", origin);
  c.num_layers = require_int(j, "num_hidden_layers", origin);
  c.num_heads = require_int(j, "num_attention_heads", origin);
  c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? require_int(j, "num_key_value_heads", origin)
                       : c.num_heads;
  c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? require_int(j, "head_dim", origin)
                                                                   : c.hidden_size / c.num_heads;
  c.vocab_size = require_int(j, "vocab_size", origin);
  c.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", 2048, origin);
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, origin);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, origin);
  c.attention_bias = c.architecture == "Qwen2ForCausalLM" ? true : get_or<bool>(j, "attention_bias", false, origin);
  c.mlp_bias = get_or<bool>(j, "mlp_bias", false, origin);
  c.torch_dtype = get_or<std::string>(j, "dtype", get_or<std::string>(j, "torch_dtype", "", origin), origin);
  const auto bos = int_or_list(j, "bos_token_id", origin);
  if (!bos.empty()) c.bos_token_id = bos[0];
  c.eos_token_ids = int_or_list(j, "eos_token_id", origin);
  parse_rope(j, c, origin);
  if (c.num_heads % c.num_kv_heads != 0)
    fail(origin, ": num_attention_heads (", c.num_heads, ") is not a multiple of num_key_value_heads (",
         c.num_kv_heads, ")");
  if (c.head_dim % 2 != 0) fail(origin, ": head_dim must be even for rotary embeddings, got ", c.head_dim);
  if (c.max_position_embeddings <= 0) fail(origin, ": max_position_embeddings must be positive");
  if (j.contains("quantization_config") && j["quantization_config"].is_object()) {
    c.quant = parse_quant(j["quantization_config"], origin);
    if (c.quant->quant_method != "gptq")
      fail(origin, ": unsupported quantization method \"", c.quant->quant_method, "\" (supported: gptq)");
  }
  return c;
}

ModelConfig ModelConfig::from_dir(const std::string& dir) {
  const std::string path = path_join(dir, "config.json");
  if (!dir_exists(dir)) fail(dir, ": no such model folder");
  if (!file_exists(path)) fail(dir, ": no config.json (is this a Hugging Face model folder?)");
  ModelConfig c = from_json_text(read_text_file(path), path);

  const std::string qpath = path_join(dir, "quantize_config.json");
  if (!c.quant && file_exists(qpath)) {
    const json q = parse_json(read_text_file(qpath), qpath);
    if (!q.is_object()) fail(qpath, ": expected a JSON object");
    c.quant = parse_quant(q, qpath);
    if (c.quant->quant_method != "gptq")
      fail(qpath, ": unsupported quantization method \"", c.quant->quant_method, "\"");
  }

  const std::string gpath = path_join(dir, "generation_config.json");
  if (file_exists(gpath)) {
    const json g = parse_json(read_text_file(gpath), gpath);
    if (g.is_object()) {
      auto opt_d = [&](const char* k) -> std::optional<double> {
        if (!g.contains(k) || g[k].is_null()) return std::nullopt;
        if (!g[k].is_number()) fail(gpath, ": field \"", k, "\" must be a number");
        return g[k].get<double>();
      };
      c.generation.temperature = opt_d("temperature");
      c.generation.top_p = opt_d("top_p");
      c.generation.min_p = opt_d("min_p");
      c.generation.repetition_penalty = opt_d("repetition_penalty");
      if (auto k = opt_d("top_k")) c.generation.top_k = int(*k);
      if (g.contains("do_sample") && g["do_sample"].is_boolean()) c.generation.do_sample = g["do_sample"].get<bool>();
      const auto eos = int_or_list(g, "eos_token_id", gpath);
      if (!eos.empty()) c.eos_token_ids = eos;
      const auto bos = int_or_list(g, "bos_token_id", gpath);
      if (!bos.empty() && c.bos_token_id < 0) c.bos_token_id = bos[0];
    }
  }
  return c;
}

}  // namespace gptq
