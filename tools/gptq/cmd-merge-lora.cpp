// gptq merge-lora: a base model folder and a PEFT LoRA adapter in, the merged model folder out.
#include <cstdio>

#include "common.h"
#include "gptq/lora.h"

namespace gptq::cli {

Runner add_merge_lora(CLI::App& app) {
  struct Args {
    std::string base, adapter, out;
    MergeLoraOptions o;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("merge-lora", "Merge a PEFT LoRA adapter into its base model (W + s*B*A), "
                                                 "writing a complete model folder");
  c->add_option("--base", a->base, "Base model folder (Hugging Face layout, fp16/bf16/fp32; not GPTQ)")->required();
  c->add_option("--adapter", a->adapter, "PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
      ->required();
  c->add_option("-o,--output", a->out, "Output folder, outside the base and adapter folders (refused if it exists, "
                                       "unless --force)")
      ->required();
  c->add_option("--dtype", a->o.dtype, "Dtype of the written weights: fp16, bf16 or fp32 (default: the base's)")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  c->add_flag("--force", a->o.force, "Replace an existing output folder: an earlier output of gptq, or an empty one");
  c->add_flag("--json", a->json, "Print the report as JSON");
  return [a]() {
    const MergeLoraReport r = merge_lora(a->base, a->adapter, a->out, a->o);
    for (const auto& w : r.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (a->json) {
      nlohmann::json j;
      j["output"] = r.out_dir;
      j["out_bytes"] = r.out_bytes;
      j["merged_modules"] = r.merged_modules;
      j["saved_tensors"] = r.saved_tensors;
      j["seconds"] = {{"merge", r.seconds_merge}, {"total", r.seconds_total}};
      j["warnings"] = r.warnings;
      print_json(j);
      return 0;
    }
    std::printf("merged %zu modules", r.merged_modules.size());
    if (!r.saved_tensors.empty()) std::printf(", copied %zu modules_to_save tensors", r.saved_tensors.size());
    std::printf(" (%.2f s); wrote %s (%s, %.2f s in all)\n", r.seconds_merge, r.out_dir.c_str(),
                human_bytes(double(r.out_bytes)).c_str(), r.seconds_total);
    return 0;
  };
}

}  // namespace gptq::cli
