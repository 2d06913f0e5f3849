// The packed GPTQ format: bit layout (against a transcription of AutoGPTQ's pack loop and
// hand-computed words), zero-point conventions, dequantize, and input validation.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "core/half.h"
#include "gptq/error.h"
#include "io/gptq_format.h"

using namespace gptq::quant;

namespace {

// AutoGPTQ QuantLinear.pack's qweight loop, transcribed literally (intweight: [K, N] uint32,
// i.e. already transposed as in the reference).
std::vector<uint32_t> autogptq_pack(const std::vector<uint32_t>& iw, int64_t K, int64_t N, int bits) {
  std::vector<uint32_t> q(size_t(K / 32 * bits * N), 0);
  int64_t i = 0, row = 0;
  auto Q = [&](int64_t r, int64_t n) -> uint32_t& { return q[size_t(r * N + n)]; };
  auto I = [&](int64_t k, int64_t n) { return iw[size_t(k * N + n)]; };
  while (row < K / 32 * bits) {
    for (int64_t n = 0; n < N; ++n) {
      int64_t ii = i, rr = row;
      if (bits != 3) {
        for (int64_t j = ii; j < ii + 32 / bits; ++j) Q(rr, n) |= I(j, n) << (bits * (j - ii));
      } else {
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, n) |= I(j, n) << (3 * (j - ii));
        ii += 10;
        Q(rr, n) |= I(ii, n) << 30;
        rr += 1;
        Q(rr, n) |= (I(ii, n) >> 2) & 1;
        ii += 1;
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, n) |= I(j, n) << (3 * (j - ii) + 1);
        ii += 10;
        Q(rr, n) |= I(ii, n) << 31;
        rr += 1;
        Q(rr, n) |= (I(ii, n) >> 1) & 0x3;
        ii += 1;
        for (int64_t j = ii; j < ii + 10; ++j) Q(rr, n) |= I(j, n) << (3 * (j - ii) + 2);
      }
    }
    if (bits != 3) {
      i += 32 / bits;
      row += 1;
    } else {
      i += 32;
      row += 3;
    }
  }
  return q;
}

std::vector<uint8_t> random_codes(int64_t n, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, (1 << bits) - 1);
  std::vector<uint8_t> c(static_cast<size_t>(n));
  for (auto& v : c) v = uint8_t(d(rng));
  return c;
}

}  // namespace

TEST(QuantFormat, PackUnpackRoundTripAllBits) {
  for (int bits : {2, 3, 4, 8}) {
    const int64_t K = 96, N = 7;  // 3-bit: three 32-value units with straddling values
    const auto codes = random_codes(N * K, bits, 1234u + unsigned(bits));  // [N, K]
    std::vector<int32_t> qw(size_t(qweight_rows(K, bits) * N));
    pack_qweight(codes.data(), N, K, bits, qw.data());
    std::vector<uint8_t> back(size_t(N * K));
    unpack_qweight(qw.data(), N, K, bits, back.data());
    EXPECT_EQ(back, codes) << "bits " << bits;
  }
}

TEST(QuantFormat, MatchesAutoGptqPackLoop) {
  for (int bits : {2, 3, 4, 8}) {
    const int64_t K = 128, N = 5;
    const auto codes = random_codes(N * K, bits, 99u + unsigned(bits));  // [N, K]
    std::vector<uint32_t> iw(size_t(K * N));                             // [K, N]
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) iw[size_t(k * N + n)] = codes[size_t(n * K + k)];
    const auto expect = autogptq_pack(iw, K, N, bits);
    std::vector<int32_t> qw(expect.size());
    pack_qweight(codes.data(), N, K, bits, qw.data());
    for (size_t i = 0; i < qw.size(); ++i) ASSERT_EQ(uint32_t(qw[i]), expect[i]) << "bits " << bits << " word " << i;
  }
}

TEST(QuantFormat, ThreeBitStraddlingWordsByHand) {
  // One column, 32 values: value 10 = 0b101 straddles words 0/1, value 21 = 0b110 words 1/2,
  // value 31 = 0b111 sits at the top of word 2.
  std::vector<uint8_t> codes(32, 0);
  codes[10] = 5;
  codes[21] = 6;
  codes[31] = 7;
  std::vector<int32_t> qw(3);
  pack_qweight(codes.data(), 1, 32, 3, qw.data());
  EXPECT_EQ(uint32_t(qw[0]), 1u << 30);               // low bits 01 of value 10 at bits 30-31
  EXPECT_EQ(uint32_t(qw[1]), 1u);                     // its bit 2 at bit 0; value 21's bit 0 (=0) at bit 31
  EXPECT_EQ(uint32_t(qw[2]), 3u | (7u << 29));        // value 21's bits 1-2 at bits 0-1; value 31 at 29-31
  codes.assign(32, 1);                                // every value 1: bit 3i of the stream set
  pack_qweight(codes.data(), 1, 32, 3, qw.data());
  EXPECT_EQ(uint32_t(qw[0]), 0x49249249u);
  EXPECT_EQ(uint32_t(qw[1]), 0x92492492u);
  EXPECT_EQ(uint32_t(qw[2]), 0x24924924u);
}

TEST(QuantFormat, FourBitSymmetricV1ZerosAre0x77777777) {
  const int64_t N = 16, groups = 3;
  std::vector<int32_t> zeros(size_t(N * groups), 8);  // sym 4-bit: zero = (15 + 1) / 2
  std::vector<int32_t> qz(size_t(groups * qzeros_cols(N, 4)));
  EXPECT_EQ(pack_qzeros(zeros.data(), groups, N, 4, QuantFormat::kGptqV1, qz.data()), 0);
  for (int32_t w : qz) EXPECT_EQ(uint32_t(w), 0x77777777u);
  pack_qzeros(zeros.data(), groups, N, 4, QuantFormat::kGptqV2, qz.data());
  for (int32_t w : qz) EXPECT_EQ(uint32_t(w), 0x88888888u);
}

