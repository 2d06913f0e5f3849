// The gptq command line, run as a separate process: outputs, JSON fields, and bad input giving one
// line on stderr and exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using gptq_test::expect_cli_error;
using gptq_test::run_cli;
using nlohmann::json;

namespace {

std::string model_or_skip(const std::string& name) {
  const std::string p = shared_path("models/" + name);
  return gptq_test::is_dir(p) ? p : std::string();
}

#define NEED_MODEL(var, name)                                                          \
  const std::string var = model_or_skip(name);                                         \
  if (var.empty()) GTEST_SKIP() << "../shared/models/" << name << " not found: skipped"

TEST(Cli, GenerateJsonHasTheDocumentedFields) {
  NEED_MODEL(m, "llama-gutenberg-22m");
  const auto r = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "12", "--temperature", "0", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  for (const char* k : {"prompt_ids", "new_ids", "text", "prefill_tokens_per_s", "decode_tokens_per_s",
                        "load_seconds", "memory_bytes"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["prompt_ids"], json::parse("[1, 9038, 2501, 263, 931]"));
  // greedy continuation of the reference implementation (golden greedy.json, first case)
  EXPECT_EQ(j["new_ids"], json::parse("[29892, 278, 2030, 767, 471, 297, 278, 4760, 310, 5622, 278, 13]"));
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["memory_bytes"].get<double>(), 0);
}

TEST(Cli, GenerateStreamsTextAndSeedsAreReproducible) {
  NEED_MODEL(m, "babyllama-361");
  const auto a = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "7"});
  const auto b = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "7"});
  const auto c = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "8", "--temperature", "1.5"});
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_GT(a.out.size(), 10u);
  EXPECT_NE(a.err.find("tok/s"), std::string::npos);
}

TEST(Cli, StopStringEndsGenerationAndIsNotPrinted) {
  NEED_MODEL(m, "llama-gutenberg-22m");
  const auto full = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "24", "--temperature", "0", "--json"});
  ASSERT_EQ(full.rc, 0);
  const std::string text = json::parse(full.out)["text"];
  // greedy text starts ", the old man was in the habit of..." : stop at " man"
  const auto r = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "24", "--temperature", "0", "--stop",
                          " man", "--json"});
  const json j = json::parse(r.out);
  EXPECT_EQ(j["stop_reason"], "stop");
  EXPECT_EQ(j["text"].get<std::string>(), text.substr(0, text.find(" man")));
}

