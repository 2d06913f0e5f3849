// The quantizer grid, the Hessian accumulator and the GPTQ solver, the latter against a float64
// textbook (unblocked, eager-update) GPTQ loop written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/half.h"
#include "gptq/error.h"
#include "io/gptq_format.h"
#include "random_layers.h"
#include "test_pool.h"
#include "quant/gptq.h"
#include "quant/gptq_plan.h"
#include "backend/cpu/hessian.h"
#include "quant/quantizer.h"
#include "quant/solver.h"
#include "backend/cpu/cpu_features.h"
#include "backend/backend.h"

using namespace gptq::quant;
using gptq_test::correlated_inputs;
using gptq_test::hessian_of;
using gptq_test::layer_error;
using gptq_test::randn;
using gptq_test::weights_with_outliers;

namespace {

// Upper Cholesky factor U of A (A = U^T U). A: [K, K] double.
std::vector<double> cholesky_upper(std::vector<double> A, int64_t K) {
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t k = 0; k < j; ++k) A[size_t(j * K + j)] -= A[size_t(k * K + j)] * A[size_t(k * K + j)];
    A[size_t(j * K + j)] = std::sqrt(A[size_t(j * K + j)]);
    for (int64_t i = j + 1; i < K; ++i) {
      for (int64_t k = 0; k < j; ++k) A[size_t(j * K + i)] -= A[size_t(k * K + j)] * A[size_t(k * K + i)];
      A[size_t(j * K + i)] /= A[size_t(j * K + j)];
    }
    for (int64_t i = 0; i < j; ++i) A[size_t(j * K + i)] = 0;
  }
  return A;
}

std::vector<double> inverse(std::vector<double> A, int64_t K) {  // Gauss-Jordan, SPD input
  std::vector<double> I(size_t(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i) I[size_t(i * K + i)] = 1;
  for (int64_t c = 0; c < K; ++c) {
    const double p = A[size_t(c * K + c)];
    for (int64_t j = 0; j < K; ++j) {
      A[size_t(c * K + j)] /= p;
      I[size_t(c * K + j)] /= p;
    }
    for (int64_t r = 0; r < K; ++r) {
      if (r == c) continue;
      const double f = A[size_t(r * K + c)];
      for (int64_t j = 0; j < K; ++j) {
        A[size_t(r * K + j)] -= f * A[size_t(c * K + j)];
        I[size_t(r * K + j)] -= f * I[size_t(c * K + j)];
      }
    }
  }
  return I;
}

// Textbook GPTQ in float64: explicit Hinv, upper Cholesky, one column at a time with the error
// pushed into every later column immediately. The only concession to fasterquant is where group
// grids are read from: the W of the last block start (see gptq.h), which equals the fully
// updated W at block starts.
struct RefResult {
  std::vector<uint8_t> codes;  // [N, K] original order
  std::vector<float> scales;   // [n_groups, N]
};
RefResult reference_gptq(const std::vector<float>& W0, const std::vector<float>& H0, int64_t N, int64_t K,
                         const QuantSpec& spec) {
  const int maxq = (1 << spec.bits) - 1;
  const int64_t G = spec.group_size == -1 ? K : spec.group_size, ng = (K + G - 1) / G;
  RefResult res{std::vector<uint8_t>(size_t(N * K)), std::vector<float>(size_t(ng * N))};
  std::vector<GridParams> row_grid(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) row_grid[size_t(n)] = find_params(W0.data() + n * K, K, maxq, spec.sym);
  std::vector<double> H(H0.begin(), H0.end());
  std::vector<float> Wd = W0;  // dead-zeroed, original order
  for (int64_t k = 0; k < K; ++k)
    if (H[size_t(k * K + k)] == 0) {
      H[size_t(k * K + k)] = 1;
      for (int64_t n = 0; n < N; ++n) Wd[size_t(n * K + k)] = 0;
    }
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (spec.desc_act)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return H[size_t(a * K + a)] > H[size_t(b * K + b)]; });
  double mean = 0;
  for (int64_t k = 0; k < K; ++k) mean += H[size_t(k * K + k)] / double(K);
  std::vector<double> Hp(size_t(K * K));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) Hp[size_t(i * K + j)] = H[size_t(perm[size_t(i)] * K + perm[size_t(j)])];
  for (int64_t i = 0; i < K; ++i) Hp[size_t(i * K + i)] += spec.damp_percent * mean;
  const auto U = cholesky_upper(inverse(Hp, K), K);

  std::vector<double> Wp(size_t(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < K; ++i) Wp[size_t(n * K + i)] = Wd[size_t(n * K + perm[size_t(i)])];
  std::vector<float> snap(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    double* w = Wp.data() + n * K;
    GridParams p = row_grid[size_t(n)];
    for (int64_t i = 0; i < K; ++i) {
      if (i % spec.block_size == 0)
        for (int64_t j = 0; j < K; ++j) snap[size_t(j)] = float(w[j]);
      if (spec.group_size != -1) {
        if (spec.static_groups) {
          const int64_t g = perm[size_t(i)] / G, k0 = g * G, len = std::min(G, K - k0);
          p = find_params(Wd.data() + n * K + k0, len, maxq, spec.sym);
        } else if (i % G == 0) {
          p = find_params(snap.data() + i, std::min(G, K - i), maxq, spec.sym);
          res.scales[size_t((i / G) * N + n)] = p.scale;
        }
      }
      const float q = quantize_code(float(w[i]), p.scale, p.zero, maxq);
      res.codes[size_t(n * K + perm[size_t(i)])] = uint8_t(q);
      const double err = (w[i] - double(dequantize_code(q, p.scale, p.zero))) / U[size_t(i * K + i)];
      for (int64_t j = i + 1; j < K; ++j) w[j] -= err * U[size_t(i * K + j)];
    }
  }
  return res;
}

}  // namespace