TEST(QuantFormat, ZeroConventionsV1AndV2) {
  for (int bits : {2, 3, 4, 8}) {
    const int64_t N = 64, groups = 2, maxq = (1 << bits) - 1;
    std::vector<int32_t> zeros(size_t(N * groups));
    std::mt19937 rng(7u + unsigned(bits));
    for (auto& z : zeros) z = int32_t(rng() % uint32_t(maxq + 1));
    zeros[0] = 0;  // the v1 trap
    zeros[5] = int32_t(maxq);
    int64_t n_zero = 0;
    for (int32_t z : zeros) n_zero += z == 0;

    std::vector<int32_t> qz(size_t(groups * qzeros_cols(N, bits))), back(zeros.size());
    EXPECT_EQ(pack_qzeros(zeros.data(), groups, N, bits, QuantFormat::kGptqV2, qz.data()), 0);
    unpack_qzeros(qz.data(), groups, N, bits, QuantFormat::kGptqV2, back.data());
    EXPECT_EQ(back, zeros) << "v2 bits " << bits;

    EXPECT_EQ(pack_qzeros(zeros.data(), groups, N, bits, QuantFormat::kGptqV1, qz.data()), n_zero);
    // v1 stores (zero - 1) & mask: field 0 holds maxq for the wrapped zero.
    EXPECT_EQ(uint32_t(qz[0]) & uint32_t(maxq), uint32_t(maxq));
    unpack_qzeros(qz.data(), groups, N, bits, QuantFormat::kGptqV1, back.data());
    for (size_t i = 0; i < zeros.size(); ++i)
      EXPECT_EQ(back[i], zeros[i] == 0 ? maxq + 1 : zeros[i]) << "v1 bits " << bits << " i " << i;
  }
}

TEST(QuantFormat, DequantizeFollowsGidx) {
  // K = 40 with G = 16: groups 0, 1 and a partial group 2; g_idx reversed to exercise act-order.
  const int bits = 4;
  const int64_t K = 40, N = 8, G = 16, ng = 3;
  const auto codes = random_codes(N * K, bits, 5);
  std::vector<float> scales(size_t(ng * N));
  std::vector<int32_t> zeros(size_t(ng * N)), g_idx(static_cast<size_t>(K));
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.01f * float(i + 1);
  for (size_t i = 0; i < zeros.size(); ++i) zeros[i] = int32_t(1 + i % 15);
  for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t((K - 1 - k) / G);
  for (auto fmt : {QuantFormat::kGptqV1, QuantFormat::kGptqV2}) {
    const PackedQuant p =
        pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, bits, int(G), K, N, fmt);
    const auto W = dequantize(p.view());  // [N, K]
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = g_idx[size_t(k)];
        const float s = gptq::fp16_to_fp32(gptq::fp32_to_fp16(scales[size_t(g * N + n)]));
        EXPECT_EQ(W[size_t(n * K + k)], s * float(int(codes[size_t(n * K + k)]) - zeros[size_t(g * N + n)]));
      }
  }
}

TEST(QuantFormat, RejectsBadInputs) {
  std::vector<uint8_t> codes(64 * 8, 0);
  std::vector<int32_t> qw(64 * 8);
  EXPECT_THROW(check_bits(5), gptq::Error);
  EXPECT_THROW(pack_qweight(codes.data(), 8, 64, 5, qw.data()), gptq::Error);
  EXPECT_THROW(qweight_rows(20, 3), gptq::Error);  // 3-bit needs K % 32 == 0
  EXPECT_THROW(qweight_rows(12, 4), gptq::Error);  // 4-bit needs K % 8 == 0
  EXPECT_THROW(qzeros_cols(48, 3), gptq::Error);   // 3-bit zeros need N % 32 == 0
  EXPECT_THROW(resolve_group_size(64, 0), gptq::Error);
  EXPECT_THROW(resolve_group_size(64, -2), gptq::Error);
  codes[3] = 16;  // does not fit in 4 bits
  EXPECT_THROW(pack_qweight(codes.data(), 8, 64, 4, qw.data()), gptq::Error);

  // A well-formed matrix, then one field broken at a time.
  const int64_t K = 64, N = 8;
  std::vector<float> scales(2 * N, 1.f);
  std::vector<int32_t> zeros(2 * N, 8), g_idx(K);
  codes.assign(size_t(N * K), 3);
  for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(k / 32);
  PackedQuant p = pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, 4, 32, K, N,
                                 QuantFormat::kGptqV2);
  EXPECT_NO_THROW(validate(p.view()));
  QuantMatrix m = p.view();
  m.bits = 5;
  EXPECT_THROW(validate(m), gptq::Error);
  m = p.view();
  m.group_size = 0;
  EXPECT_THROW(validate(m), gptq::Error);
  m = p.view();
  m.K = 60;  // K*bits % 32 != 0
  EXPECT_THROW(validate(m), gptq::Error);
  p.g_idx[7] = 2;  // only groups 0 and 1 exist
  EXPECT_THROW(validate(p.view()), gptq::Error);
  EXPECT_THROW(dequantize(p.view()), gptq::Error);
  p.g_idx[7] = -1;
  EXPECT_THROW(validate(p.view()), gptq::Error);
  zeros[0] = 16;
  EXPECT_THROW(pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, 4, 32, K, N,
                              QuantFormat::kGptqV2),
               gptq::Error);
}
