// Synthetic weights and models (bench --synthetic): the hash of core/synthetic.h pinned to values
// a GPU kernel must reproduce, the backend's random weights following their documented formula,
// and synthetic models with the real shapes whose forward pass is finite and seeded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backend/backend.h"
#include "core/half.h"
#include "core/synthetic.h"
#include "gptq/error.h"
#include "gptq/model.h"

namespace {

using gptq::DType;

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Values computed once on the host; the CUDA versions must give the same bits.
TEST(SyntheticHash, PinnedValues) {
  EXPECT_EQ(gptq::splitmix64(0), 0xe220a8397b1dcdafull);  // SplitMix64's first output from state 0
  EXPECT_EQ(gptq::synthetic_bits(42, 0), 0x57e1faba65107204ull);
  EXPECT_EQ(gptq::synthetic_bits(42, 1), 0xfa4f945599f9054aull);
  const float u[4] = {-0x1.9acd0ap-8f, 0x1.391da4p-6f, -0x1.18088ep-9f, -0x1.c097d6p-9f};
  const uint16_t f16[4] = {0x9e6b, 0x24e4, 0x9860, 0x9b02}, bf16[4] = {0xbbcd, 0x3c9d, 0xbb0c, 0xbb60};
  for (int i = 0; i < 4; ++i) {
    const float v = gptq::synthetic_uniform(42, uint64_t(i), 0.02f);
    EXPECT_EQ(float_bits(v), float_bits(u[i])) << i;
    EXPECT_EQ(gptq::fp32_to_fp16(v), f16[i]) << i;
    EXPECT_EQ(gptq::fp32_to_bf16(v), bf16[i]) << i;
  }
  const uint32_t codes[4] = {11, 2, 13, 15};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(gptq::synthetic_code(7, uint64_t(i), 4), codes[i]) << i;
  EXPECT_EQ(float_bits(gptq::synthetic_scale(7, 0, 0.02f, 4)), float_bits(0x1.6bf8ccp-9f));
  EXPECT_EQ(gptq::fp32_to_fp16(gptq::synthetic_scale(7, 0, 0.02f, 4)), 0x19b0);
  EXPECT_EQ(gptq::fp32_to_fp16(gptq::synthetic_scale(7, 1, 0.02f, 4)), 0x183d);
}

TEST(SyntheticHash, Ranges) {
  for (uint64_t i = 0; i < 20000; ++i) {
    const float u = gptq::synthetic_uniform(3, i, 0.5f);
    ASSERT_TRUE(u >= -0.5f && u < 0.5f) << u;
    ASSERT_LT(gptq::synthetic_code(3, i, 3), 8u);
    const float s = gptq::synthetic_scale(3, i, 0.02f, 4);
    ASSERT_TRUE(s >= 0.75f * 0.0025f && s < 1.25f * 0.0025f) << s;
  }
}

TEST(SyntheticWeights, DenseFollowsTheFormulaAndTheSeed) {
  auto be = gptq::make_cpu_backend({2});
  const int64_t out = 5, in = 70;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    const auto w = be->random_dense_weight(out, in, dt, 0.5f, 42);
    EXPECT_EQ(w->out_features(), out);
    EXPECT_EQ(w->in_features(), in);
    EXPECT_EQ(w->bytes(), size_t(out * in) * gptq::dtype_size(dt));
    const std::vector<float> d = w->dense();
    ASSERT_EQ(d.size(), size_t(out * in));
    for (size_t i = 0; i < d.size(); ++i) {
      const float v = gptq::synthetic_uniform(42, i, 0.5f);
      const float want = dt == DType::kF32   ? v
                         : dt == DType::kF16 ? gptq::fp16_to_fp32(gptq::fp32_to_fp16(v))
                                             : gptq::bf16_to_fp32(gptq::fp32_to_bf16(v));
      ASSERT_EQ(float_bits(d[i]), float_bits(want)) << gptq::dtype_name(dt) << " element " << i;
    }
    EXPECT_EQ(be->random_dense_weight(out, in, dt, 0.5f, 42)->dense(), d);
    EXPECT_NE(be->random_dense_weight(out, in, dt, 0.5f, 43)->dense(), d);
  }
}

