// gptq bench: llama-bench-style prefill/decode speed table; --compare puts two model folders side
// by side (size on disk, memory after load, tokens/s, perplexity) as deployment engineers compare.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "core/fs.h"
#include "core/thread_pool.h"
#include "gptq/bench.h"
#include "gptq/error.h"
#include "gptq/perplexity.h"
#include "gptq/tokenizer.h"
#include "gptq/version.h"

namespace gptq::cli {

namespace {

struct Args {
  std::string model, file, windows;
  std::vector<std::string> compare;
  std::vector<int> batches{1};
  int n_prompt = 512, n_gen = 128, reps = 5, threads = 0;
  int64_t ctx = 0;
  bool json = false, no_bandwidth = false, wikitext = false;
};

std::string tps(const SpeedStats& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f ± %.2f", s.mean, s.sd);
  return buf;
}

struct Measured {
  std::string name, weights;
  size_t file_bytes = 0, memory_bytes = 0;
  BenchResult bench;
  double ppl = NAN;
  int64_t ppl_windows = 0;
  double kl = NAN, kl_p99 = NAN, top1 = NAN;  // against the base model, when one is given
};

// Speed and memory of the model in `dir`; with a perplexity file, its perplexity, and with `base`
// (loaded after the speed and memory measurements) its KL divergence against base on the same windows.
// a.threads is already capped (run_compare).
Measured measure(const std::string& dir, const Args& a, const std::string& base = "") {
  Measured m;
  m.name = model_name(dir);
  const size_t rss0 = current_rss_bytes();
  LoadOptions lo;
  lo.threads = a.threads;
  auto model = Model::load(dir, lo);
  m.weights = model->weight_dtype_summary();
  m.file_bytes = model->file_bytes();
  m.bench = run_bench(*model, a.n_prompt, a.n_gen, a.reps);
  // Resident memory this model added: weights as used, KV cache and buffers.
  const size_t rss1 = current_rss_bytes();
  m.memory_bytes = rss1 > rss0 ? rss1 - rss0 : 0;
  if (!a.file.empty()) {
    PerplexityOptions o;
    o.ctx = a.ctx;
    parse_windows(a.windows, &o.window_begin, &o.window_end);
    const std::string raw = read_text_file(a.file);
    const auto ids = Tokenizer::from_model_dir(dir).encode(a.wikitext ? wikitext_join(raw) : raw);
    std::unique_ptr<Model> base_model;
    if (!base.empty()) base_model = Model::load(base, lo);
    const PerplexityResult r = perplexity(*model, ids, o, base_model.get());
    m.ppl = r.ppl;
    m.ppl_windows = r.windows;
    if (r.has_kl) m.kl = r.kl.mean, m.kl_p99 = r.kl.p99, m.top1 = r.kl.top1_agreement;
  }
  return m;
}

// Measures each model in a child process of its own, so that memory after load is that model's
// alone (in one process the second model would reuse the first one's freed heap).
Measured measure_isolated(const std::string& dir, const Args& a, const std::string& base = "") {
  int fds[2];
  if (::pipe(fds) != 0) fail("cannot create a pipe: ", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("cannot fork: ", std::strerror(errno));
  if (pid == 0) {
    ::close(fds[0]);
    nlohmann::json j;
    try {
      const Measured m = measure(dir, a, base);
      auto num = [](double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); };
      const BenchResult& b = m.bench;
      j = {{"name", m.name}, {"weights", m.weights}, {"file_bytes", m.file_bytes}, {"memory_bytes", m.memory_bytes},
           {"threads", b.threads}, {"pp", b.prefill.mean}, {"pp_sd", b.prefill.sd}, {"tg", b.decode.mean},
           {"tg_sd", b.decode.sd}, {"ppl", num(m.ppl)}, {"ppl_windows", m.ppl_windows},
           {"kl", num(m.kl)}, {"kl_p99", num(m.kl_p99)}, {"top1", num(m.top1)}};
    } catch (const std::exception& e) {
      j = {{"error", e.what()}};
    }
    const std::string out = j.dump();
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t w = ::write(fds[1], out.data() + done, out.size() - done);
      if (w <= 0) break;
      done += size_t(w);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string in;
  char buf[4096];
  ssize_t r;
  while ((r = ::read(fds[0], buf, sizeof buf)) > 0) in.append(buf, size_t(r));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (in.empty()) fail(dir, ": the measurement process died (signal ", WIFSIGNALED(status) ? WTERMSIG(status) : 0, ")");
  const nlohmann::json j = nlohmann::json::parse(in);
  if (j.contains("error")) throw Error(j["error"].get<std::string>());
  Measured m;
  m.name = j["name"];
  m.weights = j["weights"];
  m.file_bytes = j["file_bytes"];
  m.memory_bytes = j["memory_bytes"];
  m.bench.threads = j["threads"];
  m.bench.prefill.mean = j["pp"];
  m.bench.prefill.sd = j["pp_sd"];
  m.bench.decode.mean = j["tg"];
  m.bench.decode.sd = j["tg_sd"];
  auto num = [&](const char* k) { return j[k].is_null() ? NAN : j[k].get<double>(); };
  m.ppl = num("ppl");
  m.kl = num("kl");
  m.kl_p99 = num("kl_p99");
  m.top1 = num("top1");
  m.ppl_windows = j["ppl_windows"];
  return m;
}

int run_compare(Args a) {
  if (a.compare.size() != 2) fail("--compare takes two model folders: ORIGINAL QUANTIZED");
  a.threads = cap_threads(a.threads);  // once, not again in each measuring process
  const Measured x = measure_isolated(a.compare[0], a), y = measure_isolated(a.compare[1], a, a.compare[0]);
  if (a.json) {
    nlohmann::json j;
    for (const Measured* m : {&x, &y}) {
      nlohmann::json e = {{"model", m->name},
                          {"weights", m->weights},
                          {"file_bytes", m->file_bytes},
                          {"memory_bytes", m->memory_bytes},
                          {"prefill_tokens_per_s", m->bench.prefill.mean},
                          {"prefill_sd", m->bench.prefill.sd},
                          {"decode_tokens_per_s", m->bench.decode.mean},
                          {"decode_sd", m->bench.decode.sd}};
      if (!std::isnan(m->ppl)) e["ppl"] = m->ppl;
      j["models"].push_back(e);
    }
    j["n_prompt"] = a.n_prompt;
    j["n_gen"] = a.n_gen;
    j["repetitions"] = a.reps;
    j["threads"] = x.bench.threads;
    if (!a.file.empty()) {
      j["ppl_file"] = a.file;
      j["ppl_windows"] = x.ppl_windows;
      j["kl_divergence"] = {{"mean", y.kl}, {"p99", y.kl_p99}, {"top1_agreement", y.top1}};
    }
    j["commit"] = commit();
    print_json(j);
    return 0;
  }
  auto ratio = [](double u, double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2fx", u > 0 ? v / u : 0.0);
    return std::string(buf);
  };
  std::printf("| | %s | %s | ratio |\n| --- | ---: | ---: | ---: |\n", x.name.c_str(), y.name.c_str());
  std::printf("| weights | %s | %s | |\n", x.weights.c_str(), y.weights.c_str());
  std::printf("| size on disk | %s | %s | %s |\n", human_bytes(double(x.file_bytes)).c_str(),
              human_bytes(double(y.file_bytes)).c_str(), ratio(double(x.file_bytes), double(y.file_bytes)).c_str());
  std::printf("| memory after load | %s | %s | %s |\n", human_bytes(double(x.memory_bytes)).c_str(),
              human_bytes(double(y.memory_bytes)).c_str(), ratio(double(x.memory_bytes), double(y.memory_bytes)).c_str());
  if (a.n_prompt)
    std::printf("| prefill t/s (pp%d) | %s | %s | %s |\n", a.n_prompt, tps(x.bench.prefill).c_str(),
                tps(y.bench.prefill).c_str(), ratio(x.bench.prefill.mean, y.bench.prefill.mean).c_str());
  if (a.n_gen)
    std::printf("| decode t/s (tg%d) | %s | %s | %s |\n", a.n_gen, tps(x.bench.decode).c_str(),
                tps(y.bench.decode).c_str(), ratio(x.bench.decode.mean, y.bench.decode.mean).c_str());
  if (!a.file.empty())
    std::printf("| perplexity (%lld windows) | %.4f | %.4f | %+.2f %% |\n", (long long)x.ppl_windows, x.ppl, y.ppl,
                100 * (y.ppl / x.ppl - 1));
  if (!a.file.empty()) {
    std::printf("| KL divergence vs original, mean (p99) | | %.6f (%.6f) | |\n", y.kl, y.kl_p99);
    std::printf("| top-1 agreement with original | | %.2f %% | |\n", 100 * y.top1);
  }
  std::printf("\nCPU, %d threads, %d repeats, commit %s%s%s\n", x.bench.threads, a.reps, commit(),
              a.file.empty() ? "" : "; perplexity on ", a.file.c_str());
  return 0;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("bench", "Prefill and decode speed (mean ± sd over repeats), memory, roofline; or --compare two models");
  c->add_option("-m,--model", a->model, "Model folder");
  c->add_option("--compare", a->compare, "Compare two model folders: ORIGINAL QUANTIZED")->expected(2);
  c->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the prefill test (0: skip)")->check(int_in(0, INT32_MAX));
  c->add_option("-n,--n-gen", a->n_gen, "Tokens for the decode test (0: skip)")->check(int_in(0, INT32_MAX));
  c->add_option("-b,--batch-size", a->batches, "Decode batch sizes, e.g. 1,4,16,64: B sequences decoded together, total tokens/s")
      ->delimiter(',')
      ->check(int_in(1, INT32_MAX));
  c->add_option("-r,--repetitions", a->reps, "Repeats of each test")->check(int_in(1, INT32_MAX));
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  c->add_option("-f,--file", a->file, "With --compare: also measure perplexity on this text file");
  c->add_option("-c,--ctx", a->ctx, "Perplexity window length (default: the model's context)")->check(int_in(0, INT32_MAX));
  c->add_option("--windows", a->windows, "Perplexity windows A:B");
  c->add_flag("--wikitext", a->wikitext, "Join the perplexity file's rows as GPTQ does for WikiText-2");
  c->add_flag("--no-bandwidth", a->no_bandwidth, "Skip measuring memory bandwidth (no roofline line)");
  c->add_flag("--json", a->json, "Print JSON");
  return [a]() {
    if (!a->compare.empty()) return run_compare(*a);
    if (a->model.empty()) fail("bench needs -m MODEL (or --compare ORIGINAL QUANTIZED)");
    LoadOptions lo;
    lo.threads = cap_threads(a->threads);
    auto model = Model::load(a->model, lo);
    const BenchResult r = run_bench(*model, a->n_prompt, a->n_gen, a->reps, a->batches);
    const bool has_b1 = std::find(a->batches.begin(), a->batches.end(), 1) != a->batches.end();
    const double bw = a->no_bandwidth ? 0 : measure_read_bandwidth(model->threads());
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
      if (a->n_gen && has_b1) {
        j["decode"] = {{"n_gen", r.n_gen}, {"tokens_per_s", r.decode.mean}, {"sd", r.decode.sd}, {"samples", r.decode.samples}};
        if (roofline > 0) j["decode_fraction_of_roofline"] = r.decode.mean / roofline;
      }
      for (const BatchDecodeStats& d : r.batches)
        j["decode_batches"].push_back({{"batch", d.batch}, {"n_gen", r.n_gen}, {"tokens", d.tokens},
                                       {"seconds", d.seconds}, {"samples", d.speed.samples},
                                       {"tokens_per_s", d.speed.mean}, {"sd", d.speed.sd}});
      j["repetitions"] = r.repeats;
      j["commit"] = commit();
      print_json(j);
      return 0;
    }
    std::printf("| model | size | params | backend | threads | test | t/s |\n");
    std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    auto line = [&](const std::string& test, const SpeedStats& s) {
      std::printf("| %s | %s | %s | CPU | %d | %s | %s |\n", name.c_str(), human_bytes(double(model->weight_bytes())).c_str(),
                  human_count(double(model->parameter_count())).c_str(), r.threads, test.c_str(), tps(s).c_str());
    };
    if (a->n_prompt) line("pp" + std::to_string(a->n_prompt), r.prefill);
    const bool only_b1 = a->batches == std::vector<int>{1};
    for (const BatchDecodeStats& d : r.batches)
      line("tg" + std::to_string(a->n_gen) + (only_b1 ? "" : " @ b" + std::to_string(d.batch)), d.speed);
    if (!only_b1 && a->n_gen)
      std::printf("\ntgN @ bB: B sequences (each prefilled with 8 tokens) decoded together, one forward per step; "
                  "t/s is the total, B x N / time\n");
    std::printf("\nfiles %s, weights in memory %s, peak memory %s; %d repeats; commit %s\n",
                human_bytes(double(model->file_bytes())).c_str(), human_bytes(double(model->weight_bytes())).c_str(),
                human_bytes(double(r.memory_bytes)).c_str(), r.repeats, commit());
    if (bw > 0 && a->n_gen && has_b1) {
      std::printf("decode roofline: %s read per token / %.2f GB/s measured read bandwidth = %.1f t/s; measured %.1f t/s = %.0f %% of it\n",
                  human_bytes(double(r.bytes_per_token)).c_str(), bw / 1e9, roofline, r.decode.mean,
                  100 * r.decode.mean / roofline);
    }
    return 0;
  };
}

}  // namespace gptq::cli
