// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), read and checked,
// with PEFT's own rules for which modules it applies to (peft/tuners/tuners_utils.py
// check_target_module_exists, peft/utils/other.py get_pattern_key and _set_trainable):
// - target_modules as a string: re.fullmatch against the module name ("all-linear": every linear of
//   the decoder layers, not lm_head); as a list: the name equals an entry or ends with "." + entry,
//   and then layers_to_transform (with layers_pattern) restricts the layer index;
// - exclude_modules the same way, and modules that modules_to_save wraps are never targets;
// - rank_pattern / alpha_pattern: the first key (file order) with re.match("(.*\.)?(KEY)$", name);
// - modules_to_save: modules whose name ends with an entry.
// Everything that would change the merge and is not implemented here is refused (DoRA, LoRA bias,
// trained base biases, PiSSA/OLoRA-style initialisations that also rewrote the base, ...), as is a
// pickled adapter_model.bin.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gptq/safetensors.h"

namespace gptq {

class Regex;

class LoraAdapter {
 public:
  // Throws gptq::Error naming the file and field: a missing folder, config or weights file, a
  // pickled adapter_model.bin, malformed JSON, peft_type other than LORA, and the refusals above.
  explicit LoraAdapter(const std::string& dir);
  ~LoraAdapter();
  LoraAdapter(const LoraAdapter&) = delete;
  LoraAdapter& operator=(const LoraAdapter&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& config_path() const { return config_path_; }
  const SafetensorsFile& weights() const { return *weights_; }

  // Whether PEFT puts a LoRA layer on the module of this name ("model.layers.0.self_attn.q_proj");
  // decoder_linear: it is one of the linears of a decoder layer (what "all-linear" selects).
  bool targets(const std::string& module, bool decoder_linear) const;
  // Whether modules_to_save wraps it (a trained copy saved whole in the adapter).
  bool saves(const std::string& module) const;
  const std::vector<std::string>& modules_to_save() const { return modules_to_save_; }
  // The rank and alpha of a targeted module (rank_pattern / alpha_pattern over r / lora_alpha),
  // and its scale: alpha / r, or alpha / sqrt(r) with use_rslora.
  int64_t rank(const std::string& module) const;
  double alpha(const std::string& module) const;
  double scale(const std::string& module) const;
  // PEFT resets fan_in_fan_out to false for torch.nn.Linear targets (every target here), with a
  // warning: set means the config was written for a Conv1D model (GPT-2).
  bool fan_in_fan_out() const { return fan_in_fan_out_; }
  // A short description of target_modules, for messages.
  std::string targets_text() const;

  // The adapter's files and their sha256, for the record of what was merged.
  std::vector<std::pair<std::string, std::string>> file_hashes() const;

 private:
  std::string dir_, config_path_, weights_path_;
  std::unique_ptr<SafetensorsFile> weights_;
  int64_t r_ = 8;
  double alpha_ = 8;
  bool use_rslora_ = false, fan_in_fan_out_ = false;
  std::unique_ptr<Regex> target_regex_, exclude_regex_;
  std::vector<std::string> target_list_, exclude_list_;
  bool all_linear_ = false;
  std::vector<int64_t> layers_;                       // layers_to_transform (empty: all)
  std::vector<std::unique_ptr<Regex>> layer_patterns_;  // from layers_pattern, or the default
  std::vector<std::string> modules_to_save_;
  std::vector<std::unique_ptr<Regex>> save_excludes_;  // modules_to_save as target exclusions
  std::vector<std::pair<std::unique_ptr<Regex>, int64_t>> rank_pattern_;
  std::vector<std::pair<std::unique_ptr<Regex>, double>> alpha_pattern_;
};

}  // namespace gptq
