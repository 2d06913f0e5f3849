// qgemm against dequantize() followed by a float64 matmul, for every bits / group layout /
// act-order / zero convention, several T (decode and prefill paths), every ISA this CPU has.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/qgemm.h"
#include "core/half.h"
#include "gptq/error.h"
#include "io/gptq_format.h"
#include "test_pool.h"

using namespace gptq::quant;
using namespace gptq::cpu;

namespace {

struct Case {
  int bits;
  int group_size;
  bool act_order;
  bool sym;
  QuantFormat format;
  bool bias;
};

std::string describe(const Case& c) {
  return "bits " + std::to_string(c.bits) + " G " + std::to_string(c.group_size) + " act " +
         std::to_string(c.act_order) + " sym " + std::to_string(c.sym) + " " + format_name(c.format) +
         (c.bias ? " bias" : "");
}

// A random checkpoint layer: random codes, positive fp16 scales, zeros 2^(b-1) (sym) or random
// including 0 (asym; v1 then wraps it, which dequantize and qgemm must agree on).
PackedQuant random_layer(const Case& c, int64_t K, int64_t N, uint32_t seed) {
  std::mt19937 rng(seed);
  const int maxq = (1 << c.bits) - 1;
  const int64_t G = c.group_size == -1 ? K : c.group_size, ng = (K + G - 1) / G;
  std::vector<uint8_t> codes(size_t(N * K));
  for (auto& q : codes) q = uint8_t(rng() % uint32_t(maxq + 1));
  std::vector<float> scales(size_t(ng * N)), bias(static_cast<size_t>(N));
  std::uniform_real_distribution<float> us(0.001f, 0.02f), ub(-1.f, 1.f);
  for (auto& s : scales) s = us(rng);
  for (auto& b : bias) b = ub(rng);
  std::vector<int32_t> zeros(size_t(ng * N));
  for (auto& z : zeros) z = c.sym ? (maxq + 1) / 2 : int32_t(rng() % uint32_t(maxq + 1));
  std::vector<int32_t> g_idx(static_cast<size_t>(K));
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (c.act_order) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < K; ++i) g_idx[size_t(perm[size_t(i)])] = int32_t(i / G);
  return pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), c.bias ? bias.data() : nullptr,
                        c.bits, c.group_size, K, N, c.format);
}

