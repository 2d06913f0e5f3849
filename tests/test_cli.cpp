// The gptq command line, run as a separate process: outputs, JSON fields, and bad input giving one
// line on stderr and exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli_runner.h"
#include "core/fs.h"
#include "gptq/model.h"
#include "gptq/perplexity.h"
#include "gptq/tokenizer.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using gptq_test::expect_cli_error;
using gptq_test::run_cli;
using nlohmann::json;

namespace {


TEST(Cli, GenerateJsonHasTheDocumentedFields) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  const auto r = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "12", "--temperature", "0", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  for (const char* k : {"prompt_ids", "new_ids", "text", "prefill_tokens_per_s", "decode_tokens_per_s",
                        "load_seconds", "memory_bytes"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["prompt_ids"], json::parse("[1, 9038, 2501, 263, 931]"));
  // greedy continuation of the reference implementation (golden greedy.json, first case)
  EXPECT_EQ(j["new_ids"], json::parse("[29892, 278, 2030, 767, 471, 297, 278, 4760, 310, 5622, 278, 13]"));
  // The process maps the weights (41 MiB of files): peak memory covers them, and not 4 times over
  // (plus what loading cuBLAS and the CUDA runtime keeps resident in a CUDA build, ~60 MiB).
  const double mem = j["memory_bytes"].get<double>(), files = 43466456;
  const double cuda_libs = gptq::built_with_cuda() ? 96.0 * 1048576 : 0.0;
  EXPECT_GE(mem, 0.9 * files);
  EXPECT_LT(mem, 4 * files + cuda_libs);
}

// --kv-cache: auto is fp32 on the CPU (the same tokens as f32), f16 runs, anything else is refused.
TEST(Cli, KvCacheOption) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  auto gen = [&](const std::string& kv) {
    return run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "8", "--temperature", "0", "--json", "--device",
                    "cpu", "--kv-cache", kv});
  };
  const auto a = gen("auto"), f32 = gen("f32"), f16 = gen("f16");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(f32.rc, 0) << f32.err;
  ASSERT_EQ(f16.rc, 0) << f16.err;
  EXPECT_EQ(json::parse(a.out)["new_ids"], json::parse(f32.out)["new_ids"]);
  EXPECT_EQ(json::parse(f16.out)["new_ids"].size(), 8u);
  expect_cli_error(gen("f8"), {"--kv-cache", "f8"});
}

TEST(Cli, GenerateStreamsTextAndSeedsAreReproducible) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  const auto a = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "7"});
  const auto b = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "7"});
  const auto c = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "8", "--temperature", "1.5"});
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  // The 30 sampled tokens decode to the text printed after the prompt (streamed in pieces).
  const auto t = run_cli({"generate", "-m", m, "-p", "Once upon a time", "-n", "30", "--seed", "7", "--json"});
  ASSERT_EQ(t.rc, 0) << t.err;
  const json tj = json::parse(t.out);
  EXPECT_EQ(tj["new_ids"].size(), 30u);
  EXPECT_NE(a.out.find(tj["text"].get<std::string>()), std::string::npos) << a.out;
  EXPECT_NE(a.err.find("tok/s"), std::string::npos);
}

TEST(Cli, StopStringEndsGenerationAndIsNotPrinted) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
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

