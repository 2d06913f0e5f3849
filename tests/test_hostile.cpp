// Hostile inputs (issue 7): each case once crashed, hung, blew up memory or gave a silent wrong
// answer. Every one must now end in one clear gptq::Error (or exit 2 with one line from the CLI).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/checked.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/thread_pool.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/model_config.h"
#include "gptq/safetensors.h"
#include "gptq/tokenizer.h"
#include "shared_paths.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GPTQ_TEST_HAS_ASAN 1
#endif
#endif
#ifndef GPTQ_TEST_HAS_ASAN
#define GPTQ_TEST_HAS_ASAN 0
#endif

namespace {

namespace fs = std::filesystem;
using gptq::Error;
using gptq_test::expect_cli_error;
using gptq_test::run_cli;
using nlohmann::json;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::path(testing::TempDir()) / ("gptq_hostile_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// The error of f(), or "" when it does not throw gptq::Error.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(expr, needle)                                 \
  do {                                                                 \
    const std::string msg_ = error_of([&] { (void)(expr); });          \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "error: " << msg_; \
  } while (0)

const char* const kModel = "models/babyllama-105";

// A copy of babyllama-105 (config, tokenizer, weights) to damage.
std::string model_copy(const std::string& tag) {
  const std::string src = shared_path(kModel);
  const std::string dst = temp_dir(tag);
  for (const auto& e : fs::directory_iterator(src)) fs::copy(e.path(), fs::path(dst) / e.path().filename());
  return dst;
}

json read_json(const std::string& path) { return json::parse(gptq::read_text_file(path)); }

// ---- JSON ------------------------------------------------------------------------------------

TEST(HostileJson, DeepNestingIsRefusedEverywhere) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_ERROR_HAS(gptq::parse_json(deep, "x.json"), "x.json: JSON nested deeper than 128 levels");
  EXPECT_ERROR_HAS(gptq::ModelConfig::from_json_text(deep, "config.json"), "nested deeper");
  // Brackets inside strings do not count; 128 levels are fine.
  EXPECT_NO_THROW(gptq::parse_json("{\"a\": \"" + std::string(1000, '[') + "\"}", "s"));
  EXPECT_NO_THROW(gptq::parse_json(std::string(128, '[') + std::string(128, ']'), "s"));
  EXPECT_ERROR_HAS(gptq::parse_json(std::string(129, '[') + std::string(129, ']'), "s"), "nested deeper");
}

TEST(HostileJson, FieldReadersRefuseWhatWouldBeConverted) {
  const json j = json::parse(R"({"a": 4.7, "b": 1099511627776, "c": 4.0, "d": "x", "e": -1})");
  EXPECT_ERROR_HAS(gptq::json_int(j, "a", "q.json", 0, 64), "q.json: field \"a\" must be an integer, got 4.7");
  EXPECT_ERROR_HAS(gptq::json_int(j, "b", "q.json", 0, 1 << 20), "must be in [0, 1048576], got 1099511627776");
  EXPECT_EQ(gptq::json_int(j, "c", "q.json", 0, 64), 4);
  EXPECT_ERROR_HAS(gptq::json_int(j, "d", "q.json", 0, 64), "must be an integer, got string");
  EXPECT_ERROR_HAS(gptq::json_number(j, "e", "q.json", 0, 1), "must be in [0, 1], got -1");
  EXPECT_FALSE(gptq::json_int(j, "missing", "q.json", 0, 1));
}

// ---- config.json, quantize_config.json, generation_config.json --------------------------------

json base_config() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})");
}

std::string config_error(const json& patch) {
  json c = base_config();
  c.merge_patch(patch);
  return error_of([&] { gptq::ModelConfig::from_json_text(c.dump(), "config.json"); });
}

