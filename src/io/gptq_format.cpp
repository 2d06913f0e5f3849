#include "io/gptq_format.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>

#include "core/half.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::quant {

void pack_stream(const uint8_t* values, int64_t count, int bits, uint32_t* words, int64_t stride) {
  GPTQ_ASSERT(is_supported_bits(bits) && (count * bits) % 32 == 0);
  if (bits == 3) {  // 32 values -> 3 words through one 96-bit accumulator
    for (int64_t u = 0; u < count / 32; ++u) {
      unsigned __int128 acc = 0;
      for (int i = 0; i < 32; ++i) acc |= static_cast<unsigned __int128>(values[u * 32 + i] & 7u) << (3 * i);
      for (int r = 0; r < 3; ++r) words[(u * 3 + r) * stride] = uint32_t(acc >> (32 * r));
    }
    return;
  }
  const int per = 32 / bits;
  for (int64_t r = 0; r < count / per; ++r) {
    uint32_t w = 0;
    for (int i = 0; i < per; ++i) w |= uint32_t(values[r * per + i]) << (i * bits);
    words[r * stride] = w;
  }
}

void unpack_stream(const uint32_t* words, int64_t stride, int64_t count, int bits, uint8_t* values) {
  GPTQ_ASSERT(is_supported_bits(bits) && (count * bits) % 32 == 0);
  if (bits == 3) {
    for (int64_t u = 0; u < count / 32; ++u) {
      unsigned __int128 acc = 0;
      for (int r = 0; r < 3; ++r) acc |= static_cast<unsigned __int128>(words[(u * 3 + r) * stride]) << (32 * r);
      for (int i = 0; i < 32; ++i) values[u * 32 + i] = uint8_t((acc >> (3 * i)) & 7u);
    }
    return;
  }
  const int per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < count / per; ++r) {
    const uint32_t w = words[r * stride];
    for (int i = 0; i < per; ++i) values[r * per + i] = uint8_t((w >> (i * bits)) & mask);
  }
}

const char* format_name(QuantFormat f) { return f == QuantFormat::kGptqV1 ? "gptq" : "gptq_v2"; }

bool is_supported_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

void check_bits(int bits) {
  if (!is_supported_bits(bits)) fail("unsupported bits ", bits, ": GPTQ checkpoints use 2, 3, 4 or 8 bits");
}

int64_t resolve_group_size(int64_t K, int group_size) {
  if (group_size == -1) return K;
  if (group_size <= 0) fail("invalid group_size ", group_size, ": expected -1 (one group) or a positive size");
  return group_size;
}

int64_t num_groups(int64_t K, int group_size) {
  const int64_t g = resolve_group_size(K, group_size);
  return K == 0 ? 0 : (K + g - 1) / g;
}

int64_t qweight_rows(int64_t K, int bits) {
  check_bits(bits);
  if (K <= 0 || (K * bits) % 32 != 0)
    fail("K = ", K, " input features cannot be packed at ", bits, " bits: K*bits must be a positive multiple of 32");
  return K * bits / 32;
}

int64_t qzeros_cols(int64_t N, int bits) {
  check_bits(bits);
  if (N <= 0 || (N * bits) % 32 != 0)
    fail("N = ", N, " output features cannot hold packed zeros at ", bits,
         " bits: N*bits must be a positive multiple of 32");
  return N * bits / 32;
}

namespace {

// fn(begin, end) over [0, n) in chunks of `grain` on pool, or in one call without one.
void for_range(ThreadPool* pool, size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  if (pool && pool->size() > 1 && !pool->in_task())
    pool->parallel_for(0, n, fn, grain);
  else
    fn(0, n);
}

}  // namespace

