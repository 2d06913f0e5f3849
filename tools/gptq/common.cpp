#include "common.h"

#include <cctype>
#include <cerrno>
#include <cstdio>

#include <unistd.h>
#include <cstdlib>

#include "backend/backend.h"
#include "core/fs.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cli {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else if (n >= 1e3)
    std::snprintf(buf, sizeof buf, "%.2f K", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

void print_json(const nlohmann::json& j) {
  std::fputs(j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str(), stdout);
  std::fputc('\n', stdout);
}

std::string model_name(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const size_t s = d.rfind('/');
  return s == std::string::npos ? d : d.substr(s + 1);
}

void parse_windows(const std::string& spec, int64_t* begin, int64_t* end) {
  if (spec.empty()) return;
  const size_t colon = spec.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument("no colon");
    size_t used = 0;
    const int64_t b = std::stoll(spec.substr(0, colon), &used);
    if (used != colon) throw std::invalid_argument("junk");
    const std::string e = spec.substr(colon + 1);
    const int64_t en = std::stoll(e, &used);
    if (used != e.size()) throw std::invalid_argument("junk");
    *begin = b;
    *end = en;
  } catch (const std::exception&) {
    fail("--windows expects A:B (e.g. 128:192), got \"", spec, "\"");
  }
}

CLI::Validator int_in(int64_t lo, int64_t hi) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != 0 || errno == ERANGE || v < lo || v > hi)
          return "must be an integer in " + range + ", got " + s.substr(0, 40);
        return "";
      },
      "INT in " + range);
}

CLI::Validator number_in(double lo, double hi) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "[%g, %g]", lo, hi);
  const std::string range = buf;
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != 0 || !(v >= lo && v <= hi)) return "must be a number in " + range + ", got " + s.substr(0, 40);
        return "";
      },
      "NUMBER in " + range);
}

int cap_threads(int requested) {
  const int hw = hardware_threads();
  if (requested <= hw) return requested;
  std::fprintf(stderr, "note: -t %d is more than the %d CPUs this process may use; using %d\n", requested, hw, hw);
  return hw;
}

void add_device_option(CLI::App* c, std::string& device) {
  c->add_option("--device", device, "Where to run: auto (cuda:0 when usable, else cpu), cpu, cuda, cuda:N")
      ->capture_default_str();
}

void add_kv_cache_option(CLI::App* c, std::string& kv) {
  c->add_option("--kv-cache", kv, "KV cache storage: auto (f16 on a GPU, f32 on the CPU), f16 or f32")
      ->check(CLI::IsMember({"auto", "f16", "f32"}))
      ->capture_default_str();
}

std::optional<bool> kv_cache_fp16(const std::string& kv) {
  if (kv == "auto") return std::nullopt;
  return kv == "f16";
}

void add_synthetic_weight_options(CLI::App* c, std::string& dtype, int& bits, int& group_size) {
  c->add_option("--dtype", dtype, "--synthetic: dtype of the embeddings, lm_head and (without --bits) the linears")
      ->check(CLI::IsMember({"f16", "bf16", "f32"}));
  c->add_option("--bits", bits, "--synthetic: GPTQ linears of this many bits (symmetric, no act-order)")
      ->check(CLI::IsMember({2, 3, 4, 8}));
  c->add_option("--group-size", group_size, "--synthetic with --bits: GPTQ group size (-1: one group per row)")
      ->check(int_in(-1, INT32_MAX));
}

DType synthetic_dtype(const std::string& s) { return s == "bf16" ? DType::kBF16 : s == "f32" ? DType::kF32 : DType::kF16; }

std::shared_ptr<Backend> make_backend(const std::string& device, int threads) {
  auto cpu = [&]() -> std::shared_ptr<Backend> {
    CpuBackendOptions o;
    o.threads = threads;
    return make_cpu_backend(o);
  };
  if (device == "cpu") return cpu();
  if (device == "auto") {
    std::string why;
    if (built_with_cuda()) {
      if (cuda_usable(0, &why)) return make_cuda_backend({0});
      // A machine without the NVIDIA driver is a CPU machine: nothing to note there. A driver
      // with no usable GPU (too old, no device, too old a GPU) is worth the one line.
      if (access("/proc/driver/nvidia", F_OK) == 0)
        std::fprintf(stderr, "note: no usable GPU (%s); running on the CPU\n", why.c_str());
    }
    return cpu();
  }
  if (device != "cuda" && device.rfind("cuda:", 0) != 0)
    fail("--device \"", device, "\" is not a device: use auto, cpu, cuda or cuda:N");
  int index = 0;
  if (device != "cuda") {
    const std::string n = device.substr(5);
    errno = 0;
    char* end = nullptr;
    const long v = std::strtol(n.c_str(), &end, 10);
    if (n.empty() || *end != 0 || errno == ERANGE || v < 0 || v > 1023 || !std::isdigit(static_cast<unsigned char>(n[0])))
      fail("--device \"", device, "\": the GPU index must be a number (cuda:0, cuda:1, ...)");
    index = int(v);
  }
  std::string why;
  if (!cuda_usable(index, &why)) fail("--device cuda:", index, ": ", why);
  CudaBackendOptions o;
  o.device = index;
  return make_cuda_backend(o);
}

void add_sampling_options(CLI::App* c, SamplingArgs& s) {
  c->add_option("--temperature,--temp", s.temperature, "Sampling temperature; 0 is greedy")->check(number_in(0.0, 100.0));
  c->add_option("--top-k", s.top_k, "Keep the k most likely tokens (0: off)")->check(int_in(0, INT32_MAX));
  c->add_option("--top-p", s.top_p, "Nucleus sampling mass (1: off)")->check(number_in(0.0, 1.0));
  c->add_option("--min-p", s.min_p, "Drop tokens below min-p x the top probability (0: off)")->check(number_in(0.0, 1.0));
  c->add_option("--repeat-penalty,--repetition-penalty", s.repeat_penalty, "Repetition penalty (1: off)")
      ->check(number_in(0.01, 100.0));
  c->add_option("--repeat-last-n", s.repeat_last_n, "Tokens the repetition penalty looks back (-1: all)");
  c->add_option("-s,--seed", s.seed, "Random seed");
}

SamplingParams sampling_params(const SamplingArgs& s, const CLI::App* c, const GenerationDefaults& d) {
  SamplingParams sp;
  sp.temperature = s.temperature;
  sp.top_k = s.top_k;
  sp.top_p = s.top_p;
  sp.min_p = s.min_p;
  sp.repetition_penalty = s.repeat_penalty;
  if (d.do_sample.value_or(false)) {
    if (!c->count("--temperature") && d.temperature) sp.temperature = float(*d.temperature);
    if (!c->count("--top-k") && d.top_k) sp.top_k = *d.top_k;
    if (!c->count("--top-p") && d.top_p) sp.top_p = float(*d.top_p);
    if (!c->count("--min-p") && d.min_p) sp.min_p = float(*d.min_p);
  }
  if (!c->count("--repeat-penalty") && d.repetition_penalty) sp.repetition_penalty = float(*d.repetition_penalty);
  sp.repeat_last_n = s.repeat_last_n;
  sp.seed = s.seed;
  return sp;
}

std::string read_prompt(const std::string& prompt, const std::string& file) {
  if (!file.empty()) {
    if (!prompt.empty()) fail("give either -p/--prompt or -f/--file, not both");
    return read_text_file(file);
  }
  return prompt;
}

}  // namespace gptq::cli