TEST(HostileConfig, ValuesThatGaveNanOrGarbageAreRefused) {
  EXPECT_EQ(config_error(json::object()), "");
  const struct {
    const char* patch;
    const char* needle;
  } cases[] = {
      {R"({"rope_theta": 0})", "field \"rope_theta\" must be > 0"},
      {R"({"rope_theta": -10000})", "field \"rope_theta\" must be > 0"},
      {R"({"rope_parameters": {"rope_theta": 0}})", "field \"rope_theta\" must be > 0"},
      {R"({"rms_norm_eps": -1e-6})", "field \"rms_norm_eps\" must be > 0"},
      {R"({"rms_norm_eps": 0})", "field \"rms_norm_eps\" must be > 0"},
      {R"({"rope_scaling": {"type": "linear", "factor": 0}})", "field \"factor\" must be > 0"},
      {R"({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4}})",
       "high_freq_factor (4) > low_freq_factor (4)"},
      {R"({"num_hidden_layers": 1000000000000})", "field \"num_hidden_layers\" must be in [1, 4096]"},
      {R"({"hidden_size": 64.5})", "field \"hidden_size\" must be an integer"},
      {R"({"vocab_size": 1e12})", "field \"vocab_size\" must be in"},
      {R"({"max_position_embeddings": 0})", "field \"max_position_embeddings\" must be in"},
      {R"({"bos_token_id": 8589934593})", "field \"bos_token_id\" must be in [0, 99]"},
      {R"({"eos_token_id": [2, -1]})", "field \"eos_token_id\" must be in [0, 99]"},
      {R"({"tie_word_embeddings": "yes"})", "field \"tie_word_embeddings\" must be true or false"},
      {R"({"quantization_config": {"quant_method": "gptq", "bits": 4.7}})", "field \"bits\" must be an integer"},
      {R"({"quantization_config": {"quant_method": "gptq", "bits": 5}})", "field \"bits\" must be 2, 3, 4 or 8"},
      {R"({"quantization_config": {"quant_method": "gptq", "group_size": 1099511627776}})",
       "field \"group_size\" must be in [-1, 1048576]"},
      {R"({"quantization_config": {"quant_method": "gptq", "group_size": 0}})", "config.json: field \"group_size\""},
      {R"({"quantization_config": {"quant_method": "gptq", "checkpoint_format": "marlin"}})",
       "unsupported checkpoint_format"},
      {R"({"quantization_config": [1]})", "\"quantization_config\" must be an object"},
  };
  for (const auto& c : cases) {
    const std::string msg = config_error(json::parse(c.patch));
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.patch << " -> " << msg;
    EXPECT_EQ(msg.rfind("config.json: ", 0), 0u) << msg;
  }
}

TEST(HostileConfig, GenerationConfigGetsTheSamplerRanges) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string dir = model_copy("genconfig");
  for (const char* g : {R"({"repetition_penalty": 0})", R"({"repetition_penalty": -1})", R"({"top_p": 0})",
                        R"({"top_p": 7})", R"({"temperature": -1})", R"({"top_k": 2.5})", R"({"min_p": 2})"}) {
    write(dir + "/generation_config.json", g);
    const std::string msg = error_of([&] { gptq::ModelConfig::from_dir(dir); });
    EXPECT_NE(msg.find("generation_config.json: field"), std::string::npos) << g << " -> " << msg;
  }
}

// ---- files that are not regular files ----------------------------------------------------------

TEST(HostileFiles, FifosAndFoldersAreRefusedWithoutBlocking) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"}) {
    const std::string dir = model_copy(std::string("fifo_") + name);
    fs::remove(dir + "/" + name);
    ASSERT_EQ(::mkfifo((dir + "/" + name).c_str(), 0644), 0);
    const std::string msg = error_of([&] {
      if (std::string(name).rfind("tokenizer", 0) == 0) gptq::Tokenizer::from_model_dir(dir);
      else gptq::ModelConfig::from_dir(dir);
    });
    EXPECT_NE(msg.find(std::string(name) + ": not a regular file"), std::string::npos) << name << " -> " << msg;
  }
  // A shard named in the index that is a FIFO.
  const std::string dir = model_copy("fifo_shard");
  fs::rename(dir + "/model.safetensors", dir + "/real.safetensors");
  ASSERT_EQ(::mkfifo((dir + "/model-00001-of-00001.safetensors").c_str(), 0644), 0);
  write(dir + "/model.safetensors.index.json",
        R"({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}})");
  EXPECT_ERROR_HAS(gptq::TensorStore::open_dir(dir), "model-00001-of-00001.safetensors: not a regular file");
  EXPECT_ERROR_HAS(gptq::read_text_file(dir), "is a directory");
}

