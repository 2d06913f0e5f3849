// The golden models and GPTQ checkpoints on the CUDA backend (skipped without a GPU): against the
// reference implementation's outputs and against the CPU backend on the same weights.
//  - fp32 / fp16 models: argmax equal to the reference at every prompt position, last logits
//    within 1e-2 of the largest, the first 16 greedy tokens identical (../shared/golden/README.md
//    "on fp16/GPU paths").
//  - GPTQ checkpoints made here by the CPU quantizer (several layouts): GPU and CPU logits within
//    1e-2 relative, perplexity within 0.1 %.
//  - A mixed batch on the GPU gives every sequence what it gets alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/fs.h"
#include "gptq/generate.h"
#include "gptq/model.h"
#include "gptq/perplexity.h"
#include "gptq/quantize.h"
#include "gptq/tokenizer.h"
#include "cuda_test.h"
#include "shared_paths.h"

namespace {

using nlohmann::json;
using gptq_test::gpu;
using gptq_test::shared_path;
namespace fs = std::filesystem;

std::unique_ptr<gptq::Model> load_on(const std::string& dir, std::shared_ptr<gptq::Backend> be) {
  gptq::LoadOptions o;
  o.backend = std::move(be);
  return gptq::Model::load(dir, o);
}

// max |a - b| / max |b|
double rel_max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double mx = 0, d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    mx = std::max(mx, std::abs(double(b[i])));
    d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  }
  return mx > 0 ? d / mx : d;
}

class CudaGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    NEED_GPU();
    model_dir_ = shared_path("models/" + GetParam());
    golden_dir_ = shared_path("golden/" + GetParam());
    if (!gptq_test::is_dir(model_dir_) || !gptq_test::is_dir(golden_dir_))
      GTEST_SKIP() << "../shared/models/" << GetParam() << " or its golden outputs not found: skipped";
  }
  json load(const std::string& f) { return json::parse(gptq::read_text_file(golden_dir_ + "/" + f)); }
  std::string model_dir_, golden_dir_;
};

TEST_P(CudaGolden, LogitsMatchReference) {
  auto model = load_on(model_dir_, gpu());
  EXPECT_EQ(model->backend().device(), gptq::Device::kCuda);
  const json g = load("logits.json");
  for (const auto& c : g["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto argmax = c["argmax"].get<std::vector<int64_t>>();
    const auto last = c["last_logits"].get<std::vector<float>>();
    auto cache = model->new_cache();
    std::vector<float> logits;
    model->forward(*cache, ids.data(), int64_t(ids.size()), true, logits);
    const int64_t V = model->vocab_size();
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* row = logits.data() + t * size_t(V);
      EXPECT_EQ(std::max_element(row, row + V) - row, argmax[t]) << c["prompt"] << " position " << t;
    }
    const std::vector<float> got(logits.end() - V, logits.end());
    EXPECT_LE(rel_max_diff(got, last), 1e-2) << c["prompt"];
  }
}

