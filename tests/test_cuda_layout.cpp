// The GPTQ device layout (backend/cuda/gptq_kernels.h) and its kernels.
//  - CudaLayout.*: on the host, no GPU. Checkpoint layers of every bit width, group layout,
//    act-order, zero convention, with K and N off the multiples of 32 where the format allows, go
//    through cpu::prepare and make_gptq_layout; the layout is then decoded with the kernels' own
//    decode (gptq_decode.h; 4 bits: the code at gptq_mma4_pos, whose lop3 decode the GPU test
//    checks) and must equal quant::dequantize (inputs permuted) exactly.
//  - CudaGptq.*: on the GPU (skipped without one): gptq_gemv for T = 1..8 against a float64 host
//    product (x rounded to fp16 first at 4 bits, as the tensor-core kernel does),
//    gptq_dequant_f16 against the host's fp16 rounding of the same weights, gptq_gemm (T > 8)
//    against the float64 product of the fp16 x and fp16 weights.
#if defined(GPTQ_WITH_CUDA)

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/qgemm.h"
#include "backend/cuda/gptq_decode.h"
#include "backend/cuda/gptq_kernels.h"
#include "core/half.h"
#include "io/gptq_format.h"
#include "test_pool.h"

using namespace gptq::quant;
using gptq::cuda::GptqLayout;

namespace {

struct LayoutCase {
  int bits;
  int group_size;
  bool act_order;
  bool sym;
  QuantFormat format;
  int64_t K, N;
};

std::string describe(const LayoutCase& c) {
  return "bits " + std::to_string(c.bits) + " G " + std::to_string(c.group_size) + " act " +
         std::to_string(c.act_order) + " sym " + std::to_string(c.sym) + " " + format_name(c.format) + " K " +
         std::to_string(c.K) + " N " + std::to_string(c.N);
}

// Random codes, positive fp16 scales, zeros 2^(b-1) (sym) or random including 0 (asym; v1 wraps
// it to 2^b, which the layout must carry through).
PackedQuant random_layer(const LayoutCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t K = c.K, N = c.N;
  const int maxq = (1 << c.bits) - 1;
  const int64_t G = c.group_size == -1 ? K : c.group_size, ng = (K + G - 1) / G;
  std::vector<uint8_t> codes(size_t(N * K));
  for (auto& q : codes) q = uint8_t(rng() % uint32_t(maxq + 1));
  std::vector<float> scales(size_t(ng * N));
  std::uniform_real_distribution<float> us(0.001f, 0.02f);
  for (auto& s : scales) s = us(rng);
  std::vector<int32_t> zeros(size_t(ng * N));
  for (auto& z : zeros) z = c.sym ? (maxq + 1) / 2 : int32_t(rng() % uint32_t(maxq + 1));
  std::vector<int32_t> g_idx(static_cast<size_t>(K));
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (c.act_order) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < K; ++i) g_idx[size_t(perm[size_t(i)])] = int32_t(i / G);
  return pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, c.bits, c.group_size, K, N,
                        c.format);
}

float half_lo(uint32_t v) { return gptq::fp16_to_fp32(uint16_t(v & 0xffffu)); }
float half_hi(uint32_t v) { return gptq::fp16_to_fp32(uint16_t(v >> 16)); }

// q - zero of reordered input k, column n, exactly as the kernels decode it.
template <int BITS>
float decode_one(const GptqLayout& L, int64_t n, int64_t k, float zero) {
  if constexpr (BITS == 4) {  // the mma layout: the code where gptq_mma4_pos puts it
    const auto p = gptq::cuda::gptq_mma4_pos(n, k, (L.N + 15) / 16);
    return float((L.qweight[size_t(p.word)] >> (4 * p.nibble)) & 15u) - zero;
  }
  uint32_t w[BITS];
  const int64_t c = k / 32;
  for (int j = 0; j < BITS; ++j) w[j] = L.qweight[size_t((c * L.N + n) * BITS + j)];
  const auto zc = gptq::cuda::gptq_zero_consts(zero);
  return gptq::cuda::gptq_code_minus_zero<BITS>(w, zc, int(k % 32));
}

