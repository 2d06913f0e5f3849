// Batched generation against one prompt at a time, and perplexity / KL divergence with several
// windows per forward call against plain loops over one window's logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "cli_runner.h"
#include "gptq/error.h"
#include "backend/backend.h"
#include "gptq/generate.h"
#include "gptq/perplexity.h"
#include "core/fs.h"
#include "shared_paths.h"

namespace {

using gptq::GenerateOptions;
using gptq::GenerateResult;
using gptq::Model;
using gptq::Tokenizer;

#define NEED_DIR(var, rel)                                 \
  const std::string var = shared_path(rel);                \
  if (!gptq_test::is_dir(var)) GTEST_SKIP() << "../shared/" << rel << " not found: skipped"

const std::vector<std::string> kPrompts = {"Once upon a time", "The old man looked at the sea and said",
                                           "It was"};

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.temperature = 0;
  return o;
}

std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tok, const std::vector<std::string>& prompts) {
  std::vector<std::vector<int32_t>> ids;
  for (const auto& p : prompts) ids.push_back(tok.encode(p));
  return ids;
}

TEST(GenerateBatch, GreedyBatchEqualsEachPromptAlone) {
  NEED_DIR(dir, "models/llama-gutenberg-22m");
  auto model = Model::load(dir);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const auto ids = encode_all(tok, kPrompts);
  const GenerateOptions o = greedy(16);
  const gptq::BatchGenerateResult b = gptq::generate_batch(*model, tok, ids, o);
  ASSERT_EQ(b.results.size(), ids.size());
  int64_t rows = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const GenerateResult alone = gptq::generate(*model, tok, ids[i], o);
    ASSERT_EQ(alone.new_ids.size(), 16u) << "the test wants prompts that run to the length limit";
    EXPECT_EQ(b.results[i].prompt_ids, ids[i]);
    EXPECT_EQ(b.results[i].new_ids, alone.new_ids) << kPrompts[i];
    EXPECT_EQ(b.results[i].text, alone.text) << kPrompts[i];
    EXPECT_EQ(b.results[i].stop_reason, "length");
    EXPECT_EQ(b.results[i].decode_steps, alone.decode_steps);
    rows += b.results[i].decode_steps;
  }
  EXPECT_EQ(b.decode_steps, 15);  // the first new token comes from the prefill
  EXPECT_EQ(b.decode_tokens, rows);
  EXPECT_EQ(b.prompt_tokens, int64_t(ids[0].size() + ids[1].size() + ids[2].size()));
}

TEST(GenerateBatch, SequencesFinishingEarlyLeaveTheOthersUnaffected) {
  NEED_DIR(dir, "models/llama-gutenberg-22m");
  auto model = Model::load(dir);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const auto ids = encode_all(tok, kPrompts);
  GenerateOptions o = greedy(24);
  std::vector<GenerateResult> alone;
  for (const auto& p : ids) alone.push_back(gptq::generate(*model, tok, p, o));
  // A stop string that the second prompt's text reaches early and the others never contain.
  const std::string& t1 = alone[1].text;
  std::string stop;
  size_t at = 0;
  for (size_t p = 4; p + 4 <= t1.size() / 2 && stop.empty(); ++p) {
    const std::string s = t1.substr(p, 4);
    if (t1.find(s) == p && alone[0].text.find(s) == std::string::npos && alone[2].text.find(s) == std::string::npos)
      stop = s, at = p;
  }
  ASSERT_FALSE(stop.empty()) << "no usable stop string in: " << t1;
  o.stop = {stop};
  const gptq::BatchGenerateResult b = gptq::generate_batch(*model, tok, ids, o);
  const GenerateResult& r1 = b.results[1];
  EXPECT_EQ(r1.stop_reason, "stop");
  EXPECT_EQ(r1.text, t1.substr(0, at)) << "stop string \"" << stop << "\"";
  ASSERT_LT(r1.new_ids.size(), alone[1].new_ids.size());
  EXPECT_TRUE(std::equal(r1.new_ids.begin(), r1.new_ids.end(), alone[1].new_ids.begin()));
  EXPECT_EQ(r1.decode_steps, int64_t(r1.new_ids.size()) - 1);  // left the batch when it stopped
  for (size_t i : {size_t(0), size_t(2)}) {
    EXPECT_EQ(b.results[i].new_ids, alone[i].new_ids) << kPrompts[i];
    EXPECT_EQ(b.results[i].text, alone[i].text) << kPrompts[i];
    EXPECT_EQ(b.results[i].stop_reason, "length");
    EXPECT_EQ(b.results[i].decode_steps, 23);
  }
  EXPECT_EQ(b.decode_steps, 23);
  EXPECT_EQ(b.decode_tokens, 23 + 23 + r1.decode_steps);
  // Alone with the same stop string it stops at the same place.
  EXPECT_EQ(gptq::generate(*model, tok, ids[1], o).new_ids, r1.new_ids);
}

