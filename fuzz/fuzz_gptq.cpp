// GPTQ packed-layer validation and repacking: quant::validate() decides what a checkpoint layer
// may be, cpu::prepare() repacks whatever it accepted, and every qgemm path (scalar, AVX2,
// AVX-512 where the CPU has it; decode and dequantize+sgemm) must then agree with the reference
// quant::dequantize(). Input: 5 bytes of layout, then the tensor bytes.
//   byte 0  bits: 2/3/4/8 by the low 2 bits, or (bit 7 set) the signed byte itself
//   byte 1  group_size: -1, 16, 32, 64, 128, K, 0, -2 by the low 3 bits, or (bit 7) the signed byte
//   byte 2  K: (b & 7 + 1) * 16, or (bit 7) b & 127;  byte 3  N: likewise
//   byte 4  bit 0 gptq_v2, bit 1 g_idx present, bit 2 fp16 bias
//   then qweight, qzeros (int32), scales (fp16), g_idx (one signed byte per entry), bias (fp16),
//   the input repeated when it runs out. GPTQ_FUZZ_WRITE_SEEDS=DIR writes valid layers of every
//   bit width, group size and format (from quant::pack_quantized) as seeds.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/qgemm.h"
#include "core/half.h"
#include "core/thread_pool.h"
#include "fuzz_common.h"
#include "gptq/error.h"
#include "io/gptq_format.h"

namespace {

using gptq::cpu::QgemmIsa;
namespace quant = gptq::quant;

std::unique_ptr<gptq::ThreadPool> pool;

// Reads the payload cyclically (zeros when there is none).
struct Bytes {
  const uint8_t* p;
  size_t n, i = 0;
  uint8_t next() { return n == 0 ? 0 : p[i++ % n]; }
  template <typename T>
  T get() {
    uint8_t b[sizeof(T)];
    for (auto& c : b) c = next();
    T v;
    std::memcpy(&v, b, sizeof(T));
    return v;
  }
};

int64_t dim(uint8_t b) { return b & 0x80 ? b & 0x7F : ((b & 7) + 1) * 16; }

// A valid layer in the input format above: K, N multiples of 16 up to 128.
std::string make_seed(int bits, int group_sel, int64_t K, int64_t N, uint8_t flags, uint32_t seed) {
  static const int kBits[] = {2, 3, 4, 8};
  const int group = group_sel == 5 ? int(K) : std::vector<int>{-1, 16, 32, 64, 128}[size_t(group_sel)];
  auto lcg = [&] { return seed = seed * 1664525u + 1013904223u; };
  const int64_t ng = quant::num_groups(K, group), G = quant::resolve_group_size(K, group);
  std::vector<uint8_t> codes(size_t(N * K));
  for (auto& c : codes) c = uint8_t(lcg() >> 8) % (1u << kBits[bits]);
  std::vector<float> scales(size_t(ng * N)), bias(static_cast<size_t>(N));
  for (auto& v : scales) v = 0.01f * float(1 + (lcg() >> 8) % 100);
  for (auto& v : bias) v = float(int((lcg() >> 8) % 9) - 4);
  std::vector<int32_t> zeros(size_t(ng * N)), g_idx(static_cast<size_t>(K));
  for (auto& z : zeros) z = int32_t((lcg() >> 8) % (1u << kBits[bits]));
  for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(((flags & 2) ? (k * 5 + 1) % K : k) / G);
  const quant::PackedQuant p =
      quant::pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), bias.data(), kBits[bits], group,
                            K, N, flags & 1 ? quant::QuantFormat::kGptqV2 : quant::QuantFormat::kGptqV1);
  std::string out = {char(bits), char(group_sel), char(K / 16 - 1), char(N / 16 - 1), char(flags)};
  auto put = [&](const void* v, size_t n) { out.append(static_cast<const char*>(v), n); };
  put(p.qweight.data(), p.qweight.size() * 4);
  put(p.qzeros.data(), p.qzeros.size() * 4);
  put(p.scales.data(), p.scales.size() * 2);
  for (int32_t g : p.g_idx) out += char(int8_t(g));
  put(p.bias.data(), p.bias.size() * 2);
  return out;
}