TEST(SyntheticWeights, GptqFollowsTheFormula) {
  auto be = gptq::make_cpu_backend({2});
  const struct { int bits, group; int64_t out, in; } cases[] = {{4, 128, 64, 256}, {4, -1, 32, 64}, {3, 32, 32, 96},
                                                                {2, 64, 16, 160}, {8, 128, 8, 200}};
  for (const auto& c : cases) {
    const auto w = be->random_gptq_weight(c.out, c.in, c.bits, c.group, 0.02f, 9);
    EXPECT_EQ(w->kind(), "GPTQ " + std::to_string(c.bits) + "-bit g" + std::to_string(c.group));
    // dense() reads the packed tensors the handle holds
    const std::vector<float> d = w->dense();
    const int64_t G = c.group == -1 ? c.in : c.group, N = c.out, K = c.in;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const uint64_t g = uint64_t(k / G);
        const float s = gptq::fp16_to_fp32(gptq::fp32_to_fp16(gptq::synthetic_scale(9, uint64_t(N * K) + g * uint64_t(N) + uint64_t(n), 0.02f, c.bits)));
        const int q = int(gptq::synthetic_code(9, uint64_t(n * K + k), c.bits)) - (1 << (c.bits - 1));
        ASSERT_EQ(d[size_t(n * K + k)], s * float(q)) << c.bits << "-bit g" << c.group << " [" << n << ", " << k << "]";
      }
    EXPECT_EQ(be->random_gptq_weight(c.out, c.in, c.bits, c.group, 0.02f, 9)->dense(), d);
  }
  EXPECT_THROW(be->random_gptq_weight(8, 100, 4, 128, 0.02f, 1), gptq::Error);  // 100 * 4 bits: not whole words
  EXPECT_THROW(be->random_gptq_weight(8, 128, 5, 128, 0.02f, 1), gptq::Error);
}

TEST(SyntheticModels, ShapesOfTheRealModels) {
  // parameter counts of the Hugging Face checkpoints
  EXPECT_EQ(gptq::synthetic_config("llama2-7b").vocab_size, 32000);
  const struct { const char* name; int64_t params, hidden, ffn, layers, kv, vocab, ctx; double theta; } real[] = {
      {"llama2-7b", 6738415616, 4096, 11008, 32, 32, 32000, 4096, 1e4},
      {"llama2-13b", 13015864320, 5120, 13824, 40, 40, 32000, 4096, 1e4},
      {"llama2-70b", 68976648192, 8192, 28672, 80, 8, 32000, 4096, 1e4},
      {"llama3-8b", 8030261248, 4096, 14336, 32, 8, 128256, 8192, 5e5}};
  for (const auto& r : real) {
    const gptq::ModelConfig c = gptq::synthetic_config(r.name);
    EXPECT_EQ(c.hidden_size, r.hidden) << r.name;
    EXPECT_EQ(c.intermediate_size, r.ffn) << r.name;
    EXPECT_EQ(c.num_layers, r.layers) << r.name;
    EXPECT_EQ(c.num_kv_heads, r.kv) << r.name;
    EXPECT_EQ(c.head_dim, 128) << r.name;
    EXPECT_EQ(c.vocab_size, r.vocab) << r.name;
    EXPECT_EQ(c.max_position_embeddings, r.ctx) << r.name;
    EXPECT_EQ(c.rope_theta, r.theta) << r.name;
    EXPECT_FALSE(c.tie_word_embeddings) << r.name;
    // Model::parameter_count's formula, on the config alone
    const int64_t H = c.hidden_size, F = c.intermediate_size, A = c.num_heads * c.head_dim, KV = c.num_kv_heads * c.head_dim;
    EXPECT_EQ(2 * c.vocab_size * H + H + c.num_layers * (2 * H + 2 * H * A + 2 * H * KV + 3 * H * F), r.params) << r.name;
  }
  try {
    gptq::synthetic_config("llama9-1t");
    FAIL() << "no error";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama9-1t"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("llama2-7b"), std::string::npos) << e.what();
  }
}

std::vector<float> tiny_logits(const gptq::SyntheticOptions& o) {
  auto m = gptq::Model::synthetic("tiny", o);
  auto cache = m->new_cache();
  const std::vector<int32_t> ids = {1, 17, 300, 511, 42, 0, 99, 7};
  std::vector<float> logits;
  m->forward(*cache, ids.data(), int64_t(ids.size()), true, logits);
  EXPECT_EQ(logits.size(), ids.size() * size_t(m->vocab_size()));
  return logits;
}

