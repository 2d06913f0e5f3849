// gptq generate: run a prompt and stream the continuation; several prompts are decoded together.
#include <chrono>
#include <cstdio>

#include "common.h"
#include "core/fs.h"
#include "core/thread_pool.h"
#include "gptq/error.h"
#include "gptq/generate.h"

namespace gptq::cli {

namespace {
struct GenerateArgs {
  std::string model, prompt_file, prompts_file, device = "auto";
  std::string kv_cache = "auto";
  std::vector<std::string> prompts;
  int n = 128, threads = 0;
  SamplingArgs sampling;
  std::vector<std::string> stop;
  bool json = false, no_special = false, ignore_eos = false;
};
double rate(double n, double seconds) { return seconds > 0 ? n / seconds : 0; }

// -p (repeatable), -f FILE (one prompt) or --prompts FILE (one prompt per line).
std::vector<std::string> read_prompts(const GenerateArgs& a) {
  if (int(!a.prompts.empty()) + int(!a.prompt_file.empty()) + int(!a.prompts_file.empty()) > 1)
    fail("give prompts one way: -p TEXT (repeatable), -f FILE or --prompts FILE");
  if (!a.prompt_file.empty()) return {read_text_file(a.prompt_file)};
  if (a.prompts_file.empty()) return a.prompts.empty() ? std::vector<std::string>{""} : a.prompts;
  const std::string text = read_text_file(a.prompts_file);
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos)
      fail(a.prompts_file, ": line ", out.size() + 1, " is empty (--prompts takes one prompt per line, no empty lines)");
    out.push_back(line);
    pos = end + 1;
  }
  if (out.empty()) fail(a.prompts_file, ": no prompts (--prompts takes one prompt per line)");
  return out;
}

}  // namespace

Runner add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* c = app.add_subcommand("generate", "Generate a continuation of a prompt (streams to stdout)");
  c->add_option("-m,--model", a->model, "Model folder (Hugging Face layout)")->required();
  c->add_option("-p,--prompt", a->prompts, "Prompt text (repeatable: the prompts are decoded together)")
      ->allow_extra_args(false);
  c->add_option("-f,--file", a->prompt_file, "Read the prompt from a file");
  c->add_option("--prompts", a->prompts_file, "Read prompts from a file, one per line (decoded together)");
  c->add_option("-n,--n-predict", a->n, "Tokens to generate")->check(int_in(0, 1 << 20));
  add_sampling_options(c, a->sampling);
  c->add_option("--stop", a->stop, "Stop string (repeatable); not printed");
  c->add_flag("--ignore-eos", a->ignore_eos, "Keep generating past the end-of-sequence token");
  c->add_flag("--no-special", a->no_special, "Do not add the BOS token to the prompt");
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  add_kv_cache_option(c, a->kv_cache);
  c->add_flag("--json", a->json, "Print one JSON object instead of streaming text");
  return [a, c]() {
    const std::vector<std::string> prompts = read_prompts(*a);
    const auto t0 = std::chrono::steady_clock::now();
    LoadOptions lo;
    lo.threads = cap_threads(a->threads);
    lo.backend = make_backend(a->device, lo.threads);
    lo.kv_fp16 = kv_cache_fp16(a->kv_cache);
    auto model = Model::load(a->model, lo);
    Tokenizer tok = Tokenizer::from_model_dir(a->model);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    GenerateOptions g;
    g.max_new_tokens = a->n;
    g.stop = a->stop;
    g.stop_at_eos = !a->ignore_eos;
    g.sampling = sampling_params(a->sampling, c, model->config().generation);

    std::vector<std::vector<int32_t>> ids;
    for (const auto& p : prompts) ids.push_back(tok.encode(p, !a->no_special));
    const bool several = ids.size() > 1;
    std::function<void(size_t, const std::string&)> on_text;
    if (!a->json && !several)
      on_text = [](size_t, const std::string& s) {
        std::fputs(s.c_str(), stdout);
        std::fflush(stdout);
      };
    const BatchGenerateResult b = generate_batch(*model, tok, ids, g, on_text);
    const double pp = rate(double(b.prompt_tokens), b.prefill_seconds);
    auto object = [&](const GenerateResult& r) {
      nlohmann::json j;
      j["prompt_ids"] = r.prompt_ids;
      j["new_ids"] = r.new_ids;
      j["text"] = r.text;
      j["stop_reason"] = r.stop_reason;
      j["prefill_tokens_per_s"] = pp;
      j["decode_tokens_per_s"] = rate(double(r.decode_steps), r.decode_seconds);
      j["load_seconds"] = load_s;
      j["memory_bytes"] = peak_rss_bytes();
      j["threads"] = model->threads();
      return j;
    };
    const double tg = rate(double(b.decode_tokens), b.decode_seconds);
    if (a->json && !several) {
      print_json(object(b.results[0]));
    } else if (a->json) {
      nlohmann::json j;
      for (const auto& r : b.results) j["results"].push_back(object(r));
      j["prompt_tokens"] = b.prompt_tokens;
      j["prefill_tokens_per_s"] = pp;
      j["decode_tokens"] = b.decode_tokens;
      j["decode_steps"] = b.decode_steps;
      j["decode_seconds"] = b.decode_seconds;
      j["decode_tokens_per_s"] = tg;
      j["load_seconds"] = load_s;
      j["memory_bytes"] = peak_rss_bytes();
      j["threads"] = model->threads();
      print_json(j);
    } else if (!several) {
      const GenerateResult& r = b.results[0];
      std::fputc('\n', stdout);
      std::fprintf(stderr, "\n[%zu prompt tokens: %.1f tok/s | %zu new tokens: %.1f tok/s | stop: %s | load %.2f s | peak memory %s]\n",
                   r.prompt_ids.size(), pp, r.new_ids.size(), rate(double(r.decode_steps), r.decode_seconds),
                   r.stop_reason.c_str(), load_s, human_bytes(double(peak_rss_bytes())).c_str());
    } else {
      for (size_t i = 0; i < b.results.size(); ++i) {
        const GenerateResult& r = b.results[i];
        std::printf("--- %zu/%zu (%zu new tokens, stop: %s) ---\n%s\n", i + 1, b.results.size(), r.new_ids.size(),
                    r.stop_reason.c_str(), r.text.c_str());
      }
      std::fprintf(stderr, "\n[%zu prompts, %lld prompt tokens: %.1f tok/s | %lld new tokens in %lld steps: %.1f tok/s in all | load %.2f s | peak memory %s]\n",
                   b.results.size(), (long long)b.prompt_tokens, pp, (long long)b.decode_tokens,
                   (long long)b.decode_steps, tg, load_s, human_bytes(double(peak_rss_bytes())).c_str());
    }
    return 0;
  };
}

}  // namespace gptq::cli
