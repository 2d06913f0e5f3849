#include "gptq/model_config.h"

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json.h"
#include "gptq/error.h"

namespace gptq {

using nlohmann::json;

namespace {

// Config files are a few KiB; a bigger one is not a config.
constexpr size_t kMaxConfigBytes = size_t(16) << 20;

const char* const kSupported[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

// Bounds on sizes: far above any real model (Llama-3.1-405B: hidden 16384, 126 layers, vocab
// 128256), low enough that products of them cannot overflow and a hostile value fails here, named,
// instead of as a multi-terabyte allocation later.
constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxVocab = int64_t(1) << 24;
constexpr int64_t kMaxContext = int64_t(1) << 31;
constexpr double kHuge = 1e300;

int64_t require_int(const json& j, const char* key, const std::string& origin, int64_t hi) {
  const auto v = json_int(j, key, origin, 1, hi);
  if (!v) fail(origin, ": missing field \"", key, "\"");
  return *v;
}

// A positive finite number (rope_theta, eps, scaling factors): 0 or a negative value would give
// NaN or infinite activations and a perplexity of "nan" instead of an error.
double positive(const json& j, const char* key, double def, const std::string& origin) {
  const double v = json_number(j, key, origin, -kHuge, kHuge).value_or(def);
  if (!(v > 0)) fail(origin, ": field \"", key, "\" must be > 0, got ", v);
  return v;
}

std::vector<int32_t> token_ids(const json& j, const char* key, const std::string& origin, int64_t vocab) {
  std::vector<int32_t> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  const std::string what = cat(origin, ": field \"", key, "\"");
  if (it->is_array()) {
    for (const auto& v : *it) out.push_back(int32_t(json_to_int(v, what, 0, vocab - 1)));
  } else if (it->is_number()) {
    out.push_back(int32_t(json_to_int(*it, what, 0, vocab - 1)));
  } else {
    fail(what, " must be a token id or a list of token ids");
  }
  return out;
}

QuantConfig parse_quant(const json& q, const std::string& origin) {
  QuantConfig c;
  c.quant_method = json_string(q, "quant_method", origin).value_or("gptq");
  if (c.quant_method != "gptq")
    fail(origin, ": unsupported quantization method \"", c.quant_method, "\" (supported: gptq)");
  c.bits = int(json_int(q, "bits", origin, 1, 64).value_or(4));
  if (c.bits != 2 && c.bits != 3 && c.bits != 4 && c.bits != 8)
    fail(origin, ": field \"bits\" must be 2, 3, 4 or 8, got ", c.bits);
  c.group_size = int(json_int(q, "group_size", origin, -1, kMaxDim).value_or(128));
  if (c.group_size == 0) fail(origin, ": field \"group_size\" must be positive or -1 (one group per row), got 0");
  c.desc_act = json_bool(q, "desc_act", origin).value_or(false);
  c.sym = json_bool(q, "sym", origin).value_or(true);
  c.damp_percent = json_number(q, "damp_percent", origin, 0, 1).value_or(0.01);
  c.true_sequential = json_bool(q, "true_sequential", origin).value_or(true);
  c.static_groups = json_bool(q, "static_groups", origin).value_or(false);
  c.checkpoint_format = json_string(q, "checkpoint_format", origin).value_or("gptq");
  if (c.checkpoint_format.empty()) c.checkpoint_format = "gptq";
  if (c.checkpoint_format != "gptq" && c.checkpoint_format != "gptq_v2")
    fail(origin, ": unsupported checkpoint_format \"", c.checkpoint_format, "\" (supported: gptq, gptq_v2)");
  return c;
}

void parse_rope(const json& j, ModelConfig& c, const std::string& origin) {
  // transformers 5 moves rope_theta and the scaling dict into "rope_parameters".
  const json* rp = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rp = &j["rope_parameters"];
  c.rope_theta = positive(j, "rope_theta", 10000.0, origin);
  if (rp) c.rope_theta = positive(*rp, "rope_theta", c.rope_theta, origin);
  const json* rs = nullptr;
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rs = &j["rope_scaling"];
  else if (rp) rs = rp;
  if (!rs) return;
  std::string type = json_string(*rs, "rope_type", origin).value_or("");
  if (type.empty()) type = json_string(*rs, "type", origin).value_or("default");
  if (type != "default" && type != "linear" && type != "llama3")
    fail(origin, ": unsupported rope scaling type \"", type, "\" (supported: default, linear, llama3)");
  RopeScaling& r = c.rope_scaling;
  r.type = type;
  if (type == "default") return;
  r.factor = positive(*rs, "factor", 1.0, origin);
  if (type != "llama3") return;
  r.low_freq_factor = positive(*rs, "low_freq_factor", 1.0, origin);
  r.high_freq_factor = positive(*rs, "high_freq_factor", 4.0, origin);
  if (!(r.high_freq_factor > r.low_freq_factor))
    fail(origin, ": llama3 rope scaling needs high_freq_factor (", r.high_freq_factor, ") > low_freq_factor (",
         r.low_freq_factor, ")");
  r.original_max_position_embeddings =
      json_int(*rs, "original_max_position_embeddings", origin, 1, kMaxContext).value_or(8192);
}

void parse_generation(const json& g, ModelConfig& c, const std::string& origin) {
  // The ranges the sampler (and transformers' logits warpers) accept, named by file and field.
  GenerationDefaults& d = c.generation;
  d.temperature = json_number(g, "temperature", origin, 0, kHuge);
  if (auto v = json_number(g, "top_p", origin, 0, 1)) {
    if (*v == 0) fail(origin, ": field \"top_p\" must be in (0, 1], got 0");
    d.top_p = v;
  }
  d.min_p = json_number(g, "min_p", origin, 0, 1);
  if (g.contains("repetition_penalty") && !g["repetition_penalty"].is_null())
    d.repetition_penalty = positive(g, "repetition_penalty", 1.0, origin);
  if (auto k = json_int(g, "top_k", origin, 0, kMaxVocab)) d.top_k = int(*k);
  d.do_sample = json_bool(g, "do_sample", origin);
  const auto eos = token_ids(g, "eos_token_id", origin, c.vocab_size);
  if (!eos.empty()) c.eos_token_ids = eos;
  const auto bos = token_ids(g, "bos_token_id", origin, c.vocab_size);
  if (!bos.empty() && c.bos_token_id < 0) c.bos_token_id = bos[0];
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
  c.model_type = json_string(j, "model_type", origin).value_or("");
  c.hidden_size = require_int(j, "hidden_size", origin, kMaxDim);
  c.intermediate_size = require_int(j, "intermediate_size", origin, kMaxDim);
  c.num_layers = require_int(j, "num_hidden_layers", origin, kMaxLayers);
  c.num_heads = require_int(j, "num_attention_heads", origin, kMaxHeads);
  c.num_kv_heads = json_int(j, "num_key_value_heads", origin, 1, kMaxHeads).value_or(c.num_heads);
  if (c.hidden_size % c.num_heads != 0 && !json_int(j, "head_dim", origin, 1, kMaxDim))
    fail(origin, ": hidden_size (", c.hidden_size, ") is not a multiple of num_attention_heads (", c.num_heads,
         ") and no head_dim is given");
  c.head_dim = json_int(j, "head_dim", origin, 1, kMaxDim).value_or(c.hidden_size / c.num_heads);
  c.vocab_size = require_int(j, "vocab_size", origin, kMaxVocab);
  c.max_position_embeddings = json_int(j, "max_position_embeddings", origin, 1, kMaxContext).value_or(2048);
  c.rms_norm_eps = positive(j, "rms_norm_eps", 1e-6, origin);
  if (c.rms_norm_eps >= 1) fail(origin, ": field \"rms_norm_eps\" must be < 1, got ", c.rms_norm_eps);
  c.tie_word_embeddings = json_bool(j, "tie_word_embeddings", origin).value_or(false);
  c.attention_bias =
      c.architecture == "Qwen2ForCausalLM" ? true : json_bool(j, "attention_bias", origin).value_or(false);
  c.mlp_bias = json_bool(j, "mlp_bias", origin).value_or(false);
  c.torch_dtype = json_string(j, "dtype", origin).value_or(json_string(j, "torch_dtype", origin).value_or(""));
  const auto bos = token_ids(j, "bos_token_id", origin, c.vocab_size);
  if (!bos.empty()) c.bos_token_id = bos[0];
  c.eos_token_ids = token_ids(j, "eos_token_id", origin, c.vocab_size);
  parse_rope(j, c, origin);
  if (c.num_heads % c.num_kv_heads != 0)
    fail(origin, ": num_attention_heads (", c.num_heads, ") is not a multiple of num_key_value_heads (",
         c.num_kv_heads, ")");
  if (c.head_dim % 2 != 0) fail(origin, ": head_dim must be even for rotary embeddings, got ", c.head_dim);
  auto q = j.find("quantization_config");
  if (q != j.end() && !q->is_null()) {
    if (!q->is_object()) fail(origin, ": field \"quantization_config\" must be an object");
    c.quant = parse_quant(*q, origin);
  }
  return c;
}

ModelConfig ModelConfig::from_dir(const std::string& dir) {
  const std::string path = path_join(dir, "config.json");
  if (!dir_exists(dir)) fail(dir, ": no such model folder");
  if (!file_exists(path)) fail(dir, ": no config.json (is this a Hugging Face model folder?)");
  ModelConfig c = from_json_text(read_text_file(path, kMaxConfigBytes), path);

  const std::string qpath = path_join(dir, "quantize_config.json");
  if (!c.quant && file_exists(qpath)) {
    const json q = parse_json(read_text_file(qpath, kMaxConfigBytes), qpath);
    if (!q.is_object()) fail(qpath, ": expected a JSON object");
    c.quant = parse_quant(q, qpath);
  }

  const std::string gpath = path_join(dir, "generation_config.json");
  if (file_exists(gpath)) {
    const json g = parse_json(read_text_file(gpath, kMaxConfigBytes), gpath);
    if (!g.is_object()) fail(gpath, ": expected a JSON object");
    parse_generation(g, c, gpath);
  }
  return c;
}

}  // namespace gptq