void pack_qweight(const uint8_t* codes, int64_t N, int64_t K, int bits, int32_t* qweight, ThreadPool* pool) {
  qweight_rows(K, bits);
  const uint32_t maxq = (1u << bits) - 1;
  // Rows in parallel; each thread packs whole columns of qweight (row n of codes).
  std::atomic<bool> bad{false};
  for_range(pool, size_t(N), 64, [&](size_t n0, size_t n1) {
    uint8_t hi = 0;
    for (size_t i = n0 * size_t(K); i < n1 * size_t(K); ++i) hi = std::max(hi, codes[i]);
    if (hi > maxq) {
      bad = true;
      return;
    }
    for (size_t n = n0; n < n1; ++n)
      pack_stream(codes + n * size_t(K), K, bits, reinterpret_cast<uint32_t*>(qweight) + n, N);
  });
  if (bad)  // the first code out of range, whichever thread saw one
    for (int64_t i = 0; i < N * K; ++i)
      if (codes[i] > maxq) fail("code ", int(codes[i]), " does not fit in ", bits, " bits");
}

void unpack_qweight(const int32_t* qweight, int64_t N, int64_t K, int bits, uint8_t* codes) {
  qweight_rows(K, bits);
  for (int64_t n = 0; n < N; ++n) unpack_stream(reinterpret_cast<const uint32_t*>(qweight) + n, N, K, bits, codes + n * K);
}

int64_t pack_qzeros(const int32_t* zeros, int64_t n_groups, int64_t N, int bits, QuantFormat format,
                    int32_t* qzeros) {
  const int64_t cols = qzeros_cols(N, bits);
  const int32_t maxq = (1 << bits) - 1;
  const bool v1 = format == QuantFormat::kGptqV1;
  int64_t wrapped = 0;
  std::vector<uint8_t> row(static_cast<size_t>(N));
  for (int64_t g = 0; g < n_groups; ++g) {
    const int32_t* z = zeros + g * N;
    for (int64_t n = 0; n < N; ++n) {
      if (z[n] < 0 || z[n] > maxq) fail("zero point ", z[n], " does not fit in ", bits, " bits");
      wrapped += v1 && z[n] == 0;
      row[size_t(n)] = uint8_t(v1 ? (z[n] - 1) & maxq : z[n]);
    }
    pack_stream(row.data(), N, bits, reinterpret_cast<uint32_t*>(qzeros) + g * cols, 1);
  }
  return wrapped;
}

void unpack_qzeros(const int32_t* qzeros, int64_t n_groups, int64_t N, int bits, QuantFormat format,
                   int32_t* zeros) {
  const int64_t cols = qzeros_cols(N, bits);
  const int32_t add = format == QuantFormat::kGptqV1 ? 1 : 0;
  std::vector<uint8_t> row(static_cast<size_t>(N));
  for (int64_t g = 0; g < n_groups; ++g) {
    unpack_stream(reinterpret_cast<const uint32_t*>(qzeros) + g * cols, 1, N, bits, row.data());
    for (int64_t n = 0; n < N; ++n) zeros[g * N + n] = int32_t(row[size_t(n)]) + add;
  }
}

void validate(const QuantMatrix& m) {
  check_bits(m.bits);
  qweight_rows(m.K, m.bits);
  qzeros_cols(m.N, m.bits);
  const int64_t n_groups = num_groups(m.K, m.group_size);
  if (!m.qweight || !m.qzeros || !m.scales) fail("quantized matrix is missing qweight, qzeros or scales");
  // One NaN or Inf scale makes every output of its column NaN: perplexity "nan", not an error.
  for (int64_t g = 0; g < n_groups; ++g)
    for (int64_t n = 0; n < m.N; ++n)
      if (const float s = fp16_to_fp32(m.scales[g * m.N + n]); !std::isfinite(s))
        fail("scales[", g, ", ", n, "] = ", s, " is not a finite number (corrupt checkpoint)");
  if (m.g_idx) {
    for (int64_t k = 0; k < m.K; ++k)
      if (m.g_idx[k] < 0 || m.g_idx[k] >= n_groups)
        fail("g_idx[", k, "] = ", m.g_idx[k], " is outside [0, ", n_groups, ") for K = ", m.K,
             ", group_size = ", m.group_size);
  }
}