TEST_P(CudaGolden, GreedyFirst16Identical) {
  auto model = load_on(model_dir_, gpu());
  const auto tok = gptq::Tokenizer::from_model_dir(model_dir_);
  for (const auto& c : load("greedy.json")["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    auto want = c["new_ids"].get<std::vector<int32_t>>();
    want.resize(std::min<size_t>(want.size(), 16));
    gptq::GenerateOptions o;
    o.max_new_tokens = int(want.size());
    o.sampling.temperature = 0;
    EXPECT_EQ(gptq::generate(*model, tok, prompt, o).new_ids, want) << c["prompt"];
  }
}

TEST_P(CudaGolden, GpuMatchesCpuAndDecodeMatchesPrefill) {
  auto g = load_on(model_dir_, gpu());
  auto c = gptq::Model::load(model_dir_);
  const auto ids = load("logits.json")["cases"][0]["ids"].get<std::vector<int32_t>>();
  auto cg = g->new_cache(), cc = c->new_cache(), c1 = g->new_cache();
  std::vector<float> lg, lc, one;
  g->forward(*cg, ids.data(), int64_t(ids.size()), true, lg);
  c->forward(*cc, ids.data(), int64_t(ids.size()), true, lc);
  EXPECT_LE(rel_max_diff(lg, lc), 1e-2);
  const int64_t V = g->vocab_size();
  for (size_t t = 0; t < ids.size(); ++t) {
    g->forward(*c1, &ids[t], 1, false, one);
    const std::vector<float> row(lg.begin() + int64_t(t) * V, lg.begin() + int64_t(t + 1) * V);
    EXPECT_LE(rel_max_diff(one, row), 1e-2) << "position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGolden, ::testing::Values("babyllama-105", "babyllama-361", "llama-gutenberg-22m"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// A mixed batch (prefill of one sequence next to decode steps of others) gives each sequence
// what it gets alone, on the GPU.
// A GPU keeps K/V in fp16 unless asked for fp32 (KVCacheOptions::fp16): half the bytes.
TEST(CudaBatch, KVCacheDefaultsToFp16) {
  NEED_GPU();
  const std::string dir = shared_path("models/llama-gutenberg-22m");
  if (!gptq_test::is_dir(dir)) GTEST_SKIP() << "../shared/models/llama-gutenberg-22m not found: skipped";
  auto m = load_on(dir, gpu());
  gptq::KVCacheOptions f32;
  f32.fp16 = false;
  auto kd = m->new_cache(), k32 = m->new_cache(0, f32);
  const std::vector<int32_t> ids = {1, 450, 4996, 17354, 338, 263};
  std::vector<float> a, b;
  m->forward(*kd, ids.data(), int64_t(ids.size()), true, a);
  m->forward(*k32, ids.data(), int64_t(ids.size()), true, b);
  EXPECT_EQ(kd->bytes_allocated() * 2, k32->bytes_allocated());
  EXPECT_LE(rel_max_diff(a, b), 5e-3);
}

TEST(CudaBatch, MixedBatchMatchesAlone) {
  NEED_GPU();
  const std::string dir = shared_path("models/llama-gutenberg-22m");
  if (!gptq_test::is_dir(dir)) GTEST_SKIP() << "../shared/models/llama-gutenberg-22m not found: skipped";
  auto m = load_on(dir, gpu());
  const std::vector<std::vector<int32_t>> prompts = {{1, 450, 4996, 17354}, {1, 3118}, {1, 29871, 13, 450, 338, 263, 1243}};
  // alone
  std::vector<std::vector<float>> alone;
  for (const auto& p : prompts) {
    auto c = m->new_cache();
    std::vector<float> l;
    m->forward(*c, p.data(), int64_t(p.size()), false, l);
    alone.push_back(l);
  }
  // together: one batch with all three prompts
  auto cache = m->new_cache();
  gptq::Batch b;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t s = cache->add_sequence();
    b.add(s, prompts[i].data(), int64_t(prompts[i].size()), gptq::Logits::kLast);
  }
  std::vector<float> l;
  m->forward(b, *cache, l);
  const int64_t V = m->vocab_size();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<float> row(l.begin() + int64_t(i) * V, l.begin() + int64_t(i + 1) * V);
    EXPECT_LE(rel_max_diff(row, alone[i]), 1e-3) << "sequence " << i;
  }
}

// q|k|v and gate|up fused into one weight each (the default on the GPU) give the logits of the
// linears run one by one; the fused slots are not reachable one by one.
TEST(CudaBatch, FusedLinearsMatchUnfused) {
  NEED_GPU();
  const std::string dir = shared_path("models/llama-gutenberg-22m");
  if (!gptq_test::is_dir(dir)) GTEST_SKIP() << "../shared/models/llama-gutenberg-22m not found: skipped";
  gptq::LoadOptions o;
  o.backend = gpu();
  auto fused = gptq::Model::load(dir, o);
  o.fuse_linears = false;
  auto plain = gptq::Model::load(dir, o);
  EXPECT_EQ(fused->weight_bytes(), plain->weight_bytes());
  EXPECT_EQ(fused->weight_dtype_summary(), plain->weight_dtype_summary());
  EXPECT_THROW(fused->linear(0, gptq::LinearSlot::kQ), gptq::Error);
  EXPECT_NO_THROW(fused->linear(0, gptq::LinearSlot::kO));
  const std::vector<int32_t> prompt = {1, 450, 4996, 17354, 29871, 13, 450, 338, 263, 1243, 3118, 29889};
  auto cf = fused->new_cache(), cp = plain->new_cache();
  std::vector<float> lf, lp;
  fused->forward(*cf, prompt.data(), int64_t(prompt.size()), true, lf);  // T = 12: the GEMM path
  plain->forward(*cp, prompt.data(), int64_t(prompt.size()), true, lp);
  EXPECT_LE(rel_max_diff(lf, lp), 1e-4) << "prefill";
  for (int32_t t : {450, 4996, 17354}) {  // T = 1: the GEMV path, recorded as a CUDA graph
    fused->forward(*cf, &t, 1, false, lf);
    plain->forward(*cp, &t, 1, false, lp);
    EXPECT_LE(rel_max_diff(lf, lp), 1e-4) << "decode";
  }
}

// GPTQ checkpoints made by the CPU quantizer, run on both backends.
struct QCase {
  const char* tag;
  int bits, group;
  bool act_order, sym;
  const char* format;
};

class CudaGptq : public ::testing::TestWithParam<QCase> {};

TEST_P(CudaGptq, GpuMatchesCpuLogitsAndPerplexity) {
  NEED_GPU();
  const QCase q = GetParam();
  const std::string src = shared_path("models/babyllama-361"), text = shared_path("data/tinystories-sample/tiny.utf8");
  if (!gptq_test::is_dir(src)) GTEST_SKIP() << "../shared/models/babyllama-361 not found: skipped";
  const fs::path out = fs::path(testing::TempDir()) / gptq::cat("gptq_cuda_", q.tag);
  fs::remove_all(out);
  gptq::QuantizeOptions o;
  o.calibration_file = text;
  o.seqlen = 256;
  o.nsamples = 16;
  o.bits = q.bits;
  o.group_size = q.group;
  o.order = q.act_order ? "act" : "natural";  // a permuted g_idx, or none
  o.sym = q.sym;
  o.format = q.format;
  o.progress = false;
  gptq::quantize_model(src, out.string(), o);
  auto g = load_on(out.string(), gpu());
  auto c = gptq::Model::load(out.string());
  EXPECT_NE(g->weight_dtype_summary().find("GPTQ"), std::string::npos) << g->weight_dtype_summary();
  const auto tok = gptq::Tokenizer::from_model_dir(out.string());
  const auto ids = tok.encode(gptq::read_text_file(text));
  // Logits of a prefill (T > 8: the dequantize + cuBLAS path) and of decode steps (T = 1: GEMV).
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 40);
  auto cg = g->new_cache(), cc = c->new_cache();
  std::vector<float> lg, lc;
  g->forward(*cg, prompt.data(), int64_t(prompt.size()), true, lg);
  c->forward(*cc, prompt.data(), int64_t(prompt.size()), true, lc);
  EXPECT_LE(rel_max_diff(lg, lc), 1e-2) << "prefill";
  for (int i = 0; i < 4; ++i) {
    g->forward(*cg, &ids[40 + size_t(i)], 1, false, lg);
    c->forward(*cc, &ids[40 + size_t(i)], 1, false, lc);
    EXPECT_LE(rel_max_diff(lg, lc), 1e-2) << "decode step " << i;
  }
  gptq::PerplexityOptions p;
  p.ctx = 256;
  p.window_begin = 128;
  p.window_end = 144;
  p.progress = false;
  const double pg = gptq::perplexity(*g, ids, p).ppl, pc = gptq::perplexity(*c, ids, p).ppl;
  EXPECT_NEAR(pg, pc, 1e-3 * pc) << "GPU " << pg << " CPU " << pc;
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaGptq,
                         ::testing::Values(QCase{"b4_g128", 4, 128, false, true, "gptq"},
                                           QCase{"b4_g128_actorder_asym", 4, 128, true, false, "gptq"},
                                           QCase{"b3_g32_v2", 3, 32, false, true, "gptq_v2"},
                                           QCase{"b8_gall", 8, -1, false, false, "gptq"},
                                           QCase{"b2_g64_actorder", 2, 64, true, true, "gptq"}),
                         [](const auto& info) { return std::string(info.param.tag); });