TEST(Cli, GenerateSeveralPrompts) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
  const std::vector<std::string> base = {"generate", "-m", m, "-n", "12", "--temperature", "0"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  auto r = with({"-p", "Once upon a time", "-p", "The sea", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["results"].size(), 2u);
  // the first prompt gives the reference implementation's greedy continuation, as alone
  EXPECT_EQ(j["results"][0]["new_ids"], json::parse("[29892, 278, 2030, 767, 471, 297, 278, 4760, 310, 5622, 278, 13]"));
  const auto alone = run_cli({"generate", "-m", m, "-n", "12", "--temperature", "0", "-p", "The sea", "--json"});
  ASSERT_EQ(alone.rc, 0) << alone.err;
  EXPECT_EQ(j["results"][1]["new_ids"], json::parse(alone.out)["new_ids"]);
  EXPECT_EQ(j["results"][1]["text"], json::parse(alone.out)["text"]);
  for (const char* k : {"prompt_ids", "new_ids", "text", "stop_reason", "prefill_tokens_per_s", "decode_tokens_per_s"})
    EXPECT_TRUE(j["results"][0].contains(k)) << k;
  // 12 new tokens each: the first from the prefill, 11 from decode forwards over both sequences
  EXPECT_EQ(j["decode_tokens"], 22);
  EXPECT_EQ(j["decode_steps"], 11);
  EXPECT_NEAR(j["decode_tokens_per_s"].get<double>(),
              j["decode_tokens"].get<double>() / j["decode_seconds"].get<double>(),
              1e-9 * j["decode_tokens_per_s"].get<double>());

  // --prompts FILE: one prompt per line, the same results; the text output labels each in order
  const std::string f = testing::TempDir() + "/gptq_cli_prompts.txt";
  std::ofstream(f) << "Once upon a time\nThe sea\n";
  r = with({"--prompts", f, "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["results"][1]["new_ids"], j["results"][1]["new_ids"]);
  r = with({"--prompts", f});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string t0 = j["results"][0]["text"], t1 = j["results"][1]["text"];
  const size_t a = r.out.find("--- 1/2"), b = r.out.find(t0), c = r.out.find("--- 2/2"), d = r.out.find(t1, c);
  EXPECT_TRUE(a < b && b < c && c < d && d != std::string::npos) << r.out;

  std::ofstream(f) << "Once upon a time\n\nThe sea\n";
  expect_cli_error(with({"--prompts", f}), {f, "line 2", "empty"});
  expect_cli_error(with({"--prompts", f, "-p", "hi"}), {"one way"});
}

TEST(Cli, TokenizeAndInspect) {
  SHARED_MODEL_OR_SKIP(m, "llama-gutenberg-22m");
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
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  const std::string f = shared_path("data/tinystories-sample/tiny.utf8");
  const auto r = run_cli({"perplexity", "-m", m, "-f", f, "--ctx", "256", "--windows", "128:132", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["windows"], 4);
  EXPECT_EQ(j["ctx"], 256);
  // The same windows through the library, and the token count of the file tokenized once.
  auto model = gptq::Model::load(m);
  const auto ids = gptq::Tokenizer::from_model_dir(m).encode(gptq::read_text_file(f));
  EXPECT_EQ(j["tokens"].get<int64_t>(), int64_t(ids.size()));
  gptq::PerplexityOptions po;
  po.ctx = 256;
  po.window_begin = 128;
  po.window_end = 132;
  po.progress = false;
  EXPECT_NEAR(j["ppl"].get<double>(), gptq::perplexity(*model, ids, po).ppl, 1e-9 * j["ppl"].get<double>());
  EXPECT_EQ(j["sha256"].get<std::string>().size(), 64u);
}

TEST(Cli, BenchTableAndJson) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-105");
  auto r = run_cli({"bench", "-m", m, "-p", "32", "-n", "8", "-r", "2", "--no-bandwidth"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| pp32 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg8 |"), std::string::npos) << r.out;
  r = run_cli({"bench", "-m", m, "-p", "32", "-n", "8", "-r", "2", "--no-bandwidth", "--json"});
  const json j = json::parse(r.out);
  EXPECT_EQ(j["prefill"]["samples"].size(), 2u);
  EXPECT_EQ(j["decode"]["samples"].size(), 2u);
  // The mean is the mean of the samples it reports.
  const double s0 = j["decode"]["samples"][0].get<double>(), s1 = j["decode"]["samples"][1].get<double>();
  EXPECT_NEAR(j["decode"]["tokens_per_s"].get<double>(), (s0 + s1) / 2, 1e-9 * (s0 + s1));
}

TEST(Cli, BenchBatchedDecode) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-105");
  auto r = run_cli({"bench", "-m", m, "-p", "16", "-n", "8", "-r", "2", "-b", "1,4", "--no-bandwidth", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["decode_batches"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const json& d = j["decode_batches"][i];
    const int B = i == 0 ? 1 : 4;
    EXPECT_EQ(d["batch"], B);
    EXPECT_EQ(d["n_gen"], 8);
    EXPECT_EQ(d["tokens"], B * 8);  // tokens actually decoded in a repeat
    ASSERT_EQ(d["seconds"].size(), 2u);
    ASSERT_EQ(d["samples"].size(), 2u);
    double mean = 0;
    for (size_t k = 0; k < 2; ++k) {
      const double s = d["seconds"][k], tps = d["samples"][k];
      EXPECT_TRUE(std::isfinite(s) && s > 0) << s;
      EXPECT_NEAR(tps, B * 8 / s, 1e-9 * tps);
      mean += tps / 2;
    }
    EXPECT_NEAR(d["tokens_per_s"].get<double>(), mean, 1e-9 * mean);
    const double s0 = d["samples"][0], s1 = d["samples"][1];
    EXPECT_NEAR(d["sd"].get<double>(), std::abs(s0 - s1) / std::sqrt(2.0), 1e-9 * mean);
  }
  // batch size 1 is also today's decode test
  EXPECT_EQ(j["decode"]["samples"], j["decode_batches"][0]["samples"]);
  r = run_cli({"bench", "-m", m, "-p", "0", "-n", "8", "-r", "1", "-b", "1,4", "--no-bandwidth"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| tg8 @ b1 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg8 @ b4 |"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("| pp"), std::string::npos) << r.out;
}

// Synthetic models need no files: these run everywhere.
TEST(Cli, BenchSyntheticTinyJson) {
  auto r = run_cli({"bench", "--synthetic", "tiny", "-p", "16", "-n", "4", "-r", "2", "-b", "1,4", "--device", "cpu", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["model"], "synthetic:tiny");
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["weights"], "F16");
  EXPECT_EQ(j["file_bytes"], 0);
  EXPECT_GT(j["weight_bytes"].get<double>(), 0);
  EXPECT_GT(j["memory_after_load_bytes"].get<double>(), 0);
  EXPECT_GT(j["parameters"].get<double>(), 0);
  const double bw = j["copy_bandwidth_bytes_per_s"], bpt = j["bytes_per_token"];
  EXPECT_GT(bw, 0);
  EXPECT_GT(bpt, 0);
  EXPECT_EQ(j["prefill"]["samples"].size(), 2u);
  ASSERT_EQ(j["decode_batches"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const json& d = j["decode_batches"][i];
    const int B = i == 0 ? 1 : 4;
    EXPECT_EQ(d["batch"], B);
    EXPECT_EQ(d["tokens"], B * 4);
    const double tps = d["tokens_per_s"], gbs = d["weight_bytes_per_s"];
    EXPECT_GT(tps, 0);
    // every step reads each weight once: bytes per token x steps per second
    EXPECT_NEAR(gbs, bpt * tps / B, 1e-9 * gbs);
    EXPECT_NEAR(d["fraction_of_roofline"].get<double>(), gbs / bw, 1e-9 * gbs / bw);
  }
  EXPECT_NEAR(j["decode"]["weight_bytes_per_s"].get<double>(), j["decode_batches"][0]["weight_bytes_per_s"].get<double>(),
              1e-9 * j["decode"]["weight_bytes_per_s"].get<double>());
  // GPTQ linears, and the defaults of --synthetic: -n 256 -b 1,4,16,64 (-n kept small here)
  r = run_cli({"bench", "--synthetic", "tiny", "--bits", "4", "--group-size", "32", "-p", "0", "-n", "2", "-r", "1",
               "--no-bandwidth", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["weights"], "F16 + GPTQ 4-bit g32");
  EXPECT_EQ(j["synthetic"]["bits"], 4);
  ASSERT_EQ(j["decode_batches"].size(), 4u);
  EXPECT_EQ(j["decode_batches"][3]["batch"], 64);
  EXPECT_TRUE(j["decode_batches"][0]["fraction_of_roofline"].is_null());
  EXPECT_FALSE(j.contains("prefill"));
  r = run_cli({"bench", "--synthetic", "tiny", "--dtype", "bf16", "-p", "8", "-r", "1", "-b", "1,4", "--no-bandwidth"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| pp8 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg256 @ b4 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BF16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| GB/s | roofline |"), std::string::npos) << r.out;
}

TEST(Cli, BenchSyntheticBadOptions) {
  expect_cli_error(run_cli({"bench", "--synthetic", "llama9-1t", "-r", "1"}), {"unknown synthetic model", "llama9-1t", "tiny"});
  expect_cli_error(run_cli({"bench", "-m", "/nonexistent/m", "--synthetic", "tiny"}), {"-m", "--synthetic", "not both"});
  expect_cli_error(run_cli({"bench", "-m", "/nonexistent/m", "--bits", "4"}), {"--synthetic"});
  expect_cli_error(run_cli({"bench", "--synthetic", "tiny", "--bits", "5"}), {"--bits"});
  expect_cli_error(run_cli({"bench", "--synthetic", "tiny", "--bits", "4", "--group-size", "0"}), {"group size", "0"});
  expect_cli_error(run_cli({"bench", "--synthetic", "tiny", "--compare", "a", "b"}), {"--compare"});
}

TEST(Cli, DeviceOption) {
  const std::vector<std::string> bench = {"bench", "--synthetic", "tiny", "-p", "4", "-n", "2", "-r", "1", "-b", "1",
                                          "--no-bandwidth", "--json", "--device"};
  auto with = [&](const std::string& device) {
    std::vector<std::string> args = bench;
    args.push_back(device);
    return run_cli(args);
  };
  auto r = with("cpu");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["backend"], "cpu");
  if (!gptq::cuda_usable(0)) {
    // this machine has no GPU, or this build no CUDA: one line saying so
    expect_cli_error(with("cuda"), {"--device cuda:0", gptq::built_with_cuda() ? "" : "built without CUDA"});
    expect_cli_error(with("cuda:1"), {"--device cuda:1"});
    // auto falls back to the CPU (a note only where an NVIDIA driver is loaded but no GPU is usable)
    r = with("auto");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["backend"], "cpu");
    if (!gptq::built_with_cuda()) {
      EXPECT_EQ(r.err, "");
    }
  }
  expect_cli_error(with("tpu"), {"--device \"tpu\"", "auto, cpu, cuda or cuda:N"});
  expect_cli_error(with("cuda:x"), {"cuda:x", "GPU index"});
  expect_cli_error(with("cuda:-1"), {"cuda:-1", "GPU index"});
  expect_cli_error(with("cuda:"), {"GPU index"});
  // every command that runs a model has it
  expect_cli_error(run_cli({"generate", "-m", "/nonexistent/m", "-p", "hi", "--device", "tpu"}), {"tpu"});
  expect_cli_error(run_cli({"perplexity", "-m", "/nonexistent/m", "-f", "/nonexistent.txt", "--device", "tpu"}), {"tpu"});
  expect_cli_error(run_cli({"quantize", "-m", "/nonexistent/m", "-o", "/nonexistent/o", "--method", "rtn", "--device", "tpu"}),
                   {"tpu"});
}

TEST(Cli, DeviceCpuRunsARealModel) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-105");
  auto r = run_cli({"generate", "-m", m, "-p", "Once", "-n", "4", "--temperature", "0", "--device", "cpu", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["new_ids"].size(), 4u);
  r = run_cli({"perplexity", "-m", m, "-f", shared_path("data/tinystories-sample/tiny.utf8"), "--windows", "0:1",
               "--device", "cpu", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(std::isfinite(json::parse(r.out)["ppl"].get<double>()));
}

TEST(Cli, PerplexityBatchAndKlDivergence) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
  SHARED_MODEL_OR_SKIP(other, "llama-gutenberg-22m");
  const std::string f = shared_path("data/tinystories-sample/tiny.utf8");
  const std::string q = testing::TempDir() + "/gptq_cli_rtn361";
  fs::remove_all(q);
  auto r = run_cli({"quantize", "-m", m, "-o", q, "--method", "rtn", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<std::string> ppl = {"perplexity", "-f", f, "--ctx", "256", "--windows", "128:131", "--json"};
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = ppl;
    args.insert(args.end(), extra.begin(), extra.end());
    const auto res = run_cli(args);
    EXPECT_EQ(res.rc, 0) << res.err;
    return res.rc == 0 ? json::parse(res.out) : json();
  };
  const json orig = run({"-m", m, "--batch", "1"}), quant = run({"-m", q, "--batch", "2"});
  const json kl = run({"-m", q, "--kl-divergence", m});
  ASSERT_TRUE(kl.contains("kl_divergence")) << kl.dump();
  EXPECT_EQ(orig["batch"], 1);
  EXPECT_EQ(quant["batch"], 2);
  const json& d = kl["kl_divergence"];
  EXPECT_GT(d["mean"].get<double>(), 0);
  EXPECT_GE(d["p99"].get<double>(), d["mean"].get<double>());
  EXPECT_GT(d["top1_agreement"].get<double>(), 0.5);
  EXPECT_LT(d["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(d["tokens"], 3 * 255);
  // both perplexities, each as the model alone gives it
  EXPECT_NEAR(kl["ppl"].get<double>(), quant["ppl"].get<double>(), 1e-6 * quant["ppl"].get<double>());
  EXPECT_NEAR(d["base_ppl"].get<double>(), orig["ppl"].get<double>(), 1e-6 * orig["ppl"].get<double>());
  r = run_cli({"perplexity", "-m", q, "-f", f, "--ctx", "256", "--windows", "128:129", "--kl-divergence", m});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("KL divergence vs"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("top-1 agreement"), std::string::npos) << r.out;
  expect_cli_error(run_cli({"perplexity", "-m", m, "-f", f, "--ctx", "256", "--windows", "0:1", "--kl-divergence", other}),
                   {"vocabulary", other});
  fs::remove_all(q);
}

// --synthetic: every phase timed on random weights of an architecture's shapes, nothing written; the
// calibration text read by another model's tokenizer (babyllama-361's 361 ids fit tiny's 512).
TEST(Cli, QuantizeSyntheticTimesEveryPhase) {
  SHARED_MODEL_OR_SKIP(tok, "babyllama-361");
  const std::string f = shared_path("data/tinystories-sample/tiny.utf8");
  auto r = run_cli({"quantize", "--synthetic", "tiny", "--layers", "1", "--tokenizer", tok, "--calibration", f,
                    "--seqlen", "64", "--nsamples", "4", "--device", "cpu", "-q", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["synthetic"]["name"], "tiny");
  EXPECT_EQ(j["output"], "");
  EXPECT_EQ(j["out_bytes"], 0);
  EXPECT_EQ(j["calibration_tokens"], 256);
  ASSERT_EQ(j["modules"].size(), 7u);  // one layer
  EXPECT_EQ(j["modules"][6]["name"], "model.layers.0.mlp.down_proj");
  for (const auto& m : j["modules"]) {
    EXPECT_GT(m["rel_error"].get<double>(), 0) << m;
    EXPECT_LT(m["rel_error"].get<double>(), 0.1) << m;  // 4-bit of uniform weights: a few percent
  }
  EXPECT_GT(j["seconds"]["forward"].get<double>(), 0);
  EXPECT_GT(j["seconds"]["solve"].get<double>(), 0);
  EXPECT_EQ(j["seconds"]["write"], 0);
  EXPECT_GT(j["peak_rss_bytes"].get<double>(), 0);
  r = run_cli({"quantize", "--synthetic", "tiny", "--tokenizer", tok, "--calibration", f, "--seqlen", "64",
               "--nsamples", "2", "--device", "cpu", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("synthetic tiny: nothing written"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.mlp.down_proj"), std::string::npos) << r.out;
  // what cannot work, in one line each
  expect_cli_error(run_cli({"quantize", "--synthetic", "tiny", "--calibration", f}), {"--tokenizer"});
  expect_cli_error(run_cli({"quantize", "--synthetic", "tiny", "-o", "/nonexistent/o", "--tokenizer", tok, "--calibration", f}),
                   {"-o", "--synthetic"});
  expect_cli_error(run_cli({"quantize", "--synthetic", "tiny", "--layers", "3", "--tokenizer", tok, "--calibration", f}),
                   {"2 decoder layers", "3"});
  expect_cli_error(run_cli({"quantize", "--synthetic", "llama9", "--tokenizer", tok, "--calibration", f}),
                   {"unknown synthetic model", "llama9"});
  SHARED_MODEL_OR_SKIP(big_vocab, "llama-gutenberg-22m");  // 32000 ids: outside tiny's vocabulary
  expect_cli_error(run_cli({"quantize", "--synthetic", "tiny", "--tokenizer", big_vocab, "--calibration", f, "--seqlen",
                            "64", "--nsamples", "2"}),
                   {"--tokenizer", "outside", "vocabulary of 512"});
  expect_cli_error(run_cli({"quantize", "-m", tok, "--tokenizer", tok, "-o", "/nonexistent/o", "--calibration", f}),
                   {"--tokenizer", "--synthetic"});
  expect_cli_error(run_cli({"quantize", "--calibration", f}), {"-m", "-o", "--synthetic"});
}

TEST(Cli, QuantizeThenCompare) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-361");
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
  EXPECT_GE(j["models"][1]["memory_bytes"].get<double>(), 0.9 * j["models"][1]["file_bytes"].get<double>());
  // 4-bit GPTQ of this model: within +0 .. +10 % of the original's perplexity on these windows.
  const double ratio = j["models"][1]["ppl"].get<double>() / j["models"][0]["ppl"].get<double>();
  EXPECT_GT(ratio, 0.995);
  EXPECT_LT(ratio, 1.10);
  EXPECT_GT(j["kl_divergence"]["mean"].get<double>(), 0);
  EXPECT_GT(j["kl_divergence"]["p99"].get<double>(), 0);
  EXPECT_GT(j["kl_divergence"]["top1_agreement"].get<double>(), 0.5);
  EXPECT_LE(j["kl_divergence"]["top1_agreement"].get<double>(), 1.0);
  r = run_cli({"bench", "--compare", m, out, "-p", "32", "-n", "8", "-r", "2"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("| size on disk |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| decode t/s (tg8) |"), std::string::npos) << r.out;
  expect_cli_error(run_cli({"bench", "--compare", m, "/nonexistent/q", "-p", "8", "-n", "4", "-r", "1"}),
                   {"/nonexistent/q"});
}

TEST(Cli, BadInputGivesOneLineAndExitCode2) {
  SHARED_MODEL_OR_SKIP(m, "babyllama-105");
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