TEST(QuantGrid, FindParamsAndRounding) {
  GridParams p = find_params(std::vector<float>(4, 0.f).data(), 4, 15, true);  // all zero
  EXPECT_FLOAT_EQ(p.scale, 2.f / 15.f);
  EXPECT_EQ(p.zero, 8.f);
  p = find_params(std::vector<float>(4, 0.f).data(), 4, 15, false);
  EXPECT_EQ(p.zero, 7.f);  // fp32: 1 / (2/15) = 7.4999996, as in the reference
  const std::vector<float> pos = {0.5f, 1.5f, 3.0f};
  p = find_params(pos.data(), 3, 15, true);  // no negative value: xmin stays 0 (reference quirk)
  EXPECT_FLOAT_EQ(p.scale, 3.f / 15.f);
  EXPECT_EQ(p.zero, 8.f);
  const std::vector<float> mixed = {-1.f, 0.25f, 3.f};
  p = find_params(mixed.data(), 3, 7, false);
  EXPECT_FLOAT_EQ(p.scale, 4.f / 7.f);
  EXPECT_EQ(p.zero, std::nearbyint(1.f / (4.f / 7.f)));
  p = find_params(mixed.data(), 3, 7, true);
  EXPECT_FLOAT_EQ(p.scale, 6.f / 7.f);
  EXPECT_EQ(p.zero, 4.f);
  EXPECT_EQ(quantize_code(2.5f, 1.f, 0.f, 15), 2.f);   // ties to even
  EXPECT_EQ(quantize_code(3.5f, 1.f, 0.f, 15), 4.f);
  EXPECT_EQ(quantize_code(-9.f, 1.f, 8.f, 15), 0.f);   // clamped
  EXPECT_EQ(quantize_code(100.f, 1.f, 8.f, 15), 15.f);
}

// Rows of Gaussian weights where ~1 % of the entries are outliers (x8): the case where clipping
// the min-max range pays, as in real linears.
TEST(QuantGrid, MseSearchNeverRaisesAndUsuallyLowersTheHessianWeightedGroupError) {
  const int64_t rows = 64;
  for (int64_t G : {int64_t(128), int64_t(384)})  // a g128 group; a whole row (group_size -1) of 384
    for (int bits : {2, 3, 4})
      for (bool sym : {true, false}) {
        const int maxq = max_code(bits);
        const auto W = weights_with_outliers(size_t(rows * G), uint32_t(G + bits * 10 + sym));
        std::vector<float> h = randn(size_t(G), uint32_t(G + bits), 1.f);
        for (auto& x : h) x = x * x + 0.01f;  // a Hessian diagonal: positive, uneven
        int lowered = 0;
        double sum_mse = 0, sum_minmax = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const float* x = W.data() + r * G;
          const GridParams a = find_params(x, G, maxq, sym);
          const GridParams b = find_params_mse(x, h.data(), G, maxq, sym);
          const double ea = grid_error(x, h.data(), G, a, maxq), eb = grid_error(x, h.data(), G, b, maxq);
          EXPECT_LE(eb, ea) << "G " << G << " bits " << bits << " sym " << sym << " row " << r;
          EXPECT_GE(b.zero, 0.f);
          EXPECT_LE(b.zero, float(maxq));
          if (sym) {
            EXPECT_EQ(b.zero, a.zero);  // symmetric grids keep the zero, only the scale shrinks
          }
          lowered += eb < ea;
          sum_mse += eb;
          sum_minmax += ea;
        }
        // With outliers the search finds a better clip for most groups, and a clearly lower total.
        EXPECT_GT(lowered, rows / 2) << "G " << G << " bits " << bits << " sym " << sym;
        EXPECT_LT(sum_mse, 0.9 * sum_minmax) << "G " << G << " bits " << bits << " sym " << sym;
      }
}

