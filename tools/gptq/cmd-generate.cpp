// gptq generate: run a prompt and stream the continuation.
#include <chrono>
#include <cstdio>

#include "common.h"
#include "core/thread_pool.h"
#include "gptq/error.h"
#include "gptq/generate.h"

namespace gptq::cli {

namespace {
struct GenerateArgs {
  std::string model, prompt, prompt_file;
  int n = 128, threads = 0;
  float temperature = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f;
  int top_k = 40, repeat_last_n = 64;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool json = false, no_special = false, ignore_eos = false;
};
}  // namespace

Runner add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate a continuation of a prompt (streams to stdout)");
  c->add_option("-m,--model", a->model, "Model folder (Hugging Face layout)")->required();
  c->add_option("-p,--prompt", a->prompt, "Prompt text");
  c->add_option("-f,--file", a->prompt_file, "Read the prompt from a file");
  c->add_option("-n,--n-predict", a->n, "Tokens to generate")->check(CLI::Range(0, 1 << 20));
  c->add_option("--temperature,--temp", a->temperature, "Sampling temperature; 0 is greedy")->check(CLI::Range(0.0, 100.0));
  c->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  c->add_option("--top-p", a->top_p, "Nucleus sampling mass (1: off)")->check(CLI::Range(0.0, 1.0));
  c->add_option("--min-p", a->min_p, "Drop tokens below min-p x the top probability (0: off)")->check(CLI::Range(0.0, 1.0));
  c->add_option("--repeat-penalty,--repetition-penalty", a->repeat_penalty, "Repetition penalty (1: off)")
      ->check(CLI::Range(0.01, 100.0));
  c->add_option("--repeat-last-n", a->repeat_last_n, "Tokens the repetition penalty looks back (-1: all)");
  c->add_option("-s,--seed", a->seed, "Random seed");
  c->add_option("--stop", a->stop, "Stop string (repeatable); not printed");
  c->add_flag("--ignore-eos", a->ignore_eos, "Keep generating past the end-of-sequence token");
  c->add_flag("--no-special", a->no_special, "Do not add the BOS token to the prompt");
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(CLI::NonNegativeNumber);
  c->add_flag("--json", a->json, "Print one JSON object instead of streaming text");
  return [a, c]() {
    const std::string prompt = read_prompt(a->prompt, a->prompt_file);
    const auto t0 = std::chrono::steady_clock::now();
    LoadOptions lo;
    lo.threads = a->threads;
    auto model = Model::load(a->model, lo);
    Tokenizer tok = Tokenizer::from_model_dir(a->model);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    GenerateOptions g;
    g.max_new_tokens = a->n;
    g.stop = a->stop;
    g.stop_at_eos = !a->ignore_eos;
    SamplingParams& sp = g.sampling;
    // generation_config.json's sampling defaults apply unless the flag is given.
    const GenerationDefaults& d = model->config().generation;
    sp.temperature = a->temperature;
    sp.top_k = a->top_k;
    sp.top_p = a->top_p;
    sp.min_p = a->min_p;
    sp.repetition_penalty = a->repeat_penalty;
    if (d.do_sample.value_or(false)) {
      if (!c->count("--temperature") && d.temperature) sp.temperature = float(*d.temperature);
      if (!c->count("--top-k") && d.top_k) sp.top_k = *d.top_k;
      if (!c->count("--top-p") && d.top_p) sp.top_p = float(*d.top_p);
      if (!c->count("--min-p") && d.min_p) sp.min_p = float(*d.min_p);
    }
    if (!c->count("--repeat-penalty") && d.repetition_penalty) sp.repetition_penalty = float(*d.repetition_penalty);
    sp.repeat_last_n = a->repeat_last_n;
    sp.seed = a->seed;

    const std::vector<int32_t> ids = tok.encode(prompt, !a->no_special);
    std::function<void(const std::string&)> on_text;
    if (!a->json)
      on_text = [](const std::string& s) {
        std::fputs(s.c_str(), stdout);
        std::fflush(stdout);
      };
    const GenerateResult r = generate(*model, tok, ids, g, on_text);
    const double pp = r.prefill_seconds > 0 ? double(ids.size()) / r.prefill_seconds : 0;
    const double tg = r.decode_seconds > 0 ? double(r.decode_steps) / r.decode_seconds : 0;
    if (a->json) {
      nlohmann::json j;
      j["prompt_ids"] = r.prompt_ids;
      j["new_ids"] = r.new_ids;
      j["text"] = r.text;
      j["stop_reason"] = r.stop_reason;
      j["prefill_tokens_per_s"] = pp;
      j["decode_tokens_per_s"] = tg;
      j["load_seconds"] = load_s;
      j["memory_bytes"] = peak_rss_bytes();
      j["threads"] = model->threads();
      print_json(j);
    } else {
      std::fputc('\n', stdout);
      std::fprintf(stderr, "\n[%zu prompt tokens: %.1f tok/s | %zu new tokens: %.1f tok/s | stop: %s | load %.2f s | peak memory %s]\n",
                   ids.size(), pp, r.new_ids.size(), tg, r.stop_reason.c_str(), load_s,
                   human_bytes(double(peak_rss_bytes())).c_str());
    }
    return 0;
  };
}

}  // namespace gptq::cli
