// `gptq merge-lora`: a PEFT LoRA adapter folded into its base model, W' = W + s·B·A for every
// module the adapter targets (s = lora_alpha / r, or lora_alpha / √r with rsLoRA), its
// modules_to_save copied, written as a complete model folder (same shards as the base).
// `gptq quantize --lora` runs the same merge in memory (QuantizeOptions::lora_adapter).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gptq {

struct MergeLoraOptions {
  std::string dtype;   // "fp16", "bf16", "fp32"; empty: every tensor keeps the base's dtype
  bool force = false;  // replace an existing output folder (empty, or an earlier output of gptq)
};

struct MergeLoraReport {
  std::vector<std::string> merged_modules;  // "model.layers.0.self_attn.q_proj", ...
  std::vector<std::string> saved_tensors;   // modules_to_save tensors copied from the adapter
  std::vector<std::string> warnings;
  std::string out_dir;
  uint64_t out_bytes = 0;
  double seconds_merge = 0, seconds_total = 0;
};

// Throws gptq::Error, writing nothing, for: a missing or unreadable adapter (adapter_config.json,
// adapter_model.safetensors; a pickled adapter_model.bin), what the merge cannot do faithfully
// (DoRA, LoRA or base biases, fields that change the math), adapter tensors that do not fit the
// base or the config, target modules that match nothing, a GPTQ-quantized base, and an output
// folder that is, holds or lies inside the base or the adapter (see io/checkpoint_writer.h).
MergeLoraReport merge_lora(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                           const MergeLoraOptions& opts);

}  // namespace gptq