// The shrink search scores 8 candidates at once with AVX2: the same grids, bit for bit, as the
// scalar loop, on random and outlier groups, all-zero and constant groups, tiny values (denormal
// scales), with and without Hessian weights (zero weights included), every width.
TEST(QuantGrid, MseSearchIsTheSameAtEverySimdLevel) {
  using gptq::cpu::SimdLevel;
  if (gptq::cpu::detected_simd() < SimdLevel::kAvx2) GTEST_SKIP() << "this CPU has no AVX2: only the scalar loop runs";
  struct Scope {
    ~Scope() { gptq::cpu::force_simd(SimdLevel::kAvx512); }
  } restore;
  int cases = 0;
  for (int64_t G : {int64_t(1), int64_t(7), int64_t(32), int64_t(128), int64_t(300)})
    for (int kind = 0; kind < 5; ++kind) {
      std::vector<float> x = kind == 0 ? randn(size_t(G), uint32_t(G + 1)) : weights_with_outliers(size_t(G), uint32_t(G + 2));
      if (kind == 2) std::fill(x.begin(), x.end(), 0.f);
      if (kind == 3) std::fill(x.begin(), x.end(), -0.25f);
      if (kind == 4)
        for (auto& v : x) v *= 1e-39f;  // denormal values and scales
      std::vector<float> h = randn(size_t(G), uint32_t(G + 3), 1.f);
      for (size_t i = 0; i < h.size(); ++i) h[i] = i % 5 == 0 ? 0.f : h[i] * h[i];
      for (int bits : {2, 3, 4, 8})
        for (bool sym : {true, false})
          for (const float* hw : {static_cast<const float*>(nullptr), static_cast<const float*>(h.data())}) {
            const int maxq = max_code(bits);
            gptq::cpu::force_simd(SimdLevel::kScalar);
            const GridParams a = find_params_mse(x.data(), hw, G, maxq, sym);
            gptq::cpu::force_simd(SimdLevel::kAvx512);
            const GridParams b = find_params_mse(x.data(), hw, G, maxq, sym);
            EXPECT_EQ(0, std::memcmp(&a, &b, sizeof(a)))
                << "G " << G << " kind " << kind << " bits " << bits << " sym " << sym << ": scale " << a.scale
                << " vs " << b.scale << ", zero " << a.zero << " vs " << b.zero;
            ++cases;
          }
    }
  EXPECT_EQ(cases, 5 * 5 * 4 * 2 * 2);
}

// The CPU solver's module error, tr((W-Q) H (W-Q)ᵀ) / tr(W H Wᵀ) from H's block triangle, against
// the full product in double: K below, at and across its 256-input blocks (608: a partial last one).
TEST(QuantGptq, HostModuleErrorMatchesTheFullProduct) {
  auto be = gptq::make_cpu_backend({2});
  const auto solver = make_solver(*be, test_pool());
  for (int64_t K : {int64_t(96), int64_t(256), int64_t(608)}) {
    const int64_t N = 64, n = 2 * K;
    const auto X = correlated_inputs(n, K, uint32_t(K));
    auto acc = be->hessian(K);
    std::shared_ptr<void> mem;
    const gptq::Tensor dx = be->alloc_f32(n, K, mem);
    be->from_host(X.data(), dx);
    acc->add(dx, 1);
    const std::vector<float> H = acc->host();
    const auto W = weights_with_outliers(size_t(N * K), uint32_t(K + 1));
    QuantSpec spec;
    spec.bits = 3;
    spec.group_size = 32;
    const QuantResult r = solver->solve(W.data(), *acc, N, K, spec);
    const PackedQuant pq = pack_result(r, QuantFormat::kGptqV2);
    const std::vector<float> Q = dequantize(pq.view());
    double num = 0, den = 0;
    for (int64_t row = 0; row < N; ++row)
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < K; ++j) {
          const double h = H[size_t(i * K + j)];
          const double wi = W[size_t(row * K + i)], wj = W[size_t(row * K + j)];
          num += (wi - Q[size_t(row * K + i)]) * h * (wj - Q[size_t(row * K + j)]);
          den += wi * h * wj;
        }
    const double got = solver->module_error(W.data(), pq.view(), *acc);
    EXPECT_NEAR(got, num / den, 1e-5 * num / den) << "K " << K;
    EXPECT_GT(got, 0) << "K " << K;
  }
}

