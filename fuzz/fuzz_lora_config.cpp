// adapter_config.json of a PEFT LoRA adapter (gptq merge-lora, quantize --lora): the input is the
// config of an adapter folder whose adapter_model.safetensors is a valid empty file. Accepted
// configs must answer every module question with a rank >= 1 and a finite scale; regexes from the
// file (target_modules, rank_pattern, ...) run against the module names of a small Llama.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "gptq/error.h"
#include "io/lora_adapter.h"

namespace {

std::string dir;
std::vector<std::string> modules;

void write_seeds(const std::string& out) {
  const char* seeds[] = {
      R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"})",
      R"({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": true, "target_modules": ".*\\.(q|k|v|o)_proj",
          "rank_pattern": {"model.layers.1.self_attn.q_proj": 4}, "alpha_pattern": {"^model.layers.0": 8},
          "layers_to_transform": [0, 1], "layers_pattern": "layers", "modules_to_save": ["lm_head"],
          "fan_in_fan_out": false, "init_lora_weights": true, "task_type": "CAUSAL_LM"})",
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": "all-linear", "exclude_modules": ["down_proj"],
          "layers_to_transform": 1, "use_dora": false})",
  };
  int n = 0;
  for (const char* s : seeds) gptq_fuzz::write_file(out + "/seed_" + std::to_string(n++), s);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  gptq_fuzz::write_seeds_if_asked(write_seeds);
  dir = gptq_fuzz::scratch_subdir("adapter");
  // An empty safetensors file: an 8-byte header length, then the header.
  const std::string header = R"({"__metadata__": {"format": "pt"}})";
  std::string file(8, '\0');
  for (size_t i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  gptq_fuzz::write_file(dir + "/adapter_model.safetensors", file + header);
  for (int l = 0; l < 3; ++l)
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      modules.push_back("model.layers." + std::to_string(l) + "." + m);
  modules.push_back("lm_head");
  modules.push_back("model.embed_tokens");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gptq_fuzz::write_file(dir + "/adapter_config.json", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const gptq::LoraAdapter a(dir);
    (void)a.targets_text();
    for (const std::string& m : modules) {
      (void)a.saves(m);
      if (!a.targets(m, m.find(".layers.") != std::string::npos)) continue;
      if (a.rank(m) < 1) gptq_fuzz::violated("accepted a rank below 1", m);
      if (!std::isfinite(a.alpha(m)) || !std::isfinite(a.scale(m))) gptq_fuzz::violated("non-finite alpha or scale", m);
    }
  } catch (const gptq::Error&) {
  }
  return 0;
}
