// gptq bench: llama-bench-style prefill/decode speed table.
#include <cstdio>

#include "common.h"
#include "core/thread_pool.h"
#include "gptq/bench.h"
#include "gptq/version.h"

namespace gptq::cli {

Runner add_bench(CLI::App& app) {
  struct Args {
    std::string model;
    int n_prompt = 512, n_gen = 128, reps = 5, threads = 0;
    bool json = false, no_bandwidth = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("bench", "Prefill and decode speed (mean ± sd over repeats), memory, roofline");
  c->add_option("-m,--model", a->model, "Model folder")->required();
  c->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the prefill test (0: skip)")->check(CLI::NonNegativeNumber);
  c->add_option("-n,--n-gen", a->n_gen, "Tokens for the decode test (0: skip)")->check(CLI::NonNegativeNumber);
  c->add_option("-r,--repetitions", a->reps, "Repeats of each test")->check(CLI::PositiveNumber);
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(CLI::NonNegativeNumber);
  c->add_flag("--no-bandwidth", a->no_bandwidth, "Skip measuring memory bandwidth (no roofline column)");
  c->add_flag("--json", a->json, "Print JSON");
  return [a]() {
    LoadOptions lo;
    lo.threads = a->threads;
    auto model = Model::load(a->model, lo);
    const BenchResult r = run_bench(*model, a->n_prompt, a->n_gen, a->reps);
    const double bw = a->no_bandwidth ? 0 : measure_read_bandwidth();
    // Decode roofline: every weight byte read once per token at the measured bandwidth.
    const double roofline = bw > 0 ? bw / double(r.bytes_per_token) : 0;
    const std::string name = model_name(a->model);
    if (a->json) {
      nlohmann::json j;
      j["model"] = name;
      j["backend"] = "cpu";
      j["threads"] = r.threads;
      j["file_bytes"] = model->file_bytes();
      j["weight_bytes"] = model->weight_bytes();
      j["parameters"] = model->parameter_count();
      j["memory_bytes"] = r.memory_bytes;
      j["bytes_per_token"] = r.bytes_per_token;
      j["read_bandwidth_bytes_per_s"] = bw;
      j["decode_roofline_tokens_per_s"] = roofline;
      if (a->n_prompt) j["prefill"] = {{"n_prompt", r.n_prompt}, {"tokens_per_s", r.prefill.mean}, {"sd", r.prefill.sd}, {"samples", r.prefill.samples}};
      if (a->n_gen) {
        j["decode"] = {{"n_gen", r.n_gen}, {"tokens_per_s", r.decode.mean}, {"sd", r.decode.sd}, {"samples", r.decode.samples}};
        if (roofline > 0) j["decode_fraction_of_roofline"] = r.decode.mean / roofline;
      }
      j["repetitions"] = r.repeats;
      j["commit"] = commit();
      print_json(j);
      return 0;
    }
    std::printf("| model | size | params | backend | threads | test | t/s |\n");
    std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    auto line = [&](const std::string& test, const SpeedStats& s) {
      std::printf("| %s | %s | %s | CPU | %d | %s | %.2f ± %.2f |\n", name.c_str(),
                  human_bytes(double(model->weight_bytes())).c_str(), human_count(double(model->parameter_count())).c_str(),
                  r.threads, test.c_str(), s.mean, s.sd);
    };
    if (a->n_prompt) line("pp" + std::to_string(a->n_prompt), r.prefill);
    if (a->n_gen) line("tg" + std::to_string(a->n_gen), r.decode);
    std::printf("\nfiles %s, weights in memory %s, peak memory %s; %d repeats; commit %s\n",
                human_bytes(double(model->file_bytes())).c_str(), human_bytes(double(model->weight_bytes())).c_str(),
                human_bytes(double(r.memory_bytes)).c_str(), r.repeats, commit());
    if (bw > 0 && a->n_gen) {
      std::printf("decode roofline: %s read per token / %.2f GB/s measured read bandwidth = %.1f t/s; measured %.1f t/s = %.0f %% of it\n",
                  human_bytes(double(r.bytes_per_token)).c_str(), bw / 1e9, roofline, r.decode.mean,
                  100 * r.decode.mean / roofline);
    }
    return 0;
  };
}

}  // namespace gptq::cli