TEST(QuantGrid, MseSearchKeepsMinMaxWhenNothingIsBetter) {
  // Zero weights score every candidate 0: the min-max grid (p = 1) stays.
  const auto x = weights_with_outliers(128, 5);
  const std::vector<float> h0(128, 0.f);
  for (bool sym : {true, false}) {
    const GridParams a = find_params(x.data(), 128, 15, sym), b = find_params_mse(x.data(), h0.data(), 128, 15, sym);
    EXPECT_EQ(a.scale, b.scale);
    EXPECT_EQ(a.zero, b.zero);
  }
  // Values on the min-max grid itself quantize exactly: nothing can beat error 0.
  const std::vector<float> on_grid = {-7.f, -3.f, 0.f, 1.f, 8.f};
  const GridParams a = find_params(on_grid.data(), 5, 15, false), b = find_params_mse(on_grid.data(), nullptr, 5, 15, false);
  EXPECT_EQ(grid_error(on_grid.data(), nullptr, 5, a, 15), 0.0);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_EQ(a.zero, b.zero);
  // The Hessian weighting matters: an outlier on a column of weight ~0 is clipped away, one on a
  // heavy column is kept (the plain error would treat the two rows alike).
  std::vector<float> row(128, 0.f);
  for (int i = 0; i < 128; ++i) row[size_t(i)] = 0.01f * float((i * 37) % 21 - 10);
  row[3] = 1.f;
  std::vector<float> light(128, 1.f), heavy(128, 1.f);
  light[3] = 1e-6f;
  heavy[3] = 1e6f;
  const GridParams pl = find_params_mse(row.data(), light.data(), 128, 15, true);
  const GridParams ph = find_params_mse(row.data(), heavy.data(), 128, 15, true);
  EXPECT_LT(pl.scale, 0.5f * ph.scale);
  EXPECT_EQ(find_grid(Grid::kMinMax, row.data(), light.data(), 128, 15, true).scale, find_params(row.data(), 128, 15, true).scale);
  EXPECT_EQ(find_grid(Grid::kMse, row.data(), light.data(), 128, 15, true).scale, pl.scale);
}

TEST(QuantGrid, ParseGrid) {
  EXPECT_EQ(parse_grid("minmax"), Grid::kMinMax);
  EXPECT_EQ(parse_grid("mse"), Grid::kMse);
  EXPECT_STREQ(grid_name(Grid::kMse), "mse");
  try {
    parse_grid("MSE");
    ADD_FAILURE() << "no error";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--grid must be minmax or mse"), std::string::npos) << e.what();
  }
}

TEST(QuantHessian, MatchesRunningAverageOfBatches) {
  // (600, 5): several tiles of the upper-triangle sweep; (40, 300): tokens split into chunks.
  for (auto [K, T] : {std::pair<int64_t, int64_t>{40, 5}, {600, 5}, {40, 300}}) {
    const auto X1 = randn(size_t(2 * T * K), 11), X2 = randn(size_t(3 * T * K), 12);
    gptq::cpu::HessianAccumulator acc(test_pool(), K);
    acc.add_batch(X1.data(), 2, T);
    acc.add_batch(X2.data(), 3, T);
    EXPECT_EQ(acc.nsamples(), 5);
    const auto H = acc.take();
    double max_err = 0, max_ref = 0;
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) {
        double s = 0;
        for (int64_t t = 0; t < 2 * T; ++t) s += double(X1[size_t(t * K + i)]) * X1[size_t(t * K + j)];
        for (int64_t t = 0; t < 3 * T; ++t) s += double(X2[size_t(t * K + i)]) * X2[size_t(t * K + j)];
        s *= 2.0 / 5.0;  // 2/nsamples, nsamples counting sequences
        max_err = std::max(max_err, std::fabs(s - H[size_t(i * K + j)]));
        max_ref = std::max(max_ref, std::fabs(s));
      }
    EXPECT_LT(max_err, 1e-5 * max_ref) << "K " << K;
  }
}

TEST(QuantGptq, MatchesFloat64Reference) {
  const int64_t N = 16;
  int cases = 0;
  for (int64_t K : {64, 96})
    for (bool act : {false, true})
      for (bool sym : {true, false})
        for (bool stat : {false, true})
          for (int G : {32, -1}) {
            if (stat && (!act || G == -1)) continue;  // static groups only matter with act-order
            QuantSpec spec;
            spec.bits = 4;
            spec.group_size = G;
            spec.sym = sym;
            spec.desc_act = act;
            spec.static_groups = stat;
            spec.block_size = 48;  // group starts inside blocks, and blocks across groups
            const uint32_t seed = uint32_t(K * 7 + act * 3 + sym * 5 + stat * 11 + (G > 0));
            const auto W = randn(size_t(N * K), seed);
            const auto X = correlated_inputs(256, K, seed + 100);
            const auto H = hessian_of(X, 256, K);
            const QuantResult r = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
            const RefResult ref = reference_gptq(W, H, N, K, spec);
            int64_t diff = 0;
            for (size_t i = 0; i < r.codes.size(); ++i) diff += r.codes[i] != ref.codes[i];
            // fp32 vs fp64 may flip a value lying on a rounding boundary (then its row diverges).
            EXPECT_LE(diff, int64_t(r.codes.size() / 100))
                << "K " << K << " act " << act << " sym " << sym << " static " << stat << " G " << G;
            EXPECT_EQ(r.damp_retries, 0);
            ++cases;
          }
  EXPECT_EQ(cases, 20);
}

