// gptq bench: llama-bench-style prefill/decode speed table of a model folder or of a synthetic model
// (a known architecture's shapes with random weights, made on the device: --synthetic llama2-7b);
// --compare puts two model folders side by side (size on disk, memory after load, tokens/s,
// perplexity) as deployment engineers compare. Decode is also reported as weight bytes read per
// second against the backend's measured copy bandwidth (the roofline).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "backend/backend.h"
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
  std::string model, file, windows, device = "auto", synthetic, dtype = "f16";
  std::string kv_cache = "auto";
  std::vector<std::string> compare;
  std::vector<int> batches{1};
  int n_prompt = 512, n_gen = 128, reps = 5, threads = 0, bits = 0, group_size = 128;
  uint64_t seed = 0;
  int64_t ctx = 0;
  bool json = false, no_bandwidth = false, wikitext = false;
};

std::string tps(const SpeedStats& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f ± %.2f", s.mean, s.sd);
  return buf;
}

// Memory the backend holds: device memory for a GPU, the process's resident memory for the CPU.
size_t memory_in_use(Backend& be) { return be.device() == Device::kCpu ? current_rss_bytes() : be.device_bytes_in_use(); }

// Decode as memory traffic: each step reads every weight once, whatever the batch size, so the
// weight bytes read per second are bytes_per_token x steps/s (x tokens/s at batch 1).
struct DecodeRate {
  int batch = 1;
  double tokens_per_s = 0, sd = 0, bytes_per_s = 0, fraction = NAN;  // fraction of the roofline
};

struct Measured {
  std::string name, weights, device, backend;
  size_t file_bytes = 0, weight_bytes = 0, memory_bytes = 0;
  int64_t parameters = 0;
  double bandwidth = 0;  // the backend's copy bandwidth, bytes/s (0: not measured)
  BenchResult bench;
  std::vector<DecodeRate> decode;  // one per batch size, in order
  double ppl = NAN;
  int64_t ppl_windows = 0;
  double kl = NAN, kl_p99 = NAN, top1 = NAN;  // against the base model, when one is given
};

std::vector<DecodeRate> decode_rates(const BenchResult& r, double bandwidth) {
  std::vector<DecodeRate> out;
  for (const BatchDecodeStats& d : r.batches) {
    DecodeRate e;
    e.batch = d.batch;
    e.tokens_per_s = d.speed.mean;
    e.sd = d.speed.sd;
    e.bytes_per_s = double(r.bytes_per_token) * d.speed.mean / d.batch;
    if (bandwidth > 0) e.fraction = e.bytes_per_s / bandwidth;
    out.push_back(e);
  }
  return out;
}

// The model folder `dir` or, with --synthetic, the synthetic model, on the backend --device names.
std::unique_ptr<Model> load_model(const std::string& dir, const Args& a, const std::shared_ptr<Backend>& be) {
  if (!a.synthetic.empty()) {
    SyntheticOptions so;
    so.dtype = synthetic_dtype(a.dtype);
    so.bits = a.bits;
    so.group_size = a.group_size;
    so.seed = a.seed;
    so.backend = be;
    so.kv_fp16 = kv_cache_fp16(a.kv_cache);
    return Model::synthetic(a.synthetic, so);
  }
  LoadOptions lo;
  lo.threads = a.threads;
  lo.backend = be;
  lo.kv_fp16 = kv_cache_fp16(a.kv_cache);
  return Model::load(dir, lo);
}

