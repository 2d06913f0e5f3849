// gptq quantize: a model folder in, a GPTQ checkpoint out.
#include <csignal>
#include <cstdlib>
#include <cstdio>

#include "common.h"
#include "gptq/error.h"
#include "gptq/quantize.h"

namespace gptq::cli {

namespace {
std::atomic<bool> g_interrupted{false};
extern "C" void on_signal(int) { g_interrupted = true; }
}  // namespace

Runner add_quantize(CLI::App& app) {
  struct Args {
    std::string model, out, max_shard, device = "auto";
    QuantizeOptions o;
    bool no_sym = false, no_true_seq = false, json = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  QuantizeOptions& o = a->o;
  CLI::App* c = app.add_subcommand("quantize", "Quantize a model with GPTQ (or RTN) into an AutoGPTQ/GPTQModel checkpoint");
  c->add_option("-m,--model", a->model, "Model folder (Hugging Face layout, fp16/bf16/fp32)");
  c->add_option("-o,--output", a->out, "Output folder, outside the model folder (refused if it exists, unless --force)");
  c->add_option("--synthetic", o.synthetic,
                "Instead of -m/-o: time the quantization of a synthetic model of these shapes (random fp16 "
                "weights; nothing written): llama2-7b, llama2-13b, llama2-70b, llama3-8b, tiny");
  c->add_option("--layers", o.synthetic_layers, "--synthetic: only its first N decoder layers (0: all)")
      ->check(int_in(0, INT32_MAX));
  c->add_option("--tokenizer", o.tokenizer_dir, "--synthetic: a model folder whose tokenizer reads --calibration");
  c->add_option("--bits", o.bits, "Bits per weight: 2, 3, 4 or 8")->check(CLI::IsMember({2, 3, 4, 8}));
  c->add_option("--group-size", o.group_size, "Inputs per quantization group (-1: one group per row)");
  c->add_flag("--desc-act,--act-order", o.desc_act,
              "Act-order with groups formed in that order (a permuted g_idx); = --order act");
  c->add_option("--order", o.order,
                "Column order: act-static (the default for gptq: columns by decreasing Hessian diagonal, groups fixed "
                "first, so g_idx = k/G), act (groups in act-order: a permuted g_idx), natural (the GPTQ authors' "
                "default) or group (groups by Hessian mass, columns inside a group by the Hessian diagonal)")
      ->check(CLI::IsMember({"natural", "act", "act-static", "group"}));
  c->add_flag("--static-groups", o.static_groups, "With --desc-act: groups fixed before the column loop (= --order act-static)");
  c->add_flag("--sym,!--no-sym", o.sym, "Symmetric grid (default) or asymmetric (--no-sym)");
  c->add_option("--grid", o.grid,
                "Group scale/zero: minmax (the GPTQ authors') or mse (best shrink of the range under the "
                "Hessian-weighted error; the default for --method gptq, minmax for rtn)")
      ->check(CLI::IsMember({"minmax", "mse"}));
  c->add_option("--refit", o.refit,
                "After the GPTQ solve: none (default) or hessian (each row's group scales refit by least squares "
                "under the full Hessian, codes and zeros kept)")
      ->check(CLI::IsMember({"none", "hessian"}));
  c->add_option("--damp", o.damp_percent, "Damping, as a fraction of the mean Hessian diagonal");
  c->add_flag("--true-sequential,!--no-true-sequential", o.true_sequential,
              "Quantize [k,v,q] -> [o] -> [up,gate] -> [down], each from quantized inputs (default on)");
  c->add_option("--calibration", o.calibration_file, "Calibration text file (e.g. C4, WikiText-2, your own text)");
  c->add_option("--seqlen", o.seqlen, "Tokens per calibration window (default: min(context, 2048))");
  c->add_option("--nsamples", o.nsamples, "Calibration windows");
  c->add_option("--calib-offset", o.calib_offset, "First calibration window (skip this many windows)");
  c->add_option("--method", o.method, "gptq or rtn (round-to-nearest, no calibration)")->check(CLI::IsMember({"gptq", "rtn"}));
  c->add_option("--format", o.format, "checkpoint_format: gptq (zeros stored minus one) or gptq_v2")
      ->check(CLI::IsMember({"gptq", "gptq_v2"}));
  c->add_option("--max-shard-size", a->max_shard, "Split model.safetensors into shards of at most this size (e.g. 2GB)");
  c->add_option("-t,--threads", o.threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  c->add_option("--lora", o.lora_adapter,
                "PEFT LoRA adapter folder to merge into the model (in memory) before quantizing, as gptq merge-lora does");
  c->add_flag("--force", o.force, "Replace an existing output folder: an earlier output of gptq quantize, or an empty one");
  c->add_flag("--json", a->json, "Print the report as JSON");
  c->add_flag("-q,--quiet", a->quiet, "No progress bar");
  return [a]() {
    QuantizeOptions& o = a->o;
    if (o.synthetic.empty() && (a->model.empty() || a->out.empty()))
      fail("quantize needs -m MODEL and -o OUTPUT (or --synthetic NAME to time a synthetic model)");
    o.threads = cap_threads(o.threads);
    o.backend = make_backend(a->device, o.threads);
    if (!a->max_shard.empty()) o.max_shard_bytes = parse_size(a->max_shard);
    o.progress = !a->quiet;
    // A/B timing knobs (the same bytes either way; scripts/device/gpu_check.sh quantizeab):
    // GPTQ_QUANTIZE_STACK=0 solves a stage's linears one by one, GPTQ_QUANTIZE_KEEP_MLP=0|1 sets
    // QuantizeOptions::keep_mlp_inputs.
    if (const char* e = std::getenv("GPTQ_QUANTIZE_STACK"); e && std::string(e) == "0") o.stack_stages = false;
    if (const char* e = std::getenv("GPTQ_QUANTIZE_KEEP_MLP"); e && (std::string(e) == "0" || std::string(e) == "1"))
      o.keep_mlp_inputs = std::string(e) == "1" ? 1 : 0;
    o.cancel = &g_interrupted;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const QuantizeReport r = quantize_model(a->model, a->out, o);
    for (const auto& w : r.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (a->json) {
      nlohmann::json j;
      if (!o.synthetic.empty()) j["synthetic"] = {{"name", o.synthetic}, {"layers", o.synthetic_layers}};
      j["output"] = r.out_dir;
      j["out_bytes"] = r.out_bytes;
      j["peak_device_bytes"] = r.peak_device_bytes;
      j["peak_rss_bytes"] = r.peak_rss_bytes;
      j["calibration_tokens"] = r.calibration_tokens;
      j["seconds"] = {{"load", r.seconds_load}, {"forward", r.seconds_forward}, {"hessian", r.seconds_hessian},
                      {"solve", r.seconds_solve}, {"pack", r.seconds_pack}, {"write", r.seconds_write},
                      {"total", r.seconds_total}};
      for (const auto& m : r.modules)
        j["modules"].push_back({{"name", m.name}, {"out", m.out_features}, {"in", m.in_features}, {"loss", m.loss},
                                {"rel_error", m.rel_error}, {"damp_percent", m.damp_percent},
                                {"dead_columns", m.dead_columns}, {"seconds", m.seconds}});
      j["warnings"] = r.warnings;
      print_json(j);
      return 0;
    }
    std::printf("| module | shape | rel. error ‖ΔW·X‖²/‖W·X‖² | solver loss | damp | s |\n");
    std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (const auto& m : r.modules)
      std::printf("| %s | %lldx%lld | %.3e | %.4g | %.3g | %.2f |\n", m.name.c_str(), (long long)m.out_features,
                  (long long)m.in_features, m.rel_error, m.loss, m.damp_percent, m.seconds);
    std::printf("\n| phase | seconds |\n| --- | ---: |\n");
    const std::pair<const char*, double> phases[] = {
        {"load + tokenize", r.seconds_load}, {"forward passes", r.seconds_forward}, {"Hessians", r.seconds_hessian},
        {"solver", r.seconds_solve}, {"packing", r.seconds_pack}, {"writing", r.seconds_write}, {"total", r.seconds_total}};
    for (const auto& [k, v] : phases) std::printf("| %s | %.2f |\n", k, v);
    if (r.out_dir.empty())
      std::printf("\nsynthetic %s: nothing written (%lld calibration tokens)\n", o.synthetic.c_str(),
                  (long long)r.calibration_tokens);
    else
      std::printf("\nwrote %s (%s, %lld calibration tokens)\n", r.out_dir.c_str(),
                  human_bytes(double(r.out_bytes)).c_str(), (long long)r.calibration_tokens);
    std::printf("peak memory: %s resident%s\n", human_bytes(double(r.peak_rss_bytes)).c_str(),
                r.peak_device_bytes ? (", " + human_bytes(double(r.peak_device_bytes)) + " on the GPU").c_str() : "");
    return 0;
  };
}

}  // namespace gptq::cli
