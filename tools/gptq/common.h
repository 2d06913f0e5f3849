// Shared pieces of the gptq subcommands: option groups, error handling, output formatting.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gptq/generate.h"
#include "gptq/model_config.h"

namespace gptq {
class Backend;
}

namespace gptq::cli {

// Each subcommand registers itself on the app and returns the function that runs it.
using Runner = std::function<int()>;
Runner add_generate(CLI::App& app);
Runner add_perplexity(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_inspect(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_quantize(CLI::App& app);
Runner add_merge_lora(CLI::App& app);
Runner add_serve(CLI::App& app);
Runner add_chat(CLI::App& app);

std::string human_bytes(double bytes);   // "41.45 MiB"
std::string human_count(double n);       // "21.73 M"
void print_json(const nlohmann::json& j);  // one object on stdout
std::string model_name(const std::string& dir);  // last path component
// "A:B" -> [A, B); leaves begin/end unchanged when spec is empty.
void parse_windows(const std::string& spec, int64_t* begin, int64_t* end);
// Option checks with readable messages (CLI11's own print their double bounds in full, 309 digits):
// an integer in [lo, hi], a number in [lo, hi].
CLI::Validator int_in(int64_t lo, int64_t hi);
CLI::Validator number_in(double lo, double hi);
// -t N above the CPUs this process may use only thrashes: capped, with a note on stderr.
int cap_threads(int requested);
// --device on the commands that run a model: "auto" (the default), "cpu", "cuda" or "cuda:N".
void add_device_option(CLI::App* c, std::string& device);
// The backend --device names; "auto" is cuda:0 when this build has CUDA and a usable GPU, else the
// CPU (with a note on stderr saying why when the build has CUDA). gptq::Error (one line) for
// anything else than those spellings and for a GPU that cannot be used. threads: the CPU's
// (already capped).
std::shared_ptr<Backend> make_backend(const std::string& device, int threads);
// --kv-cache on the commands that run a model: "auto" (the default: fp16 on a GPU, fp32 on the
// CPU), "f16" or "f32"; kv_cache_fp16 gives it as LoadOptions::kv_fp16.
void add_kv_cache_option(CLI::App* c, std::string& kv);
std::optional<bool> kv_cache_fp16(const std::string& kv);
// The weight options of --synthetic on bench and serve: --dtype f16|bf16|f32, --bits 2|3|4|8,
// --group-size; synthetic_dtype reads --dtype.
void add_synthetic_weight_options(CLI::App* c, std::string& dtype, int& bits, int& group_size);
DType synthetic_dtype(const std::string& dtype);
// The sampling options of generate and chat (--temperature, --top-k, --top-p, --min-p,
// --repeat-penalty, --repeat-last-n, --seed), llama.cpp's defaults.
struct SamplingArgs {
  float temperature = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f;
  int top_k = 40, repeat_last_n = 64;
  uint64_t seed = 0;
};
void add_sampling_options(CLI::App* c, SamplingArgs& s);
// The options as SamplingParams; generation_config.json's defaults (d) apply where c did not get
// the flag (its temperature, top-k, top-p and min-p only when it sets do_sample).
SamplingParams sampling_params(const SamplingArgs& s, const CLI::App* c, const GenerationDefaults& d);
std::string read_prompt(const std::string& prompt, const std::string& file);  // -p TEXT or -f FILE

}  // namespace gptq::cli
