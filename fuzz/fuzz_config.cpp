// config.json, quantize_config.json and generation_config.json. Each input is read as all three:
// ModelConfig::from_json_text (config.json), then ModelConfig::from_dir on folders whose valid
// config.json sits next to the input as quantize_config.json, and as generation_config.json.
#include <cmath>
#include <string>

#include "fuzz_common.h"
#include "gptq/error.h"
#include "gptq/model_config.h"

namespace {

std::string quant_dir, gen_dir;

constexpr const char* kConfig = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
  "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": true})";

// What every accepted config must satisfy (the checks from_json_text promises).
void check(const gptq::ModelConfig& c) {
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0)
    gptq_fuzz::violated("accepted a non-positive size");
  if (c.num_heads % c.num_kv_heads != 0) gptq_fuzz::violated("accepted heads not a multiple of kv heads");
  if (c.head_dim % 2 != 0) gptq_fuzz::violated("accepted an odd head_dim");
  if (c.max_position_embeddings <= 0) gptq_fuzz::violated("accepted max_position_embeddings <= 0");
  if (c.quant && c.quant->quant_method != "gptq") gptq_fuzz::violated("accepted a non-gptq quant_method");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  quant_dir = gptq_fuzz::scratch_subdir("quant");
  gen_dir = gptq_fuzz::scratch_subdir("gen");
  gptq_fuzz::write_file(quant_dir + "/config.json", kConfig);
  gptq_fuzz::write_file(gen_dir + "/config.json", kConfig);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    check(gptq::ModelConfig::from_json_text(text, "config.json"));
  } catch (const gptq::Error&) {
  }
  gptq_fuzz::write_file(quant_dir + "/quantize_config.json", text);
  try {
    check(gptq::ModelConfig::from_dir(quant_dir));
  } catch (const gptq::Error&) {
  }
  gptq_fuzz::write_file(gen_dir + "/generation_config.json", text);
  try {
    check(gptq::ModelConfig::from_dir(gen_dir));
  } catch (const gptq::Error&) {
  }
  return 0;
}