// Bad input: an unusable device index is a clear error, not a crash.
TEST(CudaBackendErrors, BadDeviceIndexIsAClearError) {
  NEED_GPU();
  try {
    gptq::make_cuda_backend({999});
    FAIL() << "no error";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("999"), std::string::npos) << e.what();
  }
}

TEST(CudaBackendErrors, WithoutGpuTheReasonIsGiven) {
  std::string why;
  if (gptq::cuda_usable(0, &why)) GTEST_SKIP() << "a GPU is present";
  EXPECT_FALSE(why.empty());
  EXPECT_THROW(gptq::make_cuda_backend(), gptq::Error);
}

}  // namespace

namespace {

TEST(CudaBackendErrors, OutOfMemoryNamesTheSizes) {
  NEED_GPU();
  try {
    gpu()->alloc(size_t(1) << 50);
    FAIL() << "no error";
  } catch (const gptq::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of GPU memory"), std::string::npos) << m;
    EXPECT_NE(m.find("free"), std::string::npos) << m;
  }
}

}  // namespace

namespace {

// Synthetic weights made on the GPU are the host default's values exactly (core/synthetic.h).
TEST(CudaSynthetic, GpuWeightsEqualTheHostFormula) {
  NEED_GPU();
  auto cpu = gptq::make_cpu_backend();
  for (gptq::DType dt : {gptq::DType::kF16, gptq::DType::kBF16, gptq::DType::kF32}) {
    auto a = gpu()->random_dense_weight(70, 96, dt, 0.02f, 11), b = cpu->random_dense_weight(70, 96, dt, 0.02f, 11);
    EXPECT_EQ(a->dense(), b->dense()) << gptq::dtype_name(dt);
  }
  auto a = gpu()->random_gptq_weight(64, 256, 4, 128, 0.02f, 5), b = cpu->random_gptq_weight(64, 256, 4, 128, 0.02f, 5);
  EXPECT_EQ(a->dense(), b->dense());
}

}  // namespace