TEST(GenerateBatch, SampledSequenceIUsesSeedPlusI) {
  NEED_DIR(dir, "models/babyllama-361");
  // Sampled tokens must agree exactly, so the logits must too: the fast inference kernels agree
  // between a batch and a sequence alone only to ~1e-6 (OpenBLAS blocks by matrix size), which can
  // flip a draw; the fixed-order kernels make every row independent of the batch.
  gptq::LoadOptions lo;
  lo.backend = gptq::make_cpu_backend();
  lo.backend->set_deterministic(true);
  auto model = Model::load(dir, lo);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const auto ids = encode_all(tok, {"Once upon a time", "The cat", "Lily and Tom"});
  GenerateOptions o;
  o.max_new_tokens = 30;
  o.stop_at_eos = false;
  o.sampling.temperature = 1.5f;  // every token a real draw
  o.sampling.top_k = 0;
  o.sampling.top_p = 1.0f;
  o.sampling.min_p = 0.0f;
  o.sampling.seed = 11;
  const gptq::BatchGenerateResult b = gptq::generate_batch(*model, tok, ids, o);
  for (size_t i = 0; i < ids.size(); ++i) {
    GenerateOptions alone = o;
    alone.sampling.seed = o.sampling.seed + i;
    EXPECT_EQ(b.results[i].new_ids, gptq::generate(*model, tok, ids[i], alone).new_ids) << i;
  }
  EXPECT_NE(b.results[0].new_ids, gptq::generate(*model, tok, ids[0], [&] {
              GenerateOptions other = o;
              other.sampling.seed = 12;
              return other;
            }()).new_ids);
}

TEST(GenerateBatch, PromptErrorsNameThePrompt) {
  NEED_DIR(dir, "models/babyllama-105");
  auto model = Model::load(dir);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const std::vector<std::vector<int32_t>> ids = {tok.encode("hi"), tok.encode(std::string(400, 'a'))};
  try {
    gptq::generate_batch(*model, tok, ids, greedy(4));
    FAIL() << "a prompt longer than the context was accepted";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("prompt 2"), std::string::npos) << e.what();
  }
}

// ---- perplexity and KL divergence

const std::string kText = "data/tinystories-sample/tiny.utf8";

std::vector<int32_t> text_ids(const std::string& model_dir) {
  return Tokenizer::from_model_dir(model_dir).encode(gptq::read_text_file(shared_path(kText)));
}

gptq::PerplexityOptions windows(int64_t a, int64_t b, int64_t batch) {
  gptq::PerplexityOptions o;
  o.ctx = 256;
  o.window_begin = a;
  o.window_end = b;
  o.batch = batch;
  o.progress = false;
  return o;
}

TEST(PerplexityBatch, WindowsPerForwardDoNotChangeTheNumbers) {
  NEED_DIR(dir, "models/babyllama-361");
  auto model = Model::load(dir);
  const auto ids = text_ids(dir);
  const auto one = gptq::perplexity(*model, ids, windows(128, 132, 1));
  const auto three = gptq::perplexity(*model, ids, windows(128, 132, 3));  // batches of 3 and 1
  const auto dflt = gptq::perplexity(*model, ids, windows(128, 132, 0));
  EXPECT_EQ(one.batch, 1);
  EXPECT_EQ(three.batch, 3);
  EXPECT_EQ(dflt.batch, 4);  // a small model: every window fits in one forward
  ASSERT_EQ(one.window_nll.size(), 4u);
  for (const auto* r : {&three, &dflt}) {
    ASSERT_EQ(r->window_nll.size(), 4u);
    for (size_t w = 0; w < 4; ++w) EXPECT_NEAR(r->window_nll[w], one.window_nll[w], 1e-6 * one.window_nll[w]) << w;
    EXPECT_NEAR(r->ppl, one.ppl, 1e-6 * one.ppl);
    EXPECT_FALSE(r->has_kl);
  }
  // The windows differ, so a wrong row-to-window mapping would show.
  EXPECT_GT(std::abs(one.window_nll[0] - one.window_nll[1]), 1e-4);
}

TEST(PerplexityBatch, KlOfAModelAgainstItselfIsZero) {
  NEED_DIR(dir, "models/babyllama-361");
  auto model = Model::load(dir), base = Model::load(dir);
  const auto ids = text_ids(dir);
  const auto r = gptq::perplexity(*model, ids, windows(128, 131, 2), base.get());
  ASSERT_TRUE(r.has_kl);
  EXPECT_EQ(r.kl.tokens, 3 * 255);
  EXPECT_NEAR(r.kl.mean, 0, 1e-9);
  EXPECT_NEAR(r.kl.p99, 0, 1e-9);
  EXPECT_EQ(r.kl.top1_agreement, 1.0);
  EXPECT_NEAR(r.kl.base_ppl, r.ppl, 1e-12 * r.ppl);
}

