// The batched engine: mixed batches against sequences run alone, the paged KV cache's memory and
// bookkeeping, and the errors of bad batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "gptq/error.h"
#include "gptq/generate.h"
#include "gptq/model.h"
#include "gptq/tokenizer.h"
#include "shared_paths.h"

namespace fs = std::filesystem;

namespace {

std::unique_ptr<gptq::Model> load_or_skip(const std::string& name) {
  const std::string dir = shared_path("models/" + name);
  if (dir.empty() || !gptq_test::is_dir(dir)) return nullptr;
  return gptq::Model::load(dir);
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(1, int32_t(vocab - 1));
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// max |a - b| / max |b| over rows of logits.
double rel_diff(const float* a, const float* b, int64_t n) {
  double md = 0, mb = 0;
  for (int64_t i = 0; i < n; ++i) {
    md = std::max(md, std::abs(double(a[i]) - double(b[i])));
    mb = std::max(mb, std::abs(double(b[i])));
  }
  return md / mb;
}

TEST(Engine, MixedBatchGivesEachSequenceItsOwnLogits) {
  auto m = load_or_skip("llama-gutenberg-22m");
  if (!m) GTEST_SKIP() << "../shared/models/llama-gutenberg-22m not found: skipped";
  const int64_t V = m->vocab_size();
  const auto a = random_ids(40, V, 1), b = random_ids(23, V, 2), c = random_ids(17, V, 3);
  // Alone: a[0:37] then a[37:40] as one more prefill step; b[0:20] then b[20]; c at once.
  std::vector<float> la, lb, lc, tmp;
  {
    auto k = m->new_cache();
    m->forward(*k, a.data(), 37, false, tmp);
    m->forward(*k, a.data() + 37, 3, true, la);  // [3, V]
  }
  {
    auto k = m->new_cache();
    m->forward(*k, b.data(), 20, false, tmp);
    m->forward(*k, b.data() + 20, 1, false, lb);  // [1, V]
  }
  {
    auto k = m->new_cache();
    m->forward(*k, c.data(), 17, false, lc);  // [1, V]
  }
  // Together: first a prefill of a and b in one batch, then a mixed batch: a's 3 more tokens
  // (all logits), b's decode step, c's whole prompt.
  auto k = m->new_cache();
  const int64_t sa = k->add_sequence(), sb = k->add_sequence(), sc = k->add_sequence();
  gptq::Batch first;
  first.add(sa, a.data(), 37, gptq::Logits::kNone);
  first.add(sb, b.data(), 20, gptq::Logits::kLast);
  std::vector<float> out;
  m->forward(first, *k, out);
  ASSERT_EQ(out.size(), size_t(V));
  gptq::Batch mixed;
  mixed.add(sb, b.data() + 20, 1);
  mixed.add(sc, c.data(), 17);
  mixed.add(sa, a.data() + 37, 3, gptq::Logits::kAll);
  m->forward(mixed, *k, out);
  ASSERT_EQ(out.size(), size_t(5 * V));
  EXPECT_LT(rel_diff(out.data(), lb.data(), V), 1e-5);
  EXPECT_LT(rel_diff(out.data() + V, lc.data(), V), 1e-5);
  EXPECT_LT(rel_diff(out.data() + 2 * V, la.data(), 3 * V), 1e-5);
  EXPECT_EQ(k->seq_len(sa), 40);
  EXPECT_EQ(k->seq_len(sb), 21);
  EXPECT_EQ(k->seq_len(sc), 17);
}

TEST(Engine, KVCacheMemoryFollowsTheTokensHeld) {
  auto m = load_or_skip("babyllama-361");
  if (!m) GTEST_SKIP() << "../shared/models/babyllama-361 not found: skipped";
  const gptq::ModelConfig& c = m->config();
  gptq::KVCacheOptions o;
  o.block_size = 16;
  auto k = m->new_cache(0, o);
  EXPECT_EQ(k->bytes_allocated(), 0u);
  const size_t block = size_t(c.num_layers * 2 * c.num_kv_heads * 16 * c.head_dim) * 4;
  const auto ids = random_ids(40, m->vocab_size(), 4);
  std::vector<float> logits;
  const int64_t s1 = k->add_sequence();
  gptq::Batch b;
  b.add(s1, ids.data(), 33);  // 3 blocks
  m->forward(b, *k, logits);
  EXPECT_EQ(k->blocks_in_use(), 3);
  EXPECT_GE(k->bytes_allocated(), 3 * block);
  EXPECT_LE(k->bytes_allocated(), 6 * block);  // grows with demand, not to the context length
  k->truncate(s1, 16);
  EXPECT_EQ(k->blocks_in_use(), 1);
  k->free_sequence(s1);
  EXPECT_EQ(k->blocks_in_use(), 0);
  const size_t held = k->bytes_allocated();
  // Freed blocks are reused: a new sequence of the same size allocates nothing more.
  const int64_t s2 = k->add_sequence();
  gptq::Batch b2;
  b2.add(s2, ids.data(), 33);
  m->forward(b2, *k, logits);
  EXPECT_EQ(k->bytes_allocated(), held);
  EXPECT_FALSE(k->has_sequence(s1));
  EXPECT_THROW(k->seq_len(s1), gptq::Error);
}

TEST(Engine, KVCacheFp16IsCloseToFp32) {
  auto m = load_or_skip("llama-gutenberg-22m");
  if (!m) GTEST_SKIP() << "../shared/models/llama-gutenberg-22m not found: skipped";
  const auto ids = random_ids(64, m->vocab_size(), 5);
  gptq::KVCacheOptions h, f;
  h.fp16 = true;
  f.fp16 = false;
  auto k32 = m->new_cache(0, f), k16 = m->new_cache(0, h);
  std::vector<float> a, b;
  m->forward(*k32, ids.data(), 64, true, a);
  m->forward(*k16, ids.data(), 64, true, b);
  EXPECT_EQ(k16->bytes_allocated() * 2, k32->bytes_allocated());
  // fp16 keys/values carry ~3 decimal digits: logits agree to ~1e-3 of their range, not exactly.
  const double d = rel_diff(b.data(), a.data(), int64_t(a.size()));
  EXPECT_LT(d, 5e-3);
  EXPECT_GT(d, 0.0);  // the storage really is fp16
  // Unset, the CPU keeps fp32 (a GPU backend defaults to fp16: test_cuda).
  auto kd = m->new_cache();
  std::vector<float> c;
  m->forward(*kd, ids.data(), 64, true, c);
  EXPECT_EQ(kd->bytes_allocated(), k32->bytes_allocated());
  EXPECT_EQ(c, a);
}

// LoadOptions::kv_fp16 sets the storage of the model's caches unless a cache asks otherwise.
TEST(Engine, LoadOptionSetsTheKVCacheDefault) {
  const std::string dir = shared_path("models/babyllama-105");
  if (dir.empty() || !gptq_test::is_dir(dir)) GTEST_SKIP() << "../shared/models/babyllama-105 not found: skipped";
  gptq::LoadOptions lo;
  lo.kv_fp16 = true;
  auto m = gptq::Model::load(dir, lo);
  EXPECT_TRUE(m->new_cache()->fp16());
  gptq::KVCacheOptions f32;
  f32.fp16 = false;
  EXPECT_FALSE(m->new_cache(0, f32)->fp16());
  EXPECT_FALSE(gptq::Model::load(dir)->new_cache()->fp16());  // the CPU's default
}

TEST(Engine, BadBatchesAreRefused) {
  auto m = load_or_skip("babyllama-361");
  if (!m) GTEST_SKIP() << "../shared/models/babyllama-361 not found: skipped";
  const auto ids = random_ids(8, m->vocab_size(), 6);
  std::vector<float> logits;
  auto k = m->new_cache(10);
  const int64_t s = k->add_sequence();
  gptq::Batch twice;
  twice.add(s, ids.data(), 2);
  twice.add(s, ids.data(), 2);
  EXPECT_THROW(m->forward(twice, *k, logits), gptq::Error);
  gptq::Batch unknown;
  unknown.add(s + 7, ids.data(), 2);
  EXPECT_THROW(m->forward(unknown, *k, logits), gptq::Error);
  gptq::Batch empty;
  EXPECT_THROW(m->forward(empty, *k, logits), gptq::Error);
  std::vector<int32_t> bad = {1, int32_t(m->vocab_size())};
  gptq::Batch oov;
  oov.add(s, bad.data(), 2);
  EXPECT_THROW(m->forward(oov, *k, logits), gptq::Error);
  EXPECT_EQ(k->seq_len(s), 0);  // a refused batch commits nothing
  gptq::Batch fits;
  fits.add(s, ids.data(), 8);
  m->forward(fits, *k, logits);
  gptq::Batch over;
  over.add(s, ids.data(), 3);  // 8 + 3 > the cache's context of 10
  EXPECT_THROW(m->forward(over, *k, logits), gptq::Error);
  EXPECT_EQ(k->seq_len(s), 8);
  // A pool cap: a second sequence cannot get blocks.
  gptq::KVCacheOptions capped;
  capped.block_size = 4;
  capped.max_tokens = 8;
  auto kc = m->new_cache(0, capped);
  const int64_t s1 = kc->add_sequence(), s2 = kc->add_sequence();
  gptq::Batch b1;
  b1.add(s1, ids.data(), 8);
  m->forward(b1, *kc, logits);
  gptq::Batch b2;
  b2.add(s2, ids.data(), 1);
  try {
    m->forward(b2, *kc, logits);
    ADD_FAILURE() << "a full pool was not reported";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache full"), std::string::npos) << e.what();
  }
}

// A config that claims a 4M-token context: memory must follow the tokens generated.
TEST(Engine, HugeContextConfigGeneratesInAFewMiB) {
  const std::string src = shared_path("models/babyllama-361");
  if (src.empty() || !gptq_test::is_dir(src)) GTEST_SKIP() << "../shared/models/babyllama-361 not found: skipped";
  const fs::path dir = fs::temp_directory_path() / ("gptq-huge-ctx-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().filename() != "config.json") fs::create_symlink(e.path(), dir / e.path().filename());
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  cfg["max_position_embeddings"] = 4194304;
  std::ofstream(dir / "config.json") << cfg.dump();
  auto m = gptq::Model::load(dir.string());
  EXPECT_EQ(m->context_length(), 4194304);
  auto tok = gptq::Tokenizer::from_model_dir(dir.string());
  gptq::GenerateOptions g;
  g.max_new_tokens = 4;
  g.sampling.temperature = 0;
  const auto r = gptq::generate(*m, tok, tok.encode("Once upon a time", true), g);
  EXPECT_EQ(r.new_ids.size(), 4u);
  auto k = m->new_cache();
  std::vector<float> logits;
  const auto ids = tok.encode("Once upon a time", true);
  m->forward(*k, ids.data(), int64_t(ids.size()), false, logits);
  EXPECT_LT(k->bytes_allocated(), size_t(4) << 20);
  fs::remove_all(dir);
}

}  // namespace