TEST(QuantGptq, GidxAndGroupsWithActOrder) {
  const int64_t N = 8, K = 96, G = 32;
  const auto W = randn(size_t(N * K), 3);
  const auto X = correlated_inputs(128, K, 4);
  const auto H = hessian_of(X, 128, K);
  QuantSpec spec;
  spec.group_size = int(G);
  spec.desc_act = true;
  const QuantResult r = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
  // g_idx[perm[i]] = i / G with perm sorting diag(H) descending.
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return H[size_t(a * K + a)] > H[size_t(b * K + b)]; });
  for (int64_t i = 0; i < K; ++i) EXPECT_EQ(r.g_idx[size_t(perm[size_t(i)])], i / G);
  // Every Wq entry is its code on its group's grid, in the original column order.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = r.g_idx[size_t(k)];
      EXPECT_EQ(r.Wq[size_t(n * K + k)], dequantize_code(float(r.codes[size_t(n * K + k)]),
                                                         r.scales[size_t(g * N + n)],
                                                         float(r.zeros[size_t(g * N + n)])));
    }
  spec.static_groups = true;
  const QuantResult s = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
  for (int64_t k = 0; k < K; ++k) EXPECT_EQ(s.g_idx[size_t(k)], k / G);
}

TEST(QuantGptq, BeatsRtnOnLayerObjective) {
  const int64_t N = 32, K = 128, n = 512;
  const auto W = randn(size_t(N * K), 21, 0.05f);
  const auto X = correlated_inputs(n, K, 22);
  const auto H = hessian_of(X, n, K);
  for (int bits : {2, 3, 4})
    for (bool act : {false, true}) {
      QuantSpec spec;
      spec.bits = bits;
      spec.group_size = 32;
      spec.desc_act = act;
      const QuantResult g = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
      const QuantResult r = rtn_quantize(test_pool(), W.data(), N, K, spec);
      const double eg = layer_error(W, g.Wq, X, N, K, n), er = layer_error(W, r.Wq, X, N, K, n);
      EXPECT_LT(eg, 0.8 * er) << "bits " << bits << " act " << act << ": gptq " << eg << " rtn " << er;
    }
}

// The solver with Grid::kMse: whole-row grids are find_params_mse of the row weighted by diag(H);
// every configuration (sym/asym, g128 / whole row, act-order, static groups) gives a layer error
// no worse than min-max's on outlier weights, RTN too.
TEST(QuantGptq, MseGridLowersLayerErrorInEveryConfiguration) {
  const int64_t N = 32, K = 256, n = 512;
  const auto W = weights_with_outliers(size_t(N * K), 51);
  const auto X = correlated_inputs(n, K, 52);
  const auto H = hessian_of(X, n, K);
  for (int bits : {3, 4})
    for (bool sym : {true, false})
      for (int G : {128, -1})
        for (int order = 0; order < 3; ++order) {  // plain, act-order, act-order + static groups
          if (G == -1 && order == 2) continue;
          QuantSpec spec;
          spec.bits = bits;
          spec.sym = sym;
          spec.group_size = G;
          spec.desc_act = order > 0;
          spec.static_groups = order == 2;
          const std::string what = "bits " + std::to_string(bits) + " sym " + std::to_string(sym) + " G " +
                                   std::to_string(G) + " order " + std::to_string(order);
          const QuantResult a = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
          spec.grid = Grid::kMse;
          const QuantResult b = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
          const double ea = layer_error(W, a.Wq, X, N, K, n), eb = layer_error(W, b.Wq, X, N, K, n);
          EXPECT_LT(eb, ea) << what << ": mse " << eb << " minmax " << ea;
          if (G == -1) {
            std::vector<float> hd(static_cast<size_t>(K));
            for (int64_t k = 0; k < K; ++k) hd[size_t(k)] = H[size_t(k * K + k)];
            for (int64_t r = 0; r < N; ++r) {
              const GridParams p = find_params_mse(W.data() + r * K, hd.data(), K, max_code(bits), sym);
              EXPECT_EQ(b.scales[size_t(r)], p.scale) << what;
              EXPECT_EQ(float(b.zeros[size_t(r)]), p.zero) << what;
            }
          }
          if (order == 0) {
            spec.grid = Grid::kMinMax;
            const QuantResult ra = rtn_quantize(test_pool(), W.data(), N, K, spec);
            spec.grid = Grid::kMse;
            const QuantResult rb = rtn_quantize(test_pool(), W.data(), N, K, spec);
            double pa = 0, pb = 0;  // RTN's search weighs columns alike: the plain weight error drops
            for (size_t i = 0; i < W.size(); ++i) {
              pa += (W[i] - ra.Wq[i]) * (W[i] - ra.Wq[i]);
              pb += (W[i] - rb.Wq[i]) * (W[i] - rb.Wq[i]);
            }
            EXPECT_LT(pb, pa) << what;
          }
        }
}

