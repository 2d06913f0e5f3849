// The post-solve scale refit (quant/refit.h): given the solver's codes, each row's group scales
// re-chosen under the full Hessian. Same format: codes, zeros and g_idx unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/thread_pool.h"
#include "gptq/error.h"
#include "quant/gptq.h"
#include "quant/refit.h"
#include "random_layers.h"
#include "test_pool.h"

using namespace gptq::quant;
using gptq_test::correlated_inputs;
using gptq_test::hessian_of;
using gptq_test::layer_error;
using gptq_test::weights_with_outliers;

// Every configuration (bits, sym/asym, g128 / g64 / whole row, act-order, static groups, both
// grids): the layer error on the calibration inputs never rises and drops in total; the codes,
// zeros and g_idx are the solver's; the scales are positive, finite fp16 values; Wq is their
// dequantization.
TEST(QuantRefit, NeverRaisesTheLayerErrorAndKeepsTheFormat) {
  const int64_t N = 24, K = 256, n = 512;
  const auto W = weights_with_outliers(size_t(N * K), 71);
  const auto X = correlated_inputs(n, K, 72);
  const auto H = hessian_of(X, n, K);
  double total_before = 0, total_after = 0;
  for (int bits : {3, 4})
    for (bool sym : {true, false})
      for (int G : {128, 64, -1})
        for (int order = 0; order < 3; ++order)
          for (Grid grid : {Grid::kMinMax, Grid::kMse}) {
            if (G == -1 && order == 2) continue;
            QuantSpec spec;
            spec.bits = bits, spec.sym = sym, spec.group_size = G, spec.grid = grid;
            spec.desc_act = order > 0, spec.static_groups = order == 2;
            const std::string what = "bits " + std::to_string(bits) + " sym " + std::to_string(sym) + " G " +
                                     std::to_string(G) + " order " + std::to_string(order) + " grid " + grid_name(grid);
            const QuantResult a = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
            QuantResult b = a;
            const RefitStats st = refit_scales(test_pool(), W.data(), H.data(), N, K, b);
            const double ea = layer_error(W, a.Wq, X, N, K, n), eb = layer_error(W, b.Wq, X, N, K, n);
            EXPECT_LE(eb, ea * (1 + 1e-6)) << what;
            EXPECT_LE(st.error_after, st.error_before) << what;
            EXPECT_GT(st.rows_changed, 0) << what;
            total_before += ea, total_after += eb;
            EXPECT_EQ(a.codes, b.codes) << what;
            EXPECT_EQ(a.zeros, b.zeros) << what;
            EXPECT_EQ(a.g_idx, b.g_idx) << what;
            for (size_t i = 0; i < b.scales.size(); ++i) {
              const float s = b.scales[i];
              ASSERT_TRUE(std::isfinite(s) && s > 0.f) << what;
              if (s != a.scales[i]) {
                EXPECT_EQ(gptq::fp16_to_fp32(gptq::fp32_to_fp16(s)), s) << what;
              }
            }
            for (int64_t r = 0; r < N; ++r)
              for (int64_t k = 0; k < K; ++k) {
                const size_t g = size_t(b.g_idx[size_t(k)]) * size_t(N) + size_t(r);
                ASSERT_EQ(b.Wq[size_t(r * K + k)],
                          dequantize_code(float(b.codes[size_t(r * K + k)]), b.scales[g], float(b.zeros[g])))
                    << what;
              }
            if (sym) {
              for (int32_t z : b.zeros) ASSERT_EQ(z, (max_code(bits) + 1) / 2) << what;
            }
          }
  EXPECT_LT(total_after, 0.99 * total_before);
}

// The same scales bit for bit whatever the pool size (rows are solved alone; the gemms are the
// fixed-order ones).
TEST(QuantRefit, SameBitsForAnyThreadCount) {
  const int64_t N = 40, K = 192, n = 384;
  const auto W = weights_with_outliers(size_t(N * K), 81);
  const auto X = correlated_inputs(n, K, 82);
  const auto H = hessian_of(X, n, K);
  QuantSpec spec;
  spec.group_size = 64, spec.grid = Grid::kMse, spec.desc_act = true;
  const QuantResult a = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
  std::vector<std::vector<float>> scales;
  for (int threads : {1, 2, 3, 5}) {
    gptq::ThreadPool pool(threads);
    QuantResult b = a;
    refit_scales(pool, W.data(), H.data(), N, K, b);
    scales.push_back(b.scales);
  }
  for (size_t i = 1; i < scales.size(); ++i) EXPECT_EQ(scales[0], scales[i]) << i;
  EXPECT_NE(scales[0], a.scales);
}

// A row whose codes all sit at the zero (an all-zero row) and dead inputs keep their scales.
TEST(QuantRefit, DegenerateRowsAndDeadInputsKeepTheirScales) {
  const int64_t N = 4, K = 128, n = 256;
  auto W = weights_with_outliers(size_t(N * K), 91);
  for (int64_t k = 0; k < K; ++k) W[size_t(k)] = 0.f;  // row 0 all zero
  auto X = correlated_inputs(n, K, 92);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < 64; ++k) X[size_t(t * K + k)] = 0.f;  // the first group's inputs are dead
  const auto H = hessian_of(X, n, K);
  QuantSpec spec;
  spec.group_size = 64;
  const QuantResult a = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
  QuantResult b = a;
  refit_scales(test_pool(), W.data(), H.data(), N, K, b);
  EXPECT_EQ(b.scales[0], a.scales[0]);
  EXPECT_EQ(b.scales[size_t(N)], a.scales[size_t(N)]);
  for (int64_t r = 0; r < N; ++r) EXPECT_EQ(b.scales[size_t(r)], a.scales[size_t(r)]) << r;  // dead group
  for (float s : b.scales) EXPECT_TRUE(std::isfinite(s) && s > 0.f);
}

TEST(QuantRefit, ParseRefit) {
  EXPECT_EQ(parse_refit("none"), Refit::kNone);
  EXPECT_EQ(parse_refit("hessian"), Refit::kHessian);
  EXPECT_STREQ(refit_name(Refit::kHessian), "hessian");
  EXPECT_STREQ(refit_name(Refit::kNone), "none");
  EXPECT_THROW(parse_refit("diag"), gptq::Error);
}