std::vector<float> dequantize(const QuantMatrix& m, ThreadPool* pool) {
  validate(m);
  const int64_t K = m.K, N = m.N, n_groups = m.n_groups(), G = resolve_group_size(K, m.group_size);
  std::vector<int32_t> zeros(static_cast<size_t>(n_groups * N));  // [n_groups, N]
  unpack_qzeros(m.qzeros, n_groups, N, m.bits, m.format, zeros.data());
  std::vector<int32_t> group(static_cast<size_t>(K));  // [K]
  for (int64_t k = 0; k < K; ++k) group[size_t(k)] = m.g_idx ? m.g_idx[k] : int32_t(k / G);
  std::vector<float> W(static_cast<size_t>(N * K));  // [N, K]
  // Row by row (in parallel): row n's codes (qweight's column n), its groups' scales and zeros,
  // then W[n, k] = s * (q - z), the same two roundings in any order of rows. Columns of qweight
  // are gathered kBlock at a time, a cache line of each word row, before they are unpacked.
  constexpr size_t kBlock = 16;
  const size_t Kw = size_t(qweight_rows(K, m.bits));
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(m.qweight);
  for_range(pool, size_t(N), kBlock, [&](size_t n0, size_t n1) {
    std::vector<uint8_t> codes(static_cast<size_t>(K));
    std::vector<uint32_t> cols(kBlock * Kw);  // [kBlock][Kw]: the block's columns, contiguous
    std::vector<float> s(static_cast<size_t>(n_groups)), z(static_cast<size_t>(n_groups));
    for (size_t n = n0; n < n1; ++n) {
      const size_t nb = (n - n0) % kBlock;
      if (nb == 0) {
        const size_t cnt = std::min(kBlock, n1 - n);
        for (size_t r = 0; r < Kw; ++r)
          for (size_t j = 0; j < cnt; ++j) cols[j * Kw + r] = qw[r * size_t(N) + n + j];
      }
      unpack_stream(cols.data() + nb * Kw, 1, K, m.bits, codes.data());
      for (int64_t g = 0; g < n_groups; ++g) {
        s[size_t(g)] = fp16_to_fp32(m.scales[size_t(g * N) + n]);
        z[size_t(g)] = float(zeros[size_t(g * N) + n]);
      }
      float* w = W.data() + n * size_t(K);
      for (int64_t k = 0; k < K; ++k) {
        const size_t g = size_t(group[size_t(k)]);
        w[k] = s[g] * (float(codes[size_t(k)]) - z[g]);
      }
    }
  });
  return W;
}

QuantMatrix PackedQuant::view() const {
  QuantMatrix m;
  m.qweight = qweight.data();
  m.qzeros = qzeros.data();
  m.scales = scales.data();
  m.g_idx = g_idx.empty() ? nullptr : g_idx.data();
  m.bias = bias.empty() ? nullptr : bias.data();
  m.bits = bits;
  m.group_size = group_size;
  m.K = K;
  m.N = N;
  m.format = format;
  return m;
}

PackedQuant pack_quantized(const uint8_t* codes, const float* scales, const int32_t* zeros,
                           const int32_t* g_idx, const float* bias, int bits, int group_size, int64_t K,
                           int64_t N, QuantFormat format, ThreadPool* pool) {
  PackedQuant p;
  p.bits = bits;
  p.group_size = group_size;
  p.K = K;
  p.N = N;
  p.format = format;
  const int64_t n_groups = num_groups(K, group_size);
  p.qweight.resize(static_cast<size_t>(qweight_rows(K, bits) * N));
  p.qzeros.resize(static_cast<size_t>(n_groups * qzeros_cols(N, bits)));
  pack_qweight(codes, N, K, bits, p.qweight.data(), pool);
  p.wrapped_zeros = pack_qzeros(zeros, n_groups, N, bits, format, p.qzeros.data());
  p.scales.resize(static_cast<size_t>(n_groups * N));
  for (size_t i = 0; i < p.scales.size(); ++i) p.scales[i] = fp32_to_fp16(scales[i]);
  if (g_idx) {
    p.g_idx.assign(g_idx, g_idx + K);
  } else {
    const int64_t G = resolve_group_size(K, group_size);
    p.g_idx.resize(size_t(K));
    for (int64_t k = 0; k < K; ++k) p.g_idx[size_t(k)] = int32_t(k / G);
  }
  if (bias) {
    p.bias.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) p.bias[size_t(n)] = fp32_to_fp16(bias[n]);
  }
  validate(p.view());
  return p;
}

}  // namespace gptq::quant
