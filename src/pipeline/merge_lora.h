// The LoRA merge in memory, shared by `gptq merge-lora` (which writes the result) and
// `gptq quantize --lora` (which loads the model with it and quantizes).
#pragma once

#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gptq/tensor.h"

namespace gptq {

struct MergedTensors {
  std::map<std::string, TensorView> tensors;  // base tensor name -> its replacement (views of `buffers`)
  std::deque<std::vector<uint8_t>> buffers;
  std::vector<std::string> merged_modules, saved_tensors, warnings;
  // What was merged, for the output's records: the adapters merged into the base before (its
  // lora_merge.json), then this one: [{"path": ..., "sha256": {"adapter_config.json": ..., ...}}].
  nlohmann::ordered_json adapters = nlohmann::ordered_json::array();
};

// Merges the adapter at adapter_dir into the base at base_dir: W' = W + s·B·A (in double, rounded
// once) for every targeted module, modules_to_save tensors copied. The replacements have dtype
// `out`, or by default their base tensor's dtype. Throws gptq::Error for everything merge_lora()
// refuses about its inputs (gptq/lora.h).
MergedTensors merge_lora_in_memory(const std::string& base_dir, const std::string& adapter_dir,
                                   std::optional<DType> out = std::nullopt);

// The adapters merged into a model folder, from its lora_merge.json (empty without one).
nlohmann::ordered_json merged_adapters(const std::string& model_dir);

}  // namespace gptq