// Speed and memory of the model in `dir` (or the synthetic one); with a perplexity file, its
// perplexity, and with `base` (loaded after the speed and memory measurements) its KL divergence
// against base on the same windows. a.threads is already capped.
Measured measure(const std::string& dir, const Args& a, const std::string& base = "") {
  Measured m;
  m.name = a.synthetic.empty() ? model_name(dir) : "synthetic:" + a.synthetic;
  const std::shared_ptr<Backend> be = make_backend(a.device, a.threads);
  m.device = be->name();
  m.backend = be->device() == Device::kCpu ? "cpu" : "cuda";
  const size_t mem0 = memory_in_use(*be);
  auto model = load_model(dir, a, be);
  m.weights = model->weight_dtype_summary();
  m.file_bytes = model->file_bytes();
  m.weight_bytes = model->weight_bytes();
  m.parameters = model->parameter_count();
  m.bench = run_bench(*model, a.n_prompt, a.n_gen, a.reps, a.batches);
  // Memory this model added: weights as used, KV cache and buffers.
  const size_t mem1 = memory_in_use(*be);
  m.memory_bytes = mem1 > mem0 ? mem1 - mem0 : 0;
  m.bandwidth = a.no_bandwidth ? 0 : be->copy_bandwidth();
  m.decode = decode_rates(m.bench, m.bandwidth);
  if (!a.file.empty()) {
    PerplexityOptions o;
    o.ctx = a.ctx;
    parse_windows(a.windows, &o.window_begin, &o.window_end);
    const std::string raw = read_text_file(a.file);
    const auto ids = Tokenizer::from_model_dir(dir).encode(a.wikitext ? wikitext_join(raw) : raw);
    std::unique_ptr<Model> base_model;
    if (!base.empty()) base_model = load_model(base, a, be);
    const PerplexityResult r = perplexity(*model, ids, o, base_model.get());
    m.ppl = r.ppl;
    m.ppl_windows = r.windows;
    if (r.has_kl) m.kl = r.kl.mean, m.kl_p99 = r.kl.p99, m.top1 = r.kl.top1_agreement;
  }
  return m;
}

nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); }
double num(const nlohmann::json& j) { return j.is_null() ? NAN : j.get<double>(); }