TEST(Cli, TokenizeAndInspect) {
  NEED_MODEL(m, "llama-gutenberg-22m");
  auto r = run_cli({"tokenize", "-m", m, "-p", "Hello world", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["ids"], json::parse("[1, 15043, 3186]"));
  r = run_cli({"inspect", m, "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["architecture"], "LlamaForCausalLM");
  EXPECT_EQ(j["layers"], 6);
  EXPECT_EQ(j["kv_heads"], 2);
  EXPECT_EQ(j["tokenizer"], "sentencepiece-bpe");
  EXPECT_NEAR(j["parameters"].get<double>(), 21.73e6, 0.01e6);
  EXPECT_TRUE(j["quantization"].is_null());
  r = run_cli({"inspect", m});
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("LlamaForCausalLM"), std::string::npos);
}

TEST(Cli, PerplexityWindowsJson) {
  NEED_MODEL(m, "babyllama-361");
  const std::string f = shared_path("data/tinystories-sample/tiny.utf8");
  const auto r = run_cli({"perplexity", "-m", m, "-f", f, "--ctx", "256", "--windows", "128:132", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["windows"], 4);
  EXPECT_EQ(j["ctx"], 256);
  EXPECT_GT(j["tokens"].get<int64_t>(), 132 * 256);
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
  EXPECT_LT(j["ppl"].get<double>(), 10.0);
  EXPECT_EQ(j["sha256"].get<std::string>().size(), 64u);
}

TEST(Cli, BenchTableAndJson) {
  NEED_MODEL(m, "babyllama-105");
  auto r = run_cli({"bench", "-m", m, "-p", "32", "-n", "8", "-r", "2", "--no-bandwidth"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| pp32 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg8 |"), std::string::npos) << r.out;
  r = run_cli({"bench", "-m", m, "-p", "32", "-n", "8", "-r", "2", "--no-bandwidth", "--json"});
  const json j = json::parse(r.out);
  EXPECT_EQ(j["prefill"]["samples"].size(), 2u);
  EXPECT_GT(j["decode"]["tokens_per_s"].get<double>(), 0);
}

TEST(Cli, QuantizeThenCompare) {
  NEED_MODEL(m, "babyllama-361");
  const std::string out = testing::TempDir() + "/gptq_cli_q361";
  fs::remove_all(out);
  auto r = run_cli({"quantize", "-m", m, "-o", out, "--calibration", shared_path("data/tinystories-sample/tiny.utf8"),
                    "--seqlen", "256", "--nsamples", "16", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| model.layers.4.mlp.down_proj | 128x352 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| solver |"), std::string::npos) << r.out;
  r = run_cli({"inspect", out, "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["quantization"]["bits"], 4);
  r = run_cli({"bench", "--compare", m, out, "-p", "32", "-n", "8", "-r", "2", "-f",
               shared_path("data/tinystories-sample/tiny.utf8"), "--ctx", "256", "--windows", "128:130", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["models"].size(), 2u);
  EXPECT_LT(j["models"][1]["file_bytes"].get<double>(), 0.25 * j["models"][0]["file_bytes"].get<double>());
  EXPECT_GT(j["models"][1]["memory_bytes"].get<double>(), 0);
  EXPECT_GT(j["models"][1]["ppl"].get<double>(), j["models"][0]["ppl"].get<double>() * 0.98);
  r = run_cli({"bench", "--compare", m, out, "-p", "32", "-n", "8", "-r", "2"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| size on disk |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| decode t/s (tg8) |"), std::string::npos) << r.out;
  expect_cli_error(run_cli({"bench", "--compare", m, "/nonexistent/q", "-p", "8", "-n", "4", "-r", "1"}),
                   {"/nonexistent/q"});
}

TEST(Cli, BadInputGivesOneLineAndExitCode2) {
  NEED_MODEL(m, "babyllama-105");
  expect_cli_error(run_cli({"generate", "-m", "/nonexistent/model", "-p", "hi"}), {"/nonexistent/model"});
  // babyllama's context is 256 tokens; its tokenizer is character-level
  expect_cli_error(run_cli({"generate", "-m", m, "-p", std::string(400, 'a')}), {"context", "256"});
  expect_cli_error(run_cli({"perplexity", "-m", m, "-f", "/nonexistent.txt"}), {"/nonexistent.txt"});
  expect_cli_error(run_cli({"perplexity", "-m", m, "-f", shared_path("data/tinystories-sample/tiny.utf8"), "--windows", "x"}),
                   {"--windows"});
  const std::string short_text = testing::TempDir() + "/gptq_cli_short.txt";
  std::ofstream(short_text) << "Too short for one window of 256 tokens.";
  expect_cli_error(run_cli({"perplexity", "-m", m, "-f", short_text, "--ctx", "256"}), {"windows"});
  expect_cli_error(run_cli({"generate", "-m", m, "-p", "hi", "--top-p", "3"}), {"top-p"});
  expect_cli_error(run_cli({"frobnicate"}), {"frobnicate"});
  // a model folder without a tokenizer
  const fs::path d = fs::path(testing::TempDir()) / "gptq_cli_notok";
  fs::remove_all(d);
  fs::create_directories(d);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(fs::path(m) / f, d / f);
  expect_cli_error(run_cli({"generate", "-m", d.string(), "-p", "hi"}), {"tokenizer.json"});
}

}  // namespace