// group_order: the natural layout (g_idx = k / G, each group's grid indexed by its own columns)
// quantized groups-by-mass, columns-by-diagonal; a partial last group; one group = act-order.
TEST(QuantGptq, GroupOrderKeepsTheNaturalLayout) {
  const int64_t N = 16, K = 200, G = 64;  // 3 full groups and one of 8
  const auto W = weights_with_outliers(size_t(N * K), 61);
  auto X = correlated_inputs(256, K, 62);
  for (int64_t t = 0; t < 256; ++t)  // the last full group carries the most Hessian mass
    for (int64_t k = 128; k < 192; ++k) X[size_t(t * K + k)] *= 3.f;
  const auto H = hessian_of(X, 256, K);
  for (bool sym : {true, false}) {
    QuantSpec spec;
    spec.group_size = int(G);
    spec.sym = sym;
    const QuantResult a = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
    spec.group_order = true;
    const QuantResult b = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
    EXPECT_NE(a.codes, b.codes);  // another order, another solution
    for (int64_t k = 0; k < K; ++k) EXPECT_EQ(b.g_idx[size_t(k)], k / G);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = k / G;
        EXPECT_EQ(b.Wq[size_t(n * K + k)], dequantize_code(float(b.codes[size_t(n * K + k)]), b.scales[size_t(g * N + n)],
                                                           float(b.zeros[size_t(g * N + n)])));
      }
    // The same algorithm in another order: a layer error of the same size (which order wins
    // depends on the data; the measurement is in docs/measurements.md).
    const double ea = layer_error(W, a.Wq, X, N, K, 256), eb = layer_error(W, b.Wq, X, N, K, 256);
    EXPECT_LT(eb, 1.2 * ea) << "sym " << sym << ": group order " << eb << " natural " << ea;
    // With one group per row it is act-order.
    spec.group_size = -1;
    const QuantResult c = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
    spec.group_order = false;
    spec.desc_act = true;
    const QuantResult d = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
    EXPECT_EQ(c.codes, d.codes);
    EXPECT_EQ(c.scales, d.scales);
  }
}

TEST(QuantGptq, DeadColumnsAndDampingRetries) {
  const int64_t N = 8, K = 64;
  const auto W = randn(size_t(N * K), 31);
  auto X = correlated_inputs(128, K, 32);
  for (int64_t t = 0; t < 128; ++t) X[size_t(t * K + 5)] = 0.f;  // input 5 never active
  auto H = hessian_of(X, 128, K);
  QuantSpec spec;
  spec.group_size = 32;
  spec.sym = false;
  QuantResult r = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
  EXPECT_EQ(r.dead_columns, 1);
  for (int64_t n = 0; n < N; ++n) EXPECT_EQ(r.Wq[size_t(n * K + 5)], 0.f);

  // An indefinite H: diag entry -0.5 with mean(diag) ~ 1 needs damp_percent 1.0 (two retries).
  std::vector<float> Hi(size_t(K * K), 0.f);
  for (int64_t k = 0; k < K; ++k) Hi[size_t(k * K + k)] = k == 0 ? -0.5f : 1.f;
  r = gptq_quantize(test_pool(), W.data(), Hi.data(), N, K, spec);
  EXPECT_EQ(r.damp_retries, 2);
  EXPECT_NEAR(r.damp_percent, 1.0, 1e-12);
  spec.max_damp_retries = 1;
  EXPECT_THROW(gptq_quantize(test_pool(), W.data(), Hi.data(), N, K, spec), gptq::Error);
}