nlohmann::json rates_json(const std::vector<DecodeRate>& rates) {
  nlohmann::json j = nlohmann::json::array();
  for (const DecodeRate& d : rates)
    j.push_back({{"batch", d.batch}, {"tokens_per_s", d.tokens_per_s}, {"sd", d.sd},
                 {"weight_bytes_per_s", d.bytes_per_s}, {"fraction_of_roofline", num(d.fraction)}});
  return j;
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
      const BenchResult& b = m.bench;
      j = {{"name", m.name}, {"weights", m.weights}, {"device", m.device}, {"backend", m.backend},
           {"file_bytes", m.file_bytes}, {"weight_bytes", m.weight_bytes}, {"memory_bytes", m.memory_bytes},
           {"bandwidth", m.bandwidth}, {"bytes_per_token", b.bytes_per_token}, {"threads", b.threads},
           {"pp", b.prefill.mean}, {"pp_sd", b.prefill.sd}, {"tg", b.decode.mean}, {"tg_sd", b.decode.sd},
           {"decode", rates_json(m.decode)}, {"ppl", num(m.ppl)}, {"ppl_windows", m.ppl_windows},
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
  m.device = j["device"];
  m.backend = j["backend"];
  m.file_bytes = j["file_bytes"];
  m.weight_bytes = j["weight_bytes"];
  m.memory_bytes = j["memory_bytes"];
  m.bandwidth = j["bandwidth"];
  m.bench.bytes_per_token = j["bytes_per_token"];
  m.bench.threads = j["threads"];
  m.bench.prefill.mean = j["pp"];
  m.bench.prefill.sd = j["pp_sd"];
  m.bench.decode.mean = j["tg"];
  m.bench.decode.sd = j["tg_sd"];
  for (const auto& d : j["decode"])
    m.decode.push_back({d["batch"].get<int>(), d["tokens_per_s"].get<double>(), d["sd"].get<double>(),
                        d["weight_bytes_per_s"].get<double>(), num(d["fraction_of_roofline"])});
  m.ppl = num(j["ppl"]);
  m.kl = num(j["kl"]);
  m.kl_p99 = num(j["kl_p99"]);
  m.top1 = num(j["top1"]);
  m.ppl_windows = j["ppl_windows"];
  return m;
}

std::string gbps(double bytes_per_s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", bytes_per_s / 1e9);
  return buf;
}

std::string percent(double fraction) {
  if (std::isnan(fraction)) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f %%", 100 * fraction);
  return buf;
}

// "tg128" for batch 1, "tg128 @ b4" otherwise (always with the batch when `always_batch`).
std::string tg_name(int n_gen, int batch, bool always_batch) {
  return "tg" + std::to_string(n_gen) + (batch == 1 && !always_batch ? "" : " @ b" + std::to_string(batch));
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
                          {"device", m->device},
                          {"file_bytes", m->file_bytes},
                          {"weight_bytes", m->weight_bytes},
                          {"memory_bytes", m->memory_bytes},
                          {"memory_after_load_bytes", m->memory_bytes},
                          {"bytes_per_token", m->bench.bytes_per_token},
                          {"copy_bandwidth_bytes_per_s", m->bandwidth},
                          {"prefill_tokens_per_s", m->bench.prefill.mean},
                          {"prefill_sd", m->bench.prefill.sd},
                          {"decode_tokens_per_s", m->bench.decode.mean},
                          {"decode_sd", m->bench.decode.sd},
                          {"decode_batches", rates_json(m->decode)}};
      if (!std::isnan(m->ppl)) e["ppl"] = m->ppl;
      j["models"].push_back(e);
    }
    j["n_prompt"] = a.n_prompt;
    j["n_gen"] = a.n_gen;
    j["repetitions"] = a.reps;
    j["threads"] = x.bench.threads;
    j["backend"] = x.backend;
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
  auto bytes_row = [&](const char* what, size_t u, size_t v) {
    std::printf("| %s | %s | %s | %s |\n", what, human_bytes(double(u)).c_str(), human_bytes(double(v)).c_str(),
                ratio(double(u), double(v)).c_str());
  };
  std::printf("| | %s | %s | ratio |\n| --- | ---: | ---: | ---: |\n", x.name.c_str(), y.name.c_str());
  std::printf("| weights | %s | %s | |\n", x.weights.c_str(), y.weights.c_str());
  bytes_row("size on disk", x.file_bytes, y.file_bytes);
  bytes_row("weights in memory", x.weight_bytes, y.weight_bytes);
  bytes_row("memory after load", x.memory_bytes, y.memory_bytes);
  if (a.n_prompt)
    std::printf("| prefill t/s (pp%d) | %s | %s | %s |\n", a.n_prompt, tps(x.bench.prefill).c_str(),
                tps(y.bench.prefill).c_str(), ratio(x.bench.prefill.mean, y.bench.prefill.mean).c_str());
  for (size_t i = 0; a.n_gen && i < x.decode.size() && i < y.decode.size(); ++i) {
    const DecodeRate &u = x.decode[i], &v = y.decode[i];
    const std::string test = tg_name(a.n_gen, u.batch, false);
    std::printf("| decode t/s (%s) | %.2f ± %.2f | %.2f ± %.2f | %s |\n", test.c_str(), u.tokens_per_s, u.sd,
                v.tokens_per_s, v.sd, ratio(u.tokens_per_s, v.tokens_per_s).c_str());
    auto traffic = [](const DecodeRate& d) {
      const std::string p = percent(d.fraction);
      return gbps(d.bytes_per_s) + (p.empty() ? "" : " (" + p + ")");
    };
    std::printf("| decode weight GB/s%s (%s) | %s | %s | %s |\n", std::isnan(u.fraction) ? "" : ", % of roofline",
                test.c_str(), traffic(u).c_str(), traffic(v).c_str(), ratio(u.bytes_per_s, v.bytes_per_s).c_str());
  }
  if (!a.file.empty())
    std::printf("| perplexity (%lld windows) | %.4f | %.4f | %+.2f %% |\n", (long long)x.ppl_windows, x.ppl, y.ppl,
                100 * (y.ppl / x.ppl - 1));
  if (!a.file.empty()) {
    std::printf("| KL divergence vs original, mean (p99) | | %.6f (%.6f) | |\n", y.kl, y.kl_p99);
    std::printf("| top-1 agreement with original | | %.2f %% | |\n", 100 * y.top1);
  }
  std::printf("\n%s, %d repeats, commit %s%s%s\n", x.device.c_str(), a.reps, commit(),
              a.file.empty() ? "" : "; perplexity on ", a.file.c_str());
  if (x.bandwidth > 0)
    std::printf("roofline: measured copy bandwidth %.2f GB/s (%s), %.2f GB/s (%s)\n", x.bandwidth / 1e9, x.name.c_str(),
                y.bandwidth / 1e9, y.name.c_str());
  return 0;
}