void write_seeds(const std::string& out) {
  int n = 0;
  for (int bits = 0; bits < 4; ++bits)
    for (int group_sel : {0, 1, 2, 5})
      for (uint8_t flags : {0, 3, 6}) {
        const int64_t K = bits == 1 ? 64 : 48 + 16 * (n % 3), N = bits == 1 ? 32 : 16 * (1 + n % 3);
        gptq_fuzz::write_file(out + "/seed_" + std::to_string(n) + ".bin", make_seed(bits, group_sel, K, N, flags, uint32_t(n + 1)));
        ++n;
      }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  gptq_fuzz::write_seeds_if_asked(write_seeds);
  pool = std::make_unique<gptq::ThreadPool>(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  quant::QuantMatrix m;
  static const int kBits[] = {2, 3, 4, 8};
  m.bits = data[0] & 0x80 ? int(int8_t(data[0])) : kBits[data[0] & 3];
  m.K = dim(data[2]);
  m.N = dim(data[3]);
  const int kGroups[] = {-1, 16, 32, 64, 128, int(m.K), 0, -2};
  m.group_size = data[1] & 0x80 ? int(int8_t(data[1])) : kGroups[data[1] & 7];
  const uint8_t flags = data[4];
  m.format = flags & 1 ? quant::QuantFormat::kGptqV2 : quant::QuantFormat::kGptqV1;

  // Tensor sizes as a loader derives them from the config (it checks the file's shapes against
  // these); when the config itself is invalid, validate() must refuse before reading anything.
  const bool sizes_ok = (m.bits == 2 || m.bits == 3 || m.bits == 4 || m.bits == 8) && m.group_size != 0 &&
                        m.group_size >= -1 && (m.K * m.bits) % 32 == 0 && (m.N * m.bits) % 32 == 0 && m.K > 0 &&
                        m.N > 0;
  const int64_t ng = sizes_ok ? quant::num_groups(m.K, m.group_size) : 1;
  const int64_t rows = sizes_ok ? m.K * m.bits / 32 : 1, cols = sizes_ok ? m.N * m.bits / 32 : 1;
  Bytes in{data + 5, size - 5};
  // Exactly sized heap buffers: ASan reports any read past a tensor.
  std::vector<int32_t> qweight(size_t(rows * m.N)), qzeros(size_t(ng * cols)), g_idx(size_t(m.K));
  std::vector<uint16_t> scales(size_t(ng * m.N)), bias16(size_t(m.N));
  for (auto& v : qweight) v = in.get<int32_t>();
  for (auto& v : qzeros) v = in.get<int32_t>();
  for (auto& v : scales) v = in.get<uint16_t>();
  for (auto& v : g_idx) v = int8_t(in.next());
  for (auto& v : bias16) v = in.get<uint16_t>();
  m.qweight = qweight.data();
  m.qzeros = qzeros.data();
  m.scales = scales.data();
  m.g_idx = flags & 2 ? g_idx.data() : nullptr;
  m.bias = flags & 4 ? bias16.data() : nullptr;

  try {
    quant::validate(m);
  } catch (const gptq::Error&) {
    try {
      (void)gptq::cpu::prepare(m, *pool);
    } catch (const gptq::Error&) {
      return 0;
    }
    gptq_fuzz::violated("prepare() accepted a layer that validate() refuses");
  }
  if (!sizes_ok) gptq_fuzz::violated("validate() accepted an impossible layout");

  // The reference: W [N, K] from dequantize(), in double.
  const std::vector<float> W = quant::dequantize(m);
  const int64_t K = m.K, N = m.N, T = 3;
  std::vector<float> x(size_t(T * K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 17) - 8) / 8.f;
  bool finite = true;
  for (float w : W) finite = finite && std::isfinite(w);

  gptq::cpu::PreparedQuantMatrix p;
  try {
    p = gptq::cpu::prepare(m, *pool);
  } catch (const gptq::Error& e) {
    gptq_fuzz::violated("prepare() refused a layer that validate() accepts", e.what());
  }
  std::vector<double> ref(size_t(T * N)), mag(size_t(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = m.bias ? gptq::fp16_to_fp32(m.bias[n]) : 0.0, a = std::fabs(s);
      for (int64_t k = 0; k < K; ++k) {
        s += double(x[size_t(t * K + k)]) * W[size_t(n * K + k)];
        a += std::fabs(double(x[size_t(t * K + k)]) * W[size_t(n * K + k)]);
      }
      ref[size_t(t * N + n)] = s;
      mag[size_t(t * N + n)] = a;
    }
  for (QgemmIsa isa : {QgemmIsa::kScalar, QgemmIsa::kAvx2, QgemmIsa::kAvx512}) {
    if (!gptq::cpu::qgemm_isa_supported(isa)) continue;
    for (int64_t max_direct : {int64_t(64), int64_t(0)}) {
      std::vector<float> y(size_t(T * N), -1.f);
      gptq::cpu::QgemmOptions opt;
      opt.isa = isa;
      opt.max_direct_t = max_direct;
      gptq::cpu::qgemm(*pool, p, x.data(), T, y.data(), opt);
      if (!finite) continue;
      for (size_t i = 0; i < y.size(); ++i) {
        const double tol = 1e-4 * mag[i] + 1e-30;
        if (!(std::fabs(y[i] - ref[i]) <= tol) && std::isfinite(mag[i]) && mag[i] < 1e30)
          gptq_fuzz::violated("qgemm disagrees with dequantize()",
                              std::string(gptq::cpu::isa_name(isa)) + (max_direct ? " decode" : " sgemm") +
                                  " y[" + std::to_string(i) + "] = " + std::to_string(y[i]) + ", reference " +
                                  std::to_string(ref[i]));
      }
    }
  }
  return 0;
}