TEST(HostileFiles, PromptFileThatIsAFolderIsAnError) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  expect_cli_error(run_cli({"generate", "-m", shared_path(kModel), "-f", testing::TempDir(), "-n", "1"}),
                   {"is a directory"});
}

// ---- safetensors ------------------------------------------------------------------------------

std::string safetensors_with_header(const std::string& header, size_t data_bytes) {
  std::string h = header;
  uint64_t n = h.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + h + std::string(data_bytes, '\0');
}

TEST(HostileSafetensors, ElementCountTimesDtypeSizeMustNotWrap) {
  const std::string dir = temp_dir("wrap");
  // 2^62 F32 elements = 2^64 bytes, which wraps to 0 = the span of data_offsets [0, 0].
  write(dir + "/w.safetensors",
        safetensors_with_header(R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0));
  EXPECT_ERROR_HAS(gptq::SafetensorsFile(dir + "/w.safetensors"), "shape: 4611686018427387904 x 4 overflows");
  write(dir + "/d.safetensors",
        safetensors_with_header(R"({"w": {"dtype": "F32", "shape": [65536, 65536, 65536, 65536], "data_offsets": [0, 0]}})", 0));
  EXPECT_ERROR_HAS(gptq::SafetensorsFile(dir + "/d.safetensors"), "overflows");
  write(dir + "/deep.safetensors", safetensors_with_header(std::string(100000, '[') + std::string(100000, ']'), 0));
  EXPECT_ERROR_HAS(gptq::SafetensorsFile(dir + "/deep.safetensors"), "nested deeper");
}

// ---- tokenizer.json ---------------------------------------------------------------------------

TEST(HostileTokenizer, HugeTokenIdsAreRefusedBeforeAllocating) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string dir = model_copy("bigid");
  const json orig = read_json(dir + "/tokenizer.json");
  json t = orig;
  t["model"]["vocab"]["zzz"] = 300000000;
  write(dir + "/tokenizer.json", t.dump());
  EXPECT_ERROR_HAS(gptq::Tokenizer::from_model_dir(dir), "vocab id 300000000 is far beyond");
  t = orig;
  t["added_tokens"].push_back({{"id", 300000000}, {"content", "<big>"}, {"special", true}});
  write(dir + "/tokenizer.json", t.dump());
  EXPECT_ERROR_HAS(gptq::Tokenizer::from_model_dir(dir), "far beyond the vocabulary");
  t = orig;
  t["added_tokens"].push_back({{"id", 4294967297LL}, {"content", "<wrap>"}, {"special", true}});  // wraps to 1
  write(dir + "/tokenizer.json", t.dump());
  EXPECT_ERROR_HAS(gptq::Tokenizer::from_model_dir(dir), "added token id must be in [0, 2147483647]");
  std::string text = orig.dump();
  text.pop_back();
  write(dir + "/tokenizer.json", text + ", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  EXPECT_ERROR_HAS(gptq::Tokenizer::from_model_dir(dir), "tokenizer.json: JSON nested deeper than 128 levels");
}

// ---- GPTQ checkpoints -------------------------------------------------------------------------

TEST(HostileCheckpoint, NanOrInfScaleIsRefusedAtLoad) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string dir = temp_dir("nan_scale");
  const std::string out = dir + "/rtn";
  ASSERT_EQ(run_cli({"quantize", "-m", shared_path(kModel), "-o", out, "--method", "rtn", "-q"}).rc, 0);
  std::string bytes = gptq::read_text_file(out + "/model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  const std::string name = "model.layers.1.self_attn.q_proj.scales";
  const size_t off = 8 + n + h[name]["data_offsets"][0].get<size_t>() + 2 * 3;  // scales[0, 3]
  for (uint16_t bad : {uint16_t(0x7e00), uint16_t(0x7c00), uint16_t(0xfc00)}) {
    std::memcpy(bytes.data() + off, &bad, 2);
    write(out + "/model.safetensors", bytes);
    EXPECT_ERROR_HAS(gptq::Model::load(out), "self_attn.q_proj: scales[0, 3] =");
  }
}