float decode(const GptqLayout& L, int64_t n, int64_t k, float zero) {
  switch (L.bits) {
    case 2: return decode_one<2>(L, n, k, zero);
    case 3: return decode_one<3>(L, n, k, zero);
    case 4: return decode_one<4>(L, n, k, zero);
    case 8: return decode_one<8>(L, n, k, zero);
  }
  ADD_FAILURE() << "bits " << L.bits;
  return 0.f;
}

// W in the layout's (reordered) input order, as the kernels compute it: scale * (q - zero).
std::vector<float> decode_layout(const GptqLayout& L) {
  std::vector<float> W(size_t(L.N * L.K));
  for (int64_t n = 0; n < L.N; ++n)
    for (int64_t k = 0; k < L.K; ++k) {
      const uint32_t sz =
          L.scale_zero[size_t(L.chunk_group[size_t(k / 32)] * gptq::cuda::gptq_sz_stride(L.bits, L.N) + n)];
      W[size_t(n * L.K + k)] = half_lo(sz) * decode(L, n, k, half_hi(sz));
    }
  return W;
}

std::vector<LayoutCase> layout_cases() {
  std::vector<LayoutCase> cases;
  // K and N per bit width: off the multiples of 32 (and of the group sizes) where K*b % 32 == 0
  // and N*b % 32 == 0 allow it; 3 bits needs both multiples of 32.
  struct Shape { int bits; int64_t K, N; };
  const Shape shapes[] = {{2, 208, 48}, {3, 224, 64}, {4, 200, 40}, {8, 196, 36}, {4, 256, 96}};
  for (const Shape& s : shapes)
    for (int G : {-1, 32, 64, 128})
      for (bool act : {false, true})
        for (bool sym : {true, false})
          for (QuantFormat f : {QuantFormat::kGptqV1, QuantFormat::kGptqV2}) {
            if (act && G == -1) continue;  // one group: act-order is a no-op
            cases.push_back({s.bits, G, act, sym, f, s.K, s.N});
          }
  return cases;
}

TEST(CudaLayout, DecodesToDequantize) {
  uint32_t seed = 1;
  for (const LayoutCase& c : layout_cases()) {
    SCOPED_TRACE(describe(c));
    const PackedQuant p = random_layer(c, seed++);
    const QuantMatrix m = p.view();
    const std::vector<float> ref = dequantize(m);  // [N, K], original input order
    const gptq::cpu::PreparedQuantMatrix prep = gptq::cpu::prepare(m, test_pool());
    const GptqLayout L = gptq::cuda::make_gptq_layout(prep);
    ASSERT_TRUE(L.fast);
    ASSERT_EQ(L.bits, c.bits);
    ASSERT_EQ(L.K, c.K);
    ASSERT_EQ(L.N, c.N);
    ASSERT_EQ(L.n_chunks, (c.K + 31) / 32);
    ASSERT_EQ(L.n_groups, m.n_groups());
    ASSERT_EQ(L.qweight.size(), size_t(gptq::cuda::gptq_qweight_words(c.bits, L.n_chunks, c.N)));
    ASSERT_EQ(L.scale_zero.size(), size_t(L.n_groups * gptq::cuda::gptq_sz_stride(c.bits, c.N)));
    ASSERT_EQ(L.chunk_group.size(), size_t(L.n_chunks));
    EXPECT_EQ(L.perm.empty(), !c.act_order);  // shuffled g_idx is never sorted at these K
    // Uniform groups are recognized (the kernels then compute the group of a chunk): always without
    // act-order (G / 32 chunks per group; G = -1: one group), and act-order reordering keeps G.
    if (c.group_size > 0 && c.K % c.group_size == 0) {
      EXPECT_EQ(L.chunks_per_group, c.group_size / 32);
    } else if (c.group_size == -1) {
      EXPECT_EQ(L.chunks_per_group, L.n_chunks);
    }
    const std::vector<float> W = decode_layout(L);
    int64_t bad = 0;
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k) {
        const int64_t ko = L.perm.empty() ? k : L.perm[size_t(k)];
        const float want = ref[size_t(n * c.K + ko)], got = W[size_t(n * c.K + k)];
        if (want != got && bad++ < 5) ADD_FAILURE() << "n " << n << " k " << k << ": " << got << " != " << want;
      }
    EXPECT_EQ(bad, 0);
    // The last chunk's padding codes are 0 (the GEMV multiplies them with x = 0, but a nonzero
    // code would still be a layout bug).
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = c.K; k < L.n_chunks * 32; ++k) ASSERT_EQ(decode(L, n, k, 0.f), 0.f) << "n " << n << " k " << k;
    if (c.bits == 4) {  // the mma layout pads to k-blocks of 64 and column tiles of 16
      const int64_t Kp = (L.n_chunks + 1) / 2 * 64, Np = (c.N + 15) / 16 * 16;
      for (int64_t n = 0; n < Np; ++n)
        for (int64_t k = 0; k < Kp; ++k) {
          if (n < c.N && k < c.K) continue;
          ASSERT_EQ(decode(L, n, k, 0.f), 0.f) << "n " << n << " k " << k;
        }
    }
  }
}