TEST(SyntheticModels, TinyForwardIsFiniteAndSeeded) {
  struct Case { DType dtype; int bits, group; const char* kind; };
  for (const Case c : {Case{DType::kF16, 0, 128, "F16"}, Case{DType::kBF16, 0, 128, "BF16"},
                       Case{DType::kF16, 4, 128, "GPTQ 4-bit g128"}, Case{DType::kBF16, 3, 32, "GPTQ 3-bit g32"}}) {
    gptq::SyntheticOptions o;
    o.dtype = c.dtype;
    o.bits = c.bits;
    o.group_size = c.group;
    o.seed = 5;
    o.threads = 2;
    auto m = gptq::Model::synthetic("tiny", o);
    EXPECT_EQ(m->dir(), "synthetic:tiny");
    EXPECT_EQ(m->file_bytes(), 0u);
    EXPECT_GT(m->weight_bytes(), 0u);
    EXPECT_NE(m->weight_dtype_summary().find(c.kind), std::string::npos) << m->weight_dtype_summary();
    const std::vector<float> a = tiny_logits(o);
    double max_abs = 0;
    for (float v : a) {
      ASSERT_TRUE(std::isfinite(v)) << c.kind;
      max_abs = std::max(max_abs, double(std::abs(v)));
    }
    EXPECT_GT(max_abs, 1e-3) << c.kind;  // not all zero
    EXPECT_EQ(tiny_logits(o), a) << c.kind;
    o.seed = 6;
    EXPECT_NE(tiny_logits(o), a) << c.kind;
  }
}

// Deferred (quantize's layer streaming on a device), a layer's linears are made by load_layer with
// the same values and dropped by release_layer.
TEST(SyntheticModels, DeferredLayersAreTheSameWeights) {
  gptq::SyntheticOptions o;
  o.seed = 3;
  o.threads = 2;
  const std::vector<float> want = tiny_logits(o);
  o.defer_layers = true;
  auto m = gptq::Model::synthetic("tiny", o);
  const int64_t L = m->config().num_layers;
  for (int64_t l = 0; l < L; ++l) EXPECT_FALSE(m->layer_loaded(l));
  const size_t bare = m->weight_bytes();
  m->load_layer(1);
  EXPECT_EQ(m->weight_bytes() - bare, m->layer_file_bytes(1));
  m->release_layer(1);
  EXPECT_EQ(m->weight_bytes(), bare);
  for (int64_t l = 0; l < L; ++l) m->load_layer(l);
  auto cache = m->new_cache();
  const std::vector<int32_t> ids = {1, 17, 300, 511, 42, 0, 99, 7};
  std::vector<float> got;
  m->forward(*cache, ids.data(), int64_t(ids.size()), true, got);
  EXPECT_EQ(got, want);
}

TEST(SyntheticModels, BadOptions) {
  gptq::SyntheticOptions o;
  o.bits = 5;
  EXPECT_THROW(gptq::Model::synthetic("tiny", o), gptq::Error);
  o.bits = 4;
  o.group_size = 0;
  EXPECT_THROW(gptq::Model::synthetic("tiny", o), gptq::Error);
  o = {};
  o.dtype = DType::kI32;
  EXPECT_THROW(gptq::Model::synthetic("tiny", o), gptq::Error);
  EXPECT_THROW(gptq::Model::synthetic("nope"), gptq::Error);
  o = {};
  o.layers = 3;  // tiny has 2
  EXPECT_THROW(gptq::Model::synthetic("tiny", o), gptq::Error);
  o.layers = -1;
  EXPECT_THROW(gptq::Model::synthetic("tiny", o), gptq::Error);
}

TEST(SyntheticModels, FirstLayersOnly) {
  gptq::SyntheticOptions o;
  o.threads = 2;
  o.layers = 1;
  auto one = gptq::Model::synthetic("tiny", o);
  EXPECT_EQ(one->config().num_layers, 1);
  o.layers = 0;
  auto all = gptq::Model::synthetic("tiny", o);
  EXPECT_EQ(all->config().num_layers, 2);
  // the same first layer (the weights' seeds do not depend on the layer count)
  EXPECT_EQ(one->linear(0, gptq::LinearSlot::kDown).dense(), all->linear(0, gptq::LinearSlot::kDown).dense());
}

TEST(SyntheticModels, HostCopyBandwidthIsMeasuredOnce) {
  auto be = gptq::make_cpu_backend({2});
  const double bw = be->copy_bandwidth();
  EXPECT_TRUE(std::isfinite(bw) && bw > 0) << bw;
  EXPECT_EQ(be->copy_bandwidth(), bw);  // cached, not measured again
  EXPECT_EQ(be->device_bytes_in_use(), 0u);  // a host backend
}

}  // namespace