// Activations that overflow (a norm weight of 3e38 in layer 1): the Hessian of that layer's q, k, v
// is not finite, every damping retry fails, and quantize stops naming the stage's linears, writing
// nothing (no -o, no temporary folder beside it).
TEST(HostileCheckpoint, AHessianThatStaysIndefiniteStopsQuantizeNamingTheStage) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string dir = model_copy("overflow_norm");
  std::string bytes = gptq::read_text_file(dir + "/model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  const auto& t = h["model.layers.1.input_layernorm.weight"];
  ASSERT_EQ(t["dtype"], "F32");
  const size_t o0 = 8 + n + t["data_offsets"][0].get<size_t>(), o1 = 8 + n + t["data_offsets"][1].get<size_t>();
  const float big = 3e38f;
  for (size_t o = o0; o < o1; o += 4) std::memcpy(bytes.data() + o, &big, 4);
  write(dir + "/model.safetensors", bytes);
  const std::string out = temp_dir("overflow_norm_out") + "/q";
  expect_cli_error(run_cli({"quantize", "-m", dir, "-o", out, "--calibration",
                            shared_path("data/tinystories-sample/tiny.utf8"), "--nsamples", "4", "--seqlen", "64", "-q"}),
                   {"model.layers.1.self_attn.k_proj, v_proj, q_proj: ", "not positive definite"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(fs::is_empty(fs::path(out).parent_path()));
}

// ---- command-line options ---------------------------------------------------------------------

TEST(HostileCli, OptionArithmeticAndRangesGiveOneShortLine) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string m = shared_path(kModel), calib = shared_path("data/tinystories-sample/tiny.utf8");
  const std::string out = temp_dir("cli") + "/out";
  expect_cli_error(run_cli({"quantize", "-m", m, "-o", out, "--calibration", calib, "--nsamples",
                            "4611686018427387904", "--seqlen", "64"}),
                   {"--seqlen", "overflows"});
  expect_cli_error(run_cli({"quantize", "-m", m, "-o", out, "--calibration", calib, "--nsamples", "2",
                            "--calib-offset", "9223372036854775807"}),
                   {"--calib-offset + --nsamples", "overflows"});
  for (const char* s : {"0.5", "0", "nan", "inf", "-3GB"})
    expect_cli_error(run_cli({"quantize", "-m", m, "-o", out, "--method", "rtn", "--max-shard-size", s}), {"size"});
  EXPECT_FALSE(fs::exists(out));
  expect_cli_error(run_cli({"bench", "-m", m, "-p", "2147483647", "-n", "0"}), {"-p 2147483647", "context"});
  // CLI11's own checks printed the bound 1.79e308 with all of its 309 digits.
  for (const auto& args : std::vector<std::vector<std::string>>{{"bench", "-m", m, "-r", "-1.79e308"},
                                                                {"bench", "-m", m, "-t", "-1"},
                                                                {"generate", "-m", m, "--top-k", "2.5"},
                                                                {"generate", "-m", m, "--temp", "1e400"}}) {
    const auto r = run_cli(args);
    expect_cli_error(r, {"must be"});
    EXPECT_LT(r.err.size(), 160u) << r.err;
  }
}

TEST(HostileCli, ThreadCountsAboveTheCpusAreCappedWithANote) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const auto r = run_cli({"generate", "-m", shared_path(kModel), "-p", "Once", "-n", "2", "-t", "5000", "--json"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("note: -t 5000 is more than the"), std::string::npos) << r.err;
  EXPECT_EQ(json::parse(r.out)["threads"].get<int>(), gptq::hardware_threads());
}

// ---- memory ------------------------------------------------------------------------------------

TEST(HostileMemory, RequestsBeyondAvailableMemoryAreRefusedWithTheNumbers) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string m = shared_path(kModel);
  expect_cli_error(run_cli({"bench", "-m", m, "-p", "0", "-n", "4", "-b", "100000000", "--no-bandwidth"}),
                   {"a forward pass over 800000000 tokens", "GiB of memory, but only"});
  // GPTQ_MEMORY_LIMIT lowers what counts as available: the KV cache and the activations of a
  // 200-token prompt need more than 1 MiB.
  expect_cli_error(run_cli({"bench", "-m", m, "-p", "200", "-n", "0", "-r", "1", "--no-bandwidth"},
                           {"GPTQ_MEMORY_LIMIT=1MiB"}),
                   {"needs", "of memory, but only 1.0 MiB is available"});
  const std::string calib = shared_path("data/tinystories-sample/tiny.utf8");
  const std::string out = temp_dir("mem") + "/q";
  expect_cli_error(run_cli({"quantize", "-m", m, "-o", out, "--calibration", calib, "--nsamples", "8", "--seqlen",
                            "128", "-q"},
                           {"GPTQ_MEMORY_LIMIT=64KiB"}),
                   {"of memory, but only"});
  EXPECT_FALSE(fs::exists(out));
}