TEST(CudaLayout, GroupsOffChunkBoundariesAreNotFast) {
  // G = 16 (4 bits) or 48: group boundaries inside a chunk of 32 inputs.
  for (int G : {16, 48}) {
    const LayoutCase c{4, G, false, true, QuantFormat::kGptqV2, 192, 32};
    const PackedQuant p = random_layer(c, 7);
    const auto prep = gptq::cpu::prepare(p.view(), test_pool());
    const GptqLayout L = gptq::cuda::make_gptq_layout(prep);
    EXPECT_FALSE(L.fast) << "G " << G;
    EXPECT_TRUE(L.qweight.empty() && L.scale_zero.empty() && L.chunk_group.empty());
  }
  // A last group ending at K off a multiple of 32 is fine (K = 200, G = 64: boundaries 0, 64, 128,
  // 192, 200).
  const LayoutCase c{4, 64, true, false, QuantFormat::kGptqV1, 200, 8};
  const auto prep = gptq::cpu::prepare(random_layer(c, 8).view(), test_pool());
  EXPECT_TRUE(gptq::cuda::make_gptq_layout(prep).fast);
}

// ---- on the GPU -------------------------------------------------------------

bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it so later CUDA calls do not report it
    return false;
  }
  return n > 0;
}

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

template <typename V>
struct DeviceBuf {
  V* p = nullptr;
  explicit DeviceBuf(size_t n) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(V)), cudaSuccess); }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

template <typename V>
void upload(DeviceBuf<V>& d, const std::vector<V>& h) {
  if (!h.empty()) {
    ASSERT_EQ(cudaMemcpy(d.p, h.data(), h.size() * sizeof(V), cudaMemcpyHostToDevice), cudaSuccess);
  }
}

// The device layout of a random layer of case c.
GptqLayout fast_layout(const LayoutCase& c, uint32_t seed) {
  const PackedQuant p = random_layer(c, seed);
  return gptq::cuda::make_gptq_layout(gptq::cpu::prepare(p.view(), test_pool()));
}

// A layout uploaded, and the kernels' view of it.
struct DeviceLayout {
  DeviceBuf<uint32_t> q, sz;
  DeviceBuf<int32_t> cg;
  gptq::cuda::GptqDeviceMatrix m;
  explicit DeviceLayout(const GptqLayout& L) : q(L.qweight.size()), sz(L.scale_zero.size()), cg(L.chunk_group.size()) {
    upload(q, L.qweight);
    upload(sz, L.scale_zero);
    upload(cg, L.chunk_group);
    m.bits = L.bits;
    m.K = L.K;
    m.N = L.N;
    m.n_chunks = L.n_chunks;
    m.n_groups = L.n_groups;
    m.qweight = q.p;
    m.scale_zero = sz.p;
    m.chunk_group = cg.p;
    m.chunks_per_group = L.chunks_per_group;
  }
};

