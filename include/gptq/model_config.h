// The architecture of a Llama-family model, read from config.json (+ generation_config.json).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gptq {

struct RopeScaling {
  std::string type = "default";  // "default", "linear", "llama3"
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// quantization_config of a GPTQ checkpoint (config.json or quantize_config.json).
struct QuantConfig {
  std::string quant_method = "gptq";
  int bits = 4;
  int group_size = 128;  // -1: one group over all inputs
  bool desc_act = false;
  bool sym = true;
  double damp_percent = 0.01;
  bool true_sequential = true;
  bool static_groups = false;
  std::string checkpoint_format = "gptq";  // or "gptq_v2"
};

struct GenerationDefaults {
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<bool> do_sample;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  std::string model_type;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (Qwen2 always)
  bool mlp_bias = false;
  std::string torch_dtype;  // as declared, informative only
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
  std::optional<QuantConfig> quant;
  GenerationDefaults generation;

  // Parses DIR/config.json (and DIR/generation_config.json, DIR/quantize_config.json when present).
  // Throws gptq::Error naming the file and the field for malformed or unsupported configs.
  static ModelConfig from_dir(const std::string& dir);
  static ModelConfig from_json_text(const std::string& text, const std::string& origin);
};

}  // namespace gptq