// ---- thread pools --------------------------------------------------------------------------------

// Thread creation that fails part-way (here: an address-space limit leaves room for a few thread
// stacks) ends in gptq::Error, with the started threads joined, not in a hang while unwinding.
TEST(HostileThreads, FailedThreadStartUnwinds) {
#if defined(__SANITIZE_ADDRESS__) || GPTQ_TEST_HAS_ASAN
  GTEST_SKIP() << "address-space limits do not mix with AddressSanitizer's shadow memory";
#else
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::alarm(20);  // a hang ends the child with SIGALRM
    rlimit rl{};
    ::getrlimit(RLIMIT_AS, &rl);
    // Room for the process as it is plus ~3 default 8 MiB stacks.
    std::ifstream st("/proc/self/statm");
    uint64_t pages = 0;
    st >> pages;
    rl.rlim_cur = pages * uint64_t(::sysconf(_SC_PAGESIZE)) + (uint64_t(28) << 20);
    ::setrlimit(RLIMIT_AS, &rl);
    int code = 3;
    try {
      gptq::ThreadPool pool(4 * gptq::hardware_threads() > 8 ? 4 * gptq::hardware_threads() : 8);
      code = 1;  // every thread started: the limit did not bite
    } catch (const Error& e) {
      code = std::strstr(e.what(), "cannot start") ? 0 : 2;
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  if (WEXITSTATUS(status) == 1) GTEST_SKIP() << "thread stacks fit under the limit on this machine";
  EXPECT_EQ(WEXITSTATUS(status), 0);
#endif
}

}  // namespace

namespace {

// A pre-tokenizer pattern that backtracks exponentially: PCRE2's match limit stops it, and the
// error names the tokenizer file and the pattern.
TEST(HostileTokenizer, CatastrophicRegexEndsInANamedError) {
  const std::string src = shared_path("models/bytebpe-gpt2-style");
  if (src.empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string dir = temp_dir("redos");
  json t = read_json(src + "/tokenizer.json");
  t["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", "(a|aa)+$"}}}, {"behavior", "Isolated"},
                           {"invert", false}},
                          t["pre_tokenizer"]}}};
  write(dir + "/tokenizer.json", t.dump());
  const gptq::Tokenizer tok = gptq::Tokenizer::from_model_dir(dir);
  const std::string msg = error_of([&] { tok.encode(std::string(5000, 'a') + "b", false); });
  EXPECT_NE(msg.find(dir + "/tokenizer.json: pre-tokenizer regex /(a|aa)+$/ gave up"), std::string::npos) << msg;
  EXPECT_NO_THROW(tok.encode("aaab", false));
}

}  // namespace

namespace {

TEST(HostileMemory, LoadingMoreQuantizedWeightsThanMemoryIsRefused) {
  if (shared_dir().empty()) GTEST_SKIP() << "../shared not found: skipped";
  const std::string out = temp_dir("load_mem") + "/rtn";
  ASSERT_EQ(run_cli({"quantize", "-m", shared_path(kModel), "-o", out, "--method", "rtn", "-q"}).rc, 0);
  expect_cli_error(run_cli({"generate", "-m", out, "-p", "Once", "-n", "1"}, {"GPTQ_MEMORY_LIMIT=100KiB"}),
                   {"loading the quantized weights of", "of memory, but only 100.0 KiB is available"});
  EXPECT_EQ(run_cli({"generate", "-m", out, "-p", "Once", "-n", "1"}).rc, 0);
}

}  // namespace
