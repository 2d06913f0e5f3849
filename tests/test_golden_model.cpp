// The forward pass and greedy decoding against the reference implementation's outputs
// (../shared/golden/<model>/{logits,greedy}.json, fp32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gptq/model.h"
#include "shared_paths.h"

namespace {

using nlohmann::json;

json load_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class GoldenModel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_dir_ = shared_path("models/" + GetParam());
    golden_dir_ = shared_path("golden/" + GetParam());
    if (model_dir_.empty() || !gptq_test::is_dir(model_dir_) || !gptq_test::is_dir(golden_dir_))
      GTEST_SKIP() << "../shared/models/" << GetParam() << " or its golden outputs not found: skipped";
  }
  std::string model_dir_, golden_dir_;
};

TEST_P(GoldenModel, LogitsMatchReference) {
  auto model = gptq::Model::load(model_dir_);
  const json g = load_json(golden_dir_ + "/logits.json");
  for (const auto& c : g["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto argmax = c["argmax"].get<std::vector<int64_t>>();
    const auto lse = c["logsumexp"].get<std::vector<double>>();
    const auto last = c["last_logits"].get<std::vector<double>>();
    auto cache = model->new_cache();
    std::vector<float> logits;
    model->forward(*cache, ids.data(), int64_t(ids.size()), true, logits);
    const int64_t V = model->vocab_size();
    ASSERT_EQ(int64_t(last.size()), V);
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* row = logits.data() + t * size_t(V);
      EXPECT_EQ(std::max_element(row, row + V) - row, argmax[t]) << c["prompt"] << " position " << t;
      double mx = *std::max_element(row, row + V), s = 0;
      for (int64_t i = 0; i < V; ++i) s += std::exp(double(row[i]) - mx);
      EXPECT_NEAR(mx + std::log(s), lse[t], 1e-3 * std::abs(lse[t]) + 1e-3) << c["prompt"] << " position " << t;
    }
    const float* row = logits.data() + (ids.size() - 1) * size_t(V);
    double max_ref = 0, max_diff = 0;
    for (int64_t i = 0; i < V; ++i) {
      max_ref = std::max(max_ref, std::abs(last[size_t(i)]));
      max_diff = std::max(max_diff, std::abs(double(row[i]) - last[size_t(i)]));
    }
    EXPECT_LE(max_diff, 1e-3 * max_ref) << c["prompt"];
  }
}

TEST_P(GoldenModel, IncrementalDecodeMatchesPrefill) {
  // Feeding the prompt one token at a time through the KV cache gives the same logits as one prefill.
  auto model = gptq::Model::load(model_dir_);
  const json g = load_json(golden_dir_ + "/logits.json");
  const auto ids = g["cases"][0]["ids"].get<std::vector<int32_t>>();
  auto c1 = model->new_cache(), c2 = model->new_cache();
  std::vector<float> all, one;
  model->forward(*c1, ids.data(), int64_t(ids.size()), true, all);
  const int64_t V = model->vocab_size();
  for (size_t t = 0; t < ids.size(); ++t) {
    model->forward(*c2, &ids[t], 1, false, one);
    for (int64_t i = 0; i < V; ++i) ASSERT_NEAR(one[size_t(i)], all[t * size_t(V) + size_t(i)], 1e-3f) << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenModel,
                         ::testing::Values("babyllama-105", "babyllama-361", "llama-gutenberg-22m"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
