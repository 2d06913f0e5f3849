// gptq perplexity: the GPTQ/AutoGPTQ perplexity protocol on a text file; with --kl-divergence, also the
// KL divergence against a base model on the same windows (llama.cpp style).
#include <cstdio>

#include "common.h"
#include "core/fs.h"
#include "core/sha256.h"
#include "gptq/error.h"
#include "gptq/perplexity.h"
#include "gptq/tokenizer.h"

namespace gptq::cli {

Runner add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, file, windows, base, device = "auto";
    std::string kv_cache = "auto";
    int64_t ctx = 0, batch = 0;
    int threads = 0;
    bool wikitext = false, json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("perplexity", "Perplexity of a model on a text file (non-overlapping windows)");
  c->add_option("-m,--model", a->model, "Model folder")->required();
  c->add_option("-f,--file", a->file, "Text file")->required();
  c->add_option("-c,--ctx", a->ctx, "Window length in tokens (default: the model's context)")->check(int_in(0, INT32_MAX));
  c->add_option("--windows", a->windows, "Evaluate windows A..B-1 only, as A:B");
  c->add_flag("--wikitext", a->wikitext, "Join the file's rows as GPTQ does for WikiText-2 (blank lines empty, joined by \\n\\n)");
  c->add_option("--batch", a->batch, "Windows per forward call (default: as many as keep logits, KV cache and activations under ~256 MiB)")
      ->check(int_in(1, INT32_MAX));
  c->add_option("--kl-divergence", a->base, "Base model folder: also report KL(base || model), its p99, top-1 agreement");
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  add_kv_cache_option(c, a->kv_cache);
  c->add_flag("--json", a->json, "Print JSON: ppl, windows, tokens, ctx, sha256, batch (kl_divergence with a base)");
  return [a]() {
    LoadOptions lo;
    lo.threads = cap_threads(a->threads);
    lo.backend = make_backend(a->device, lo.threads);
    lo.kv_fp16 = kv_cache_fp16(a->kv_cache);
    PerplexityOptions o;
    o.ctx = a->ctx;
    o.batch = a->batch;
    parse_windows(a->windows, &o.window_begin, &o.window_end);
    const std::string raw = read_text_file(a->file);
    auto model = Model::load(a->model, lo);
    std::unique_ptr<Model> base;
    if (!a->base.empty()) base = Model::load(a->base, lo);
    const Tokenizer tok = Tokenizer::from_model_dir(a->model);
    const std::string text = a->wikitext ? wikitext_join(raw) : raw;
    const auto ids = tok.encode(text, true);
    const std::string sha = sha256_of(raw);
    const PerplexityResult r = perplexity(*model, ids, o, base.get());
    if (a->json) {
      nlohmann::json j;
      j["ppl"] = r.ppl;
      j["mean_nll"] = r.mean_nll;
      j["windows"] = r.windows;
      j["window_range"] = {o.window_begin, o.window_begin + r.windows};
      j["total_windows"] = r.total_windows;
      j["tokens"] = r.tokens;
      j["ctx"] = r.ctx;
      j["sha256"] = sha;
      j["file"] = a->file;
      j["seconds"] = r.seconds;
      j["batch"] = r.batch;
      if (r.has_kl)
        j["kl_divergence"] = {{"base", a->base},         {"mean", r.kl.mean},
                              {"p99", r.kl.p99},         {"top1_agreement", r.kl.top1_agreement},
                              {"tokens", r.kl.tokens},   {"base_ppl", r.kl.base_ppl},
                              {"base_mean_nll", r.kl.base_mean_nll}};
      print_json(j);
    } else {
      std::printf("perplexity %.4f  (ctx %lld, windows %lld of %lld, %lld tokens, data sha256 %.16s…, %.1f s)\n", r.ppl,
                  (long long)r.ctx, (long long)r.windows, (long long)r.total_windows, (long long)r.tokens, sha.c_str(),
                  r.seconds);
      if (r.has_kl)
        std::printf("KL divergence vs %s: mean %.6f, p99 %.6f, top-1 agreement %.2f %% (%lld tokens); "
                    "base perplexity %.4f (%+.2f %%)\n",
                    a->base.c_str(), r.kl.mean, r.kl.p99, 100 * r.kl.top1_agreement, (long long)r.kl.tokens,
                    r.kl.base_ppl, 100 * (r.ppl / r.kl.base_ppl - 1));
    }
    return 0;
  };
}

}  // namespace gptq::cli