// The linears of one stage share the Hessian and are solved stacked (pipeline/quantize.cpp):
// each part's rows sliced out of the stacked result are exactly its own solve's, in every order
// and grid, with a dead input, on part heights that split the solver's row chunks unevenly.
TEST(QuantGptq, StackedSolveSlicesAreTheSeparateSolves) {
  const int64_t K = 96, Ns[3] = {24, 7, 40};
  auto X = correlated_inputs(192, K, 61);
  for (int64_t t = 0; t < 192; ++t) X[size_t(t * K + 9)] = 0.f;
  const auto H = hessian_of(X, 192, K);
  std::vector<std::vector<float>> parts;
  std::vector<float> stacked;
  for (int i = 0; i < 3; ++i) {
    parts.push_back(weights_with_outliers(size_t(Ns[i] * K), 62 + i));
    stacked.insert(stacked.end(), parts.back().begin(), parts.back().end());
  }
  for (int order = 0; order < 4; ++order)
    for (int G : {32, -1}) {
      if (G == -1 && order == 2) continue;
      QuantSpec spec;
      spec.group_size = G;
      spec.sym = order % 2 == 0;
      spec.grid = order < 2 ? Grid::kMse : Grid::kMinMax;
      spec.desc_act = order == 1 || order == 2;
      spec.static_groups = order == 2;
      spec.group_order = order == 3;
      const std::string what = gptq::cat("order ", order, " g", G);
      const QuantResult all = gptq_quantize(test_pool(), stacked.data(), H.data(), 71, K, spec);
      ASSERT_EQ(all.row_loss.size(), 71u);
      int64_t r0 = 0;
      for (int i = 0; i < 3; ++i) {
        const QuantResult one = gptq_quantize(test_pool(), parts[size_t(i)].data(), H.data(), Ns[i], K, spec);
        const QuantResult s = slice_rows(all, r0, Ns[i]);
        r0 += Ns[i];
        EXPECT_EQ(s.N, one.N) << what;
        EXPECT_EQ(s.codes, one.codes) << what << " part " << i;
        EXPECT_EQ(s.scales, one.scales) << what << " part " << i;
        EXPECT_EQ(s.zeros, one.zeros) << what << " part " << i;
        EXPECT_EQ(s.g_idx, one.g_idx) << what << " part " << i;
        EXPECT_EQ(s.Wq, one.Wq) << what << " part " << i;
        EXPECT_EQ(s.row_loss, one.row_loss) << what << " part " << i;
        EXPECT_EQ(s.loss, one.loss) << what << " part " << i;
        EXPECT_EQ(s.dead_columns, 1) << what;
        EXPECT_EQ(s.damp_percent, one.damp_percent) << what;
      }
    }
  // RTN's rows are independent too (the pipeline stacks it the same way).
  const QuantResult all = rtn_quantize(test_pool(), stacked.data(), 71, K, QuantSpec{});
  const QuantResult one = rtn_quantize(test_pool(), parts[2].data(), 40, K, QuantSpec{});
  const QuantResult s = slice_rows(all, 31, 40);
  EXPECT_EQ(s.codes, one.codes);
  EXPECT_EQ(s.scales, one.scales);
  EXPECT_EQ(s.zeros, one.zeros);
  EXPECT_EQ(s.Wq, one.Wq);
}

// The host plan both solvers share (quant/gptq_plan.h). The CUDA column kernel finds group starts
// where col_group changes, so it must change exactly at multiples of G without static groups, in
// every order; the rest is what gptq.h says.
TEST(QuantGptq, ColumnPlanOfEveryOrder) {
  const int64_t K = 200;  // no multiple of 32, 64 or 128
  std::vector<float> d = randn(size_t(K), 71);
  for (auto& x : d) x = x * x + 0.1f;
  d[5] = d[77] = 0.f;
  for (int G : {32, 64, 128, -1})
    for (int order = 0; order < 4; ++order) {  // natural, act-order, act-order + static, group order
      QuantSpec spec;
      spec.group_size = G;
      spec.desc_act = order == 1 || order == 2;
      spec.static_groups = order == 2;
      spec.group_order = order == 3;
      const ColumnPlan p = plan_columns(d.data(), K, spec);
      const std::string what = "G " + std::to_string(G) + " order " + std::to_string(order);
      const int64_t g = G == -1 ? K : G;
      EXPECT_EQ(p.G, g) << what;
      EXPECT_EQ(p.dead_columns, 2) << what;
      EXPECT_EQ(p.diag[5], 1.f);
      EXPECT_EQ(p.hdiag[5], 0.f);
      EXPECT_EQ(p.dead[77], 1);
      double mean = 0;
      for (float x : p.diag) mean += x;
      EXPECT_EQ(p.mean_diag, mean / double(K));
      std::vector<int64_t> sorted = p.perm;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t k = 0; k < K; ++k) ASSERT_EQ(sorted[size_t(k)], k) << what << ": perm is no permutation";
      for (int64_t i = 0; i < K; ++i) EXPECT_EQ(p.hperm[size_t(i)], p.hdiag[size_t(p.perm[size_t(i)])]);
      if (order == 0) {
        for (int64_t i = 0; i < K; ++i) EXPECT_EQ(p.perm[size_t(i)], i);
      }
      if (order == 1 || order == 2 || (order == 3 && G == -1)) {
        for (int64_t i = 1; i < K; ++i) EXPECT_GE(p.diag[size_t(p.perm[size_t(i - 1)])], p.diag[size_t(p.perm[size_t(i)])]);
      }
      for (int64_t i = 0; i < K; ++i) {
        const int32_t cg = p.col_group[size_t(i)];
        if (G == -1) {
          EXPECT_EQ(cg, 0);
        } else if (order == 2 || order == 3) {
          EXPECT_EQ(cg, p.perm[size_t(i)] / g) << what;  // the original group
        } else {
          EXPECT_EQ(cg, i / g) << what;
        }
        if (G != -1 && order != 2 && i > 0) {
          EXPECT_EQ(cg != p.col_group[size_t(i - 1)], i % g == 0) << what << " column " << i;
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const int32_t want = G == -1 ? 0 : order == 1 ? -1 : int32_t(k / g);
        if (want >= 0) {
          EXPECT_EQ(p.g_idx[size_t(k)], want) << what;
        }
      }
      if (order == 1 && G != -1) {
        for (int64_t i = 0; i < K; ++i) EXPECT_EQ(p.g_idx[size_t(p.perm[size_t(i)])], i / g);
      }
    }
}