// y_ref = x W^T + bias in float64 from the reference dequantize. x: [T, K] -> [T, N].
std::vector<double> reference_product(const PackedQuant& p, const std::vector<float>& W, const std::vector<float>& x,
                                      int64_t T) {
  const int64_t K = p.K, N = p.N;
  std::vector<double> y(size_t(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = p.bias.empty() ? 0.0 : double(gptq::fp16_to_fp32(p.bias[size_t(n)]));
      for (int64_t k = 0; k < K; ++k) s += double(x[size_t(t * K + k)]) * W[size_t(n * K + k)];
      y[size_t(t * N + n)] = s;
    }
  return y;
}

// ||y - y_ref|| / ||y_ref||
double normalized_error(const std::vector<double>& ref, const std::vector<float>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(y[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<QgemmIsa> isas() {
  std::vector<QgemmIsa> v = {QgemmIsa::kScalar};
  for (QgemmIsa i : {QgemmIsa::kAvx2, QgemmIsa::kAvx512})
    if (qgemm_isa_supported(i)) v.push_back(i);
  return v;
}

}  // namespace

TEST(QuantQgemm, MatchesDequantizedMatmul) {
  const int64_t K = 256;
  int checked = 0;
  for (int bits : {2, 3, 4, 8})
    // 96: K not a multiple of G (partial last group); 20: groups off the packing units (scalar path).
    for (int G : {32, 128, 96, -1, 20})
      for (bool act : {false, true})
        for (bool sym : {true, false})
          for (auto fmt : {QuantFormat::kGptqV1, QuantFormat::kGptqV2}) {
            const Case c{bits, G, act, sym, fmt, (bits + G) % 2 == 0};
            const int64_t N = bits == 3 ? 96 : 80;  // 80: a padded last column tile
            const PackedQuant p = random_layer(c, K, N, uint32_t(bits * 1000 + G * 10 + act * 2 + sym));
            const PreparedQuantMatrix w = prepare(p.view(), test_pool());
            EXPECT_EQ(w.perm.empty(), !act || G == -1);  // one group: nothing to reorder
            const auto W = dequantize(p.view());         // [N, K]
            for (int64_t T : {1, 3, 6, 17, 40}) {  // decode passes of 1, 3, 4+2, 4*4+1 rows
              std::mt19937 rng{uint32_t(T)};
              // Inputs with a non-zero mean stress the sum(x*q) - z*sum(x) rearrangement.
              std::normal_distribution<float> dx(0.3f, 1.f);
              std::vector<float> x(size_t(T * K));
              for (auto& v : x) v = dx(rng);
              const auto ref = reference_product(p, W, x, T);
              for (QgemmIsa isa : isas())
                for (int64_t max_direct : {int64_t(1000), int64_t(0)}) {  // decode kernel, dequant+sgemm
                  std::vector<float> y(size_t(T * N), NAN);
                  QgemmOptions opt;
                  opt.isa = isa;
                  opt.max_direct_t = max_direct;
                  qgemm(test_pool(), w, x.data(), T, y.data(), opt);
                  EXPECT_LT(normalized_error(ref, y), 1e-5)
                      << describe(c) << " T " << T << " isa " << isa_name(isa) << " max_direct_t " << max_direct;
                  ++checked;
                }
            }
          }
  // Every configuration ran: 4 bits x 5 group layouts x act x sym x 2 formats, 5 T, each ISA, 2 paths.
  EXPECT_EQ(checked, 4 * 5 * 2 * 2 * 2 * 5 * int(isas().size()) * 2);
}

// What CpuGptqWeight::dense() returns: the reference dequantize, bit for bit, from the kernel
// layout alone (reordered channels mapped back, partial groups, v1 zeros that wrapped).
TEST(QuantQgemm, DequantizeOfThePreparedLayoutIsTheReference) {
  for (int bits : {2, 3, 4, 8})
    for (int G : {32, 128, 96, -1, 20})
      for (bool act : {false, true})
        for (bool sym : {true, false})
          for (auto fmt : {QuantFormat::kGptqV1, QuantFormat::kGptqV2}) {
            const Case c{bits, G, act, sym, fmt, false};
            const int64_t K = 256, N = bits == 3 ? 96 : 80;
            const PackedQuant p = random_layer(c, K, N, uint32_t(bits * 1000 + G * 10 + act * 2 + sym + 7));
            EXPECT_EQ(gptq::cpu::dequantize(prepare(p.view(), test_pool())), dequantize(p.view())) << describe(c);
          }
}

TEST(QuantQgemm, RejectsBadInputs) {
  const Case c{4, 32, false, true, QuantFormat::kGptqV2, false};
  PackedQuant p = random_layer(c, 64, 16, 3);
  EXPECT_TRUE(can_implement(p.view()));
  QuantMatrix m = p.view();
  m.bits = 5;
  std::string why;
  EXPECT_FALSE(can_implement(m, &why));
  EXPECT_NE(why.find("bits"), std::string::npos) << why;
  EXPECT_THROW(prepare(m, test_pool()), gptq::Error);
  m = p.view();
  m.group_size = -3;
  EXPECT_THROW(prepare(m, test_pool()), gptq::Error);
  m = p.view();
  m.N = 12;  // 12 * 4 bits is not a whole number of qzeros words
  EXPECT_THROW(prepare(m, test_pool()), gptq::Error);
  p.g_idx[3] = 9;
  EXPECT_THROW(prepare(p.view(), test_pool()), gptq::Error);
}