int run_single(const Args& a) {
  const Measured m = measure(a.model, a);
  const BenchResult& r = m.bench;
  const bool has_b1 = std::find(a.batches.begin(), a.batches.end(), 1) != a.batches.end();
  // Decode roofline: every weight byte read once per token at the measured bandwidth.
  const double roofline = m.bandwidth > 0 ? m.bandwidth / double(r.bytes_per_token) : 0;
  const std::vector<DecodeRate>& rates = m.decode;
  if (a.json) {
    nlohmann::json j;
    j["model"] = m.name;
    if (!a.synthetic.empty())
      j["synthetic"] = {{"name", a.synthetic}, {"dtype", a.dtype}, {"bits", a.bits}, {"group_size", a.group_size},
                        {"seed", a.seed}};
    j["weights"] = m.weights;
    j["backend"] = m.backend;
    j["device"] = m.device;
    j["threads"] = r.threads;
    j["file_bytes"] = m.file_bytes;
    j["weight_bytes"] = m.weight_bytes;
    j["parameters"] = m.parameters;
    j["memory_bytes"] = r.memory_bytes;
    j["memory_after_load_bytes"] = m.memory_bytes;
    j["bytes_per_token"] = r.bytes_per_token;
    j["copy_bandwidth_bytes_per_s"] = m.bandwidth;
    j["decode_roofline_tokens_per_s"] = roofline;
    if (a.n_prompt) j["prefill"] = {{"n_prompt", r.n_prompt}, {"tokens_per_s", r.prefill.mean}, {"sd", r.prefill.sd}, {"samples", r.prefill.samples}};
    if (a.n_gen && has_b1) {
      j["decode"] = {{"n_gen", r.n_gen}, {"tokens_per_s", r.decode.mean}, {"sd", r.decode.sd}, {"samples", r.decode.samples},
                     {"weight_bytes_per_s", double(r.bytes_per_token) * r.decode.mean}};
      if (roofline > 0) j["decode_fraction_of_roofline"] = r.decode.mean / roofline;
    }
    for (size_t i = 0; i < r.batches.size(); ++i) {
      const BatchDecodeStats& d = r.batches[i];
      j["decode_batches"].push_back({{"batch", d.batch}, {"n_gen", r.n_gen}, {"tokens", d.tokens},
                                     {"seconds", d.seconds}, {"samples", d.speed.samples},
                                     {"tokens_per_s", d.speed.mean}, {"sd", d.speed.sd},
                                     {"weight_bytes_per_s", rates[i].bytes_per_s},
                                     {"fraction_of_roofline", num(rates[i].fraction)}});
    }
    j["repetitions"] = r.repeats;
    j["commit"] = commit();
    print_json(j);
    return 0;
  }
  const std::string be = m.backend == "cpu" ? "CPU" : "CUDA";
  std::printf("| model | size | params | backend | threads | test | t/s | GB/s | roofline |\n");
  std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
  auto line = [&](const std::string& test, const SpeedStats& s, const std::string& gb, const std::string& pct) {
    std::printf("| %s | %s | %s | %s | %d | %s | %s | %s | %s |\n", m.name.c_str(), human_bytes(double(m.weight_bytes)).c_str(),
                human_count(double(m.parameters)).c_str(), be.c_str(), r.threads, test.c_str(), tps(s).c_str(), gb.c_str(),
                pct.c_str());
  };
  if (a.n_prompt) line("pp" + std::to_string(a.n_prompt), r.prefill, "", "");
  const bool only_b1 = a.batches == std::vector<int>{1};
  for (size_t i = 0; i < r.batches.size(); ++i)
    line(tg_name(a.n_gen, r.batches[i].batch, !only_b1), r.batches[i].speed, gbps(rates[i].bytes_per_s),
         percent(rates[i].fraction));
  if (!only_b1 && a.n_gen)
    std::printf("\ntgN @ bB: B sequences (each prefilled with 8 tokens) decoded together, one forward per step; "
                "t/s is the total, B x N / time\n");
  if (a.n_gen)
    std::printf("%sGB/s: weight bytes read per second (every decode step reads each weight once); roofline: that against "
                "the measured copy bandwidth\n",
                only_b1 ? "\n" : "");
  const std::string files =
      a.synthetic.empty() ? "files " + human_bytes(double(m.file_bytes)) : std::string("synthetic weights (no files)");
  std::printf("\n%s, weights in memory %s (%s), memory after load %s (%s), peak resident memory %s; %s; %d repeats; commit %s\n",
              files.c_str(), human_bytes(double(m.weight_bytes)).c_str(), m.weights.c_str(),
              human_bytes(double(m.memory_bytes)).c_str(), m.backend == "cpu" ? "resident" : "device",
              human_bytes(double(r.memory_bytes)).c_str(), m.device.c_str(), r.repeats, commit());
  if (m.bandwidth > 0 && a.n_gen && has_b1) {
    std::printf("decode roofline: %s read per token / %.2f GB/s measured copy bandwidth = %.1f t/s; measured %.1f t/s = %.0f %% of it\n",
                human_bytes(double(r.bytes_per_token)).c_str(), m.bandwidth / 1e9, roofline, r.decode.mean,
                100 * r.decode.mean / roofline);
  }
  return 0;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "bench", "Prefill and decode speed (mean ± sd over repeats), memory, roofline; of a model folder, a synthetic model, "
               "or --compare two models");
  c->add_option("-m,--model", a->model, "Model folder");
  c->add_option("--synthetic", a->synthetic,
                "Instead of -m: random weights of this architecture's exact shapes, made on the device "
                "(llama2-7b, llama2-13b, llama2-70b, llama3-8b, tiny); defaults -n 256 -b 1,4,16,64");
  add_synthetic_weight_options(c, a->dtype, a->bits, a->group_size);
  c->add_option("--seed", a->seed, "--synthetic: seed of the random weights");
  c->add_option("--compare", a->compare, "Compare two model folders: ORIGINAL QUANTIZED")->expected(2);
  c->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the prefill test (0: skip)")->check(int_in(0, INT32_MAX));
  c->add_option("-n,--n-gen", a->n_gen, "Tokens for the decode test (0: skip; default 128, 256 with --synthetic)")
      ->check(int_in(0, INT32_MAX));
  c->add_option("-b,--batch-size", a->batches,
                "Decode batch sizes, e.g. 1,4,16,64: B sequences decoded together, total tokens/s "
                "(default 1; 1,4,16,64 with --synthetic)")
      ->delimiter(',')
      ->check(int_in(1, INT32_MAX));
  c->add_option("-r,--repetitions", a->reps, "Repeats of each test")->check(int_in(1, INT32_MAX));
  c->add_option("-t,--threads", a->threads, "Threads (0: all cores)")->check(int_in(0, INT32_MAX));
  add_device_option(c, a->device);
  add_kv_cache_option(c, a->kv_cache);
  c->add_option("-f,--file", a->file, "With --compare: also measure perplexity on this text file");
  c->add_option("-c,--ctx", a->ctx, "Perplexity window length (default: the model's context)")->check(int_in(0, INT32_MAX));
  c->add_option("--windows", a->windows, "Perplexity windows A:B");
  c->add_flag("--wikitext", a->wikitext, "Join the perplexity file's rows as GPTQ does for WikiText-2");
  c->add_flag("--no-bandwidth", a->no_bandwidth, "Skip measuring memory bandwidth (no roofline)");
  c->add_flag("--json", a->json, "Print JSON");
  return [a, c]() {
    const bool synthetic_opts = c->count("--dtype") || c->count("--bits") || c->count("--group-size") || c->count("--seed");
    if (a->synthetic.empty() && synthetic_opts)
      fail("--dtype, --bits, --group-size and --seed describe a --synthetic model; a model folder has its own weights");
    if (!a->compare.empty()) {
      if (!a->synthetic.empty()) fail("--compare takes two model folders, not --synthetic");
      return run_compare(*a);
    }
    Args args = *a;
    if (!args.synthetic.empty()) {
      if (!args.model.empty()) fail("give either -m MODEL or --synthetic NAME, not both");
      synthetic_config(args.synthetic);  // an unknown name fails before anything is measured
      if (!c->count("--n-gen")) args.n_gen = 256;
      if (!c->count("--batch-size")) args.batches = {1, 4, 16, 64};
    } else if (args.model.empty()) {
      fail("bench needs -m MODEL, --synthetic NAME or --compare ORIGINAL QUANTIZED");
    }
    args.threads = cap_threads(args.threads);
    return run_single(args);
  };
}

}  // namespace gptq::cli