// babyllama-361 quantized with RTN 4-bit by the CLI, once per test process.
std::string rtn_model(const std::string& dir) {
  static const std::string out = [&] {
    const std::string o = testing::TempDir() + "/gptq_batch_rtn361_" + std::to_string(::getpid());
    std::filesystem::remove_all(o);
    const auto r = gptq_test::run_cli({"quantize", "-m", dir, "-o", o, "--method", "rtn", "-q"});
    EXPECT_EQ(r.rc, 0) << r.err;
    return o;
  }();
  return out;
}

// Log-softmax of one row, in double.
std::vector<double> log_softmax(const float* row, int64_t V) {
  double mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, double(row[i]));
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(row[i]) - mx);
  std::vector<double> out(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) out[size_t(i)] = double(row[i]) - mx - std::log(s);
  return out;
}

TEST(PerplexityBatch, KlAgainstAQuantizedModelEqualsPlainLoops) {
  NEED_DIR(dir, "models/babyllama-361");
  const std::string q = rtn_model(dir);
  ASSERT_TRUE(gptq_test::is_dir(q));
  auto base = Model::load(dir), model = Model::load(q);
  const auto ids = text_ids(dir);
  const int64_t w = 128, ctx = 256, V = model->vocab_size();
  const auto r = gptq::perplexity(*model, ids, windows(w, w + 1, 0), base.get());
  ASSERT_TRUE(r.has_kl);

  // Reference: both models' logits of the window, KL(P_base || P_model) per predicted token.
  std::vector<float> lb, lm;
  auto cb = base->new_cache(ctx), cm = model->new_cache(ctx);
  base->forward(*cb, ids.data() + w * ctx, ctx, true, lb);
  model->forward(*cm, ids.data() + w * ctx, ctx, true, lm);
  std::vector<double> kl;
  double nll_base = 0, nll_model = 0;
  int64_t agree = 0;
  for (int64_t t = 0; t + 1 < ctx; ++t) {
    const std::vector<double> p = log_softmax(lb.data() + t * V, V), m = log_softmax(lm.data() + t * V, V);
    double d = 0;
    int64_t ap = 0, am = 0;
    for (int64_t i = 0; i < V; ++i) {
      d += std::exp(p[size_t(i)]) * (p[size_t(i)] - m[size_t(i)]);
      if (p[size_t(i)] > p[size_t(ap)]) ap = i;
      if (m[size_t(i)] > m[size_t(am)]) am = i;
    }
    kl.push_back(d);
    agree += ap == am;
    const int32_t target = ids[size_t(w * ctx + t + 1)];
    nll_base -= p[size_t(target)];
    nll_model -= m[size_t(target)];
  }
  const double n = double(kl.size());
  double mean = 0;
  for (double v : kl) mean += v;
  mean /= n;
  std::vector<double> sorted = kl;
  std::sort(sorted.begin(), sorted.end());
  const double h = 0.99 * (n - 1);  // linear between the closest ranks
  const size_t lo = size_t(h);
  const double p99 = sorted[lo] + (h - double(lo)) * (sorted[lo + 1] - sorted[lo]);

  EXPECT_EQ(r.kl.tokens, 255);
  EXPECT_GT(r.kl.mean, 1e-4);
  EXPECT_NEAR(r.kl.mean, mean, 1e-9 * mean);
  EXPECT_NEAR(r.kl.p99, p99, 1e-9 * p99);
  EXPECT_GT(r.kl.p99, r.kl.mean);
  EXPECT_LT(r.kl.top1_agreement, 1.0);
  EXPECT_DOUBLE_EQ(r.kl.top1_agreement, double(agree) / n);
  EXPECT_NEAR(r.kl.base_ppl, std::exp(nll_base / n), 1e-6 * r.kl.base_ppl);
  EXPECT_NEAR(r.ppl, std::exp(nll_model / n), 1e-6 * r.ppl);
  std::filesystem::remove_all(q);
}

TEST(PerplexityBatch, KlNeedsOneVocabulary) {
  NEED_DIR(dir, "models/babyllama-361");
  NEED_DIR(other, "models/llama-gutenberg-22m");
  auto model = Model::load(dir), base = Model::load(other);
  const auto ids = text_ids(dir);
  try {
    gptq::perplexity(*model, ids, windows(0, 1, 0), base.get());
    FAIL() << "different vocabularies were accepted";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
}

}  // namespace