TEST(CudaGptq, GemvMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const LayoutCase cases[] = {
      {4, 128, true, true, QuantFormat::kGptqV1, 1000, 200},    // K, N off 32; act-order
      {4, 32, false, false, QuantFormat::kGptqV2, 4096, 4096},  // a real shape, 16 warps
      {3, 128, true, false, QuantFormat::kGptqV1, 1024, 320},
      {2, 64, false, true, QuantFormat::kGptqV2, 528, 80},
      {8, 128, true, false, QuantFormat::kGptqV1, 1100, 36},
      {8, -1, false, true, QuantFormat::kGptqV2, 60, 100},      // one chunk, partial
      {4, 128, false, true, QuantFormat::kGptqV2, 11008, 96},   // long K: many chunks per warp
      {4, 32, true, false, QuantFormat::kGptqV1, 200, 40},     // odd chunk count, a partial column tile
      {4, -1, false, false, QuantFormat::kGptqV2, 4096, 12288}, // many column tiles: few warps per block
      {4, 64, true, false, QuantFormat::kGptqV1, 576, 48},      // 2 chunks per group: spans of 2
  };
  std::mt19937 rng(12345);
  std::normal_distribution<float> nd(0.f, 1.f);
  uint32_t seed = 100;
  for (const LayoutCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const GptqLayout L = fast_layout(c, seed++);
    ASSERT_TRUE(L.fast);
    const std::vector<float> W = decode_layout(L);  // [N, K] reordered order, = dequantize (test above)
    const int64_t K = c.K, N = c.N;
    const DeviceLayout dl(L);
    const gptq::cuda::GptqDeviceMatrix& dm = dl.m;

    for (int64_t T = 1; T <= gptq::cuda::kGemvMaxRows; ++T) {
      SCOPED_TRACE("T " + std::to_string(T));
      const int64_t xs = K + 4, ys = N + 3;  // strided rows, as the backend's views may be
      std::vector<float> x(size_t(T * xs));
      for (auto& v : x) v = nd(rng);
      DeviceBuf<float> dx(x.size()), dy(size_t(T * ys));
      upload(dx, x);
      std::vector<float> y(size_t(T * ys), std::numeric_limits<float>::quiet_NaN());
      upload(dy, y);
      // 4 bits run on tensor cores with x rounded to fp16 (gptq_kernels.h): the reference rounds it too.
      std::vector<float> xr = x;
      if (c.bits == 4)
        for (auto& v : xr) v = gptq::fp16_to_fp32(gptq::fp32_to_fp16(v));
      std::vector<double> ref(size_t(T * N));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double r = 0;
          for (int64_t k = 0; k < K; ++k) r += double(xr[size_t(t * xs + k)]) * double(W[size_t(n * K + k)]);
          ref[size_t(t * N + n)] = r;
        }
      // The dispatch's launch, and at 4 bits every column-tile count with and without rotation and
      // with warp counts that leave a warp a partial batch (all fit T = 8's shared memory).
      std::vector<gptq::cuda::Gemv4Tuning> tunings{{}};
      // {col_tiles, warps, rotate, span}
      if (c.bits == 4)
        tunings.insert(tunings.end(), {{1, 3, 1, 0, 0, 1}, {1, 0, 0, 1, 0, 1}, {2, 3, 0, 2, 0, 1}, {2, 0, 1, 1, 0, 1},
                                       {4, 5, 1, 0, 0, 1}, {4, 0, 0, 2, 0, 1}, {0, 0, -1, 0, 0, 1},  // the ring kernel
                                       // gptq4_reg_gemv (the ring kernel where it does not apply: the table)
                                       {1, 0, -1, 0, 0, 2}, {1, 3, -1, 1, 0, 2}, {2, 0, -1, 0, 0, 2},
                                       {2, 5, -1, 2, 0, 2}, {4, 0, -1, 0, 0, 2}, {4, 7, -1, 1, 0, 2}});
      for (const auto& tune : tunings) {
        SCOPED_TRACE("col_tiles " + std::to_string(tune.col_tiles) + " warps " + std::to_string(tune.warps) +
                     " rotate " + std::to_string(tune.rotate) + " span " + std::to_string(tune.span) +
                     " kernel " + std::to_string(tune.kernel));
        std::fill(y.begin(), y.end(), std::numeric_limits<float>::quiet_NaN());
        upload(dy, y);
        // The chunk -> group table path as well (irregular groups read it; these are uniform).
        auto dm_table = dm;
        dm_table.chunks_per_group = 0;
        // The register kernel on the uniform groups at every T but 2, where the table sends it to the ring.
        const bool table = tune.kernel == 2 ? T == 2 : T % 2 == 0;
        gptq::cuda::gptq_gemv(table ? dm_table : dm, dx.p, xs, T, dy.p, ys, nullptr, tune);
        CUDA_OK(cudaDeviceSynchronize());
        CUDA_OK(cudaMemcpy(y.data(), dy.p, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            const double r = ref[size_t(t * N + n)], d = double(y[size_t(t * ys + n)]) - r;
            num += d * d;
            den += r * r;
          }
        ASSERT_TRUE(std::isfinite(num)) << "NaN or inf in y (an output not written?)";
        const double nmse = num / den, limit = 64.0 * double(K) * std::ldexp(1.0, -48);
        EXPECT_LE(nmse, limit);
        // Columns past N inside a row stride stay untouched (the NaN poison is still there).
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = N; n < ys; ++n) EXPECT_TRUE(std::isnan(y[size_t(t * ys + n)]));
      }
    }

    // Dequantization: exactly the host's fp16 rounding of scale * (q - zero).
    DeviceBuf<uint16_t> dout(size_t(N * K));
    std::vector<uint16_t> out(size_t(N * K), 0x7e00);  // fp16 NaN
    upload(dout, out);
    gptq::cuda::gptq_dequant_f16(dm, dout.p, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(out.data(), dout.p, out.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (int64_t i = 0; i < N * K; ++i) {
      const uint16_t want = gptq::fp32_to_fp16(W[size_t(i)]);
      if (out[size_t(i)] != want && bad++ < 5)
        ADD_FAILURE() << "dequant n " << i / K << " k " << i % K << ": " << out[size_t(i)] << " != " << want;
    }
    EXPECT_EQ(bad, 0);
  }
}

// The batched 4-bit kernel (gptq_gemm, T > 8 on tensor cores) against a float64 host product of
// the fp16-rounded x and the fp16-rounded weights (what it multiplies, as dequantize + cuBLAS
// does), at every n-tile count (T 9..16, 17..32, 33..64), T past one launch's 64 rows, with
// forced K splits (the last-block reduction), partial column blocks, warps 1..8, the table path,
// and accumulate. A second identical call must give the same bits (counters reset, fixed order).
TEST(CudaGptq, BatchedKernelMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const LayoutCase cases[] = {
      {4, 128, true, true, QuantFormat::kGptqV1, 1000, 200},    // K, N off 32 and 64; act-order
      {4, 32, false, false, QuantFormat::kGptqV2, 4096, 4096},  // a real shape
      {4, 128, false, true, QuantFormat::kGptqV2, 11008, 96},   // long K: splits
      {4, 32, true, false, QuantFormat::kGptqV1, 200, 40},      // odd chunk count, a partial column tile
      {4, -1, false, false, QuantFormat::kGptqV2, 2048, 1536},  // one group
      {4, 64, true, false, QuantFormat::kGptqV1, 576, 48},
  };
  std::mt19937 rng(54321);
  std::normal_distribution<float> nd(0.f, 1.f);
  uint32_t seed = 300;
  for (const LayoutCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const GptqLayout L = fast_layout(c, seed++);
    ASSERT_TRUE(L.fast);
    std::vector<float> W = decode_layout(L);
    for (auto& v : W) v = gptq::fp16_to_fp32(gptq::fp32_to_fp16(v));  // the fp16 weight it multiplies
    const int64_t K = c.K, N = c.N;
    const DeviceLayout dl(L);
    const gptq::cuda::GptqDeviceMatrix& dm = dl.m;
    for (int64_t T : {9, 16, 17, 29, 32, 40, 64, 100}) {
      SCOPED_TRACE("T " + std::to_string(T));
      const int64_t xs = K + 4, ys = N + 3;
      std::vector<float> x(size_t(T * xs)), y0(size_t(T * ys));
      for (auto& v : x) v = nd(rng);
      for (auto& v : y0) v = nd(rng);
      std::vector<float> xr = x;
      for (auto& v : xr) v = gptq::fp16_to_fp32(gptq::fp32_to_fp16(v));
      std::vector<double> ref(size_t(T * N));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double r = 0;
          for (int64_t k = 0; k < K; ++k) r += double(xr[size_t(t * xs + k)]) * double(W[size_t(n * K + k)]);
          ref[size_t(t * N + n)] = r;
        }
      DeviceBuf<float> dx(x.size()), dy(size_t(T * ys));
      upload(dx, x);
      // {col_tiles, warps, splits}: the defaults, then forced choices (col_tiles 4 only to 32 rows).
      std::vector<gptq::cuda::GemmTuning> tunings{{}, {1, 1, 3}, {2, 8, 2}, {1, 3, 1}, {2, 5, 7}};
      if (T <= 32) tunings.push_back({4, 2, 4});
      for (size_t ti = 0; ti < tunings.size(); ++ti) {
        const auto& tune = tunings[ti];
        const bool accumulate = ti % 2 == 1;
        SCOPED_TRACE("col_tiles " + std::to_string(tune.col_tiles) + " warps " + std::to_string(tune.warps) +
                     " splits " + std::to_string(tune.splits) + " accumulate " + std::to_string(accumulate));
        auto dm_used = dm;
        if (ti == 3) dm_used.chunks_per_group = 0;  // the chunk -> group table
        const auto need = gptq::cuda::gptq_gemm_scratch(dm_used, T, tune);
        DeviceBuf<char> ws(need.bytes);
        DeviceBuf<int> cnt(size_t(need.counters));
        CUDA_OK(cudaMemset(cnt.p, 0, size_t(need.counters) * sizeof(int)));
        std::vector<std::vector<float>> outs;
        for (int rep = 0; rep < 2; ++rep) {
          std::vector<float> y(size_t(T * ys), std::numeric_limits<float>::quiet_NaN());
          if (accumulate)
            for (int64_t t = 0; t < T; ++t)
              for (int64_t n = 0; n < N; ++n) y[size_t(t * ys + n)] = y0[size_t(t * ys + n)];
          upload(dy, y);
          gptq::cuda::gptq_gemm(dm_used, dx.p, xs, T, dy.p, ys, ws.p, need.bytes, cnt.p, need.counters, nullptr, tune,
                                accumulate);
          CUDA_OK(cudaDeviceSynchronize());
          CUDA_OK(cudaMemcpy(y.data(), dy.p, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
          outs.push_back(y);
        }
        const std::vector<float>& y = outs[0];
        double num = 0, den = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            const double r = ref[size_t(t * N + n)] + (accumulate ? double(y0[size_t(t * ys + n)]) : 0.0);
            const double d = double(y[size_t(t * ys + n)]) - r;
            num += d * d;
            den += r * r;
          }
        ASSERT_TRUE(std::isfinite(num)) << "NaN or inf in y (an output not written?)";
        EXPECT_LE(num / den, 64.0 * double(K) * std::ldexp(1.0, -48));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = N; n < ys; ++n) EXPECT_TRUE(std::isnan(y[size_t(t * ys + n)]));
        EXPECT_EQ(std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * sizeof(float)), 0)
            << "two identical calls differ";
        std::vector<int> left(size_t(need.counters));
        CUDA_OK(cudaMemcpy(left.data(), cnt.p, left.size() * sizeof(int), cudaMemcpyDeviceToHost));
        EXPECT_EQ(std::count(left.begin(), left.end(), 0), int64_t(left.size())) << "counters left nonzero";
      }
    }
  }
}

}  // namespace

#endif  // GPTQ_WITH_CUDA