// factor_with_damping: x10 per retry (0 → 0.01), the fields of what succeeded, the error after
// the last retry.
TEST(QuantGptq, FactorWithDampingRetries) {
  QuantSpec spec;
  spec.damp_percent = 0;
  spec.max_damp_retries = 3;
  std::vector<double> tried;
  QuantResult r;
  factor_with_damping(spec, 2.0, [&](double damp) { tried.push_back(damp); return damp >= 0.2; }, r);
  EXPECT_EQ(tried, (std::vector<double>{0.0, 0.02, 0.2}));
  EXPECT_EQ(r.damp_retries, 2);
  EXPECT_EQ(r.damp_percent, 0.1);
  EXPECT_EQ(r.damp, 0.2);
  spec.max_damp_retries = 1;
  try {
    factor_with_damping(spec, 2.0, [](double) { return false; }, r);
    ADD_FAILURE() << "no error";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not positive definite even with damp_percent 0.01 (1 retries)"), std::string::npos)
        << e.what();
  }
}

TEST(QuantGptq, PackedResultDequantizesToWq) {
  const int64_t N = 64, K = 96;
  auto W = randn(size_t(N * K), 41);
  // Row 3 all positive: asymmetric grids keep xmin at 0 there, so its zeros are 0 and wrap in v1.
  for (int64_t k = 0; k < K; ++k) W[size_t(3 * K + k)] = std::fabs(W[size_t(3 * K + k)]) + 0.05f;
  const auto X = correlated_inputs(128, K, 42);
  const auto H = hessian_of(X, 128, K);
  int64_t wrapped_entries = 0;
  for (int bits : {2, 3, 4, 8})
    for (auto fmt : {QuantFormat::kGptqV1, QuantFormat::kGptqV2}) {
      QuantSpec spec;
      spec.bits = bits;
      spec.group_size = 32;
      spec.sym = false;
      spec.desc_act = true;
      const QuantResult r = gptq_quantize(test_pool(), W.data(), H.data(), N, K, spec);
      const PackedQuant p = pack_result(r, fmt);
      const int64_t zero_zeros = std::count(r.zeros.begin(), r.zeros.end(), 0);
      EXPECT_EQ(p.wrapped_zeros, fmt == QuantFormat::kGptqV1 ? zero_zeros : 0) << "bits " << bits;
      const auto Wd = dequantize(p.view());
      for (size_t i = 0; i < Wd.size(); ++i) {
        const int64_t n = int64_t(i) / K, k = int64_t(i) % K, g = r.g_idx[size_t(k)];
        if (fmt == QuantFormat::kGptqV1 && r.zeros[size_t(g * N + n)] == 0) {
          // v1 stores zero-1 = -1 masked to 2^b-1; loaders add 1 back unmasked and read 2^b (format.h).
          const float s = gptq::fp16_to_fp32(gptq::fp32_to_fp16(r.scales[size_t(g * N + n)]));
          EXPECT_EQ(Wd[i], s * float(int(r.codes[i]) - (1 << bits))) << "bits " << bits << " wrapped zero";
          ++wrapped_entries;
          continue;
        }
        // Only the fp16 rounding of the scale separates the two.
        EXPECT_NEAR(Wd[i], r.Wq[i], 1e-3 * std::fabs(r.Wq[i]) + 1e-7) << "bits " << bits;
      }
    }
  // Row 3's zeros are 0: the wrapped branch above really ran.
  EXPECT_NE(wrapped_entries, 0) << "the test data no longer exercises the v1 zero wrap";
}

TEST(QuantGptq, RejectsBadSpecs) {
  const std::vector<float> W(64 * 4, 1.f), H(64 * 64, 0.f);
  QuantSpec spec;
  spec.bits = 5;
  EXPECT_THROW(gptq_quantize(test_pool(), W.data(), H.data(), 4, 64, spec), gptq::Error);
  EXPECT_THROW(rtn_quantize(test_pool(), W.data(), 4, 64, spec), gptq::Error);
  spec = QuantSpec{};
  spec.group_size = 0;
  EXPECT_THROW(gptq_quantize(test_pool(), W.data(), H.data(), 4, 64, spec), gptq::Error);
  spec = QuantSpec{};
  spec.damp_percent = -0.1;
  EXPECT_THROW(gptq_quantize(test_pool(), W.data(), H.data(), 4, 64, spec), gptq::Error);
}
