// qgemm: load-time layout (prepare), ISA dispatch, per-call preprocessing and the scalar
// reference path. The SIMD kernels are in qgemm_kernels.h, instantiated by qgemm_avx2.cpp and
// qgemm_avx512.cpp.
#include "backend/cpu/qgemm.h"

#include "backend/cpu/cpu_features.h"

#include <algorithm>
#include <numeric>

#include "backend/cpu/qgemm_internal.h"
#include "core/half.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq::cpu {

namespace {

bool cpu_has_avx2() { return detected_simd() >= SimdLevel::kAvx2; }

bool cpu_has_avx512() {
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return ok;
}

}  // namespace

const char* isa_name(QgemmIsa isa) {
  switch (isa) {
    case QgemmIsa::kAuto: return "auto";
    case QgemmIsa::kScalar: return "scalar";
    case QgemmIsa::kAvx2: return "avx2";
    case QgemmIsa::kAvx512: return "avx512";
  }
  return "?";
}

bool qgemm_isa_supported(QgemmIsa isa) {
  switch (isa) {
    case QgemmIsa::kAuto:
    case QgemmIsa::kScalar: return true;
    case QgemmIsa::kAvx2: return cpu_has_avx2();
    case QgemmIsa::kAvx512: return cpu_has_avx512();
  }
  return false;
}

QgemmIsa qgemm_best_isa() {
  // The CPU's best, capped by cpu::force_simd (tests run every level).
  const SimdLevel cap = active_simd();
  if (cpu_has_avx512() && cap >= SimdLevel::kAvx512) return QgemmIsa::kAvx512;
  if (cpu_has_avx2() && cap >= SimdLevel::kAvx2) return QgemmIsa::kAvx2;
  return QgemmIsa::kScalar;
}

int64_t PreparedQuantMatrix::checkpoint_bytes() const {
  return words_per_col * N * 4 + n_groups * (N * bits / 32) * 4 + n_groups * N * 2;
}

bool can_implement(const quant::QuantMatrix& m, std::string* why) {
  try {
    quant::validate(m);
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
  return true;
}

PreparedQuantMatrix prepare(const quant::QuantMatrix& m, ThreadPool& pool) {
  quant::validate(m);
  constexpr int64_t TN = PreparedQuantMatrix::kTileN;
  PreparedQuantMatrix p;
  const int64_t K = m.K, N = m.N;
  p.bits = m.bits;
  p.K = K;
  p.N = N;
  p.n_groups = m.n_groups();
  p.n_tiles = (N + TN - 1) / TN;
  p.words_per_col = quant::qweight_rows(K, m.bits);
  const int64_t G = quant::resolve_group_size(K, m.group_size), ng = p.n_groups, Kw = p.words_per_col;

  // Sort input channels by group (stable, so act-order-free layers keep the identity).
  std::vector<int32_t> gk(static_cast<size_t>(K));  // group of each original k
  for (int64_t k = 0; k < K; ++k) gk[size_t(k)] = m.g_idx ? m.g_idx[k] : int32_t(k / G);
  std::vector<int32_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), 0);
  if (!std::is_sorted(gk.begin(), gk.end())) {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return gk[size_t(a)] < gk[size_t(b)]; });
    p.perm = order;
  }
  p.group_begin.assign(size_t(ng + 1), 0);
  for (int64_t k = 0; k < K; ++k) ++p.group_begin[size_t(gk[size_t(k)]) + 1];
  for (int64_t g = 0; g < ng; ++g) p.group_begin[size_t(g + 1)] += p.group_begin[size_t(g)];
  const int64_t V = p.unit_values();
  p.unit_aligned = std::all_of(p.group_begin.begin(), p.group_begin.end(), [&](int32_t b) { return b % V == 0; });
  if (p.unit_aligned) {
    p.unit_group.resize(size_t(K / V));
    for (int64_t u = 0; u < K / V; ++u) p.unit_group[size_t(u)] = gk[size_t(order[size_t(u * V)])];
  }

  // qweight cut into column tiles [n_tiles][Kw][32]; with a reorder, each column's codes are
  // gathered in the new K order and re-packed straight into its tile.
  std::vector<uint8_t> codes;  // [N, K], only when reordering
  if (!p.perm.empty()) {
    codes.resize(size_t(N * K));
    quant::unpack_qweight(m.qweight, N, K, m.bits, codes.data());
  }
  p.qweight.assign(size_t(p.n_tiles * Kw * TN), 0u);
  std::vector<int32_t> zeros(size_t(ng * N));  // [ng, N]
  quant::unpack_qzeros(m.qzeros, ng, N, m.bits, m.format, zeros.data());
  p.scales.assign(size_t(p.n_tiles * ng * TN), 0);
  p.zeros.assign(size_t(p.n_tiles * ng * TN), 0);
  pool.parallel_for(0, size_t(p.n_tiles), [&](size_t t0, size_t t1) {
    std::vector<uint8_t> row(codes.empty() ? 0 : size_t(K));
    for (int64_t t = int64_t(t0); t < int64_t(t1); ++t) {
      const int64_t n0 = t * TN, nc = std::min(TN, N - n0);
      uint32_t* qt = p.qweight.data() + t * Kw * TN;
      if (codes.empty()) {
        for (int64_t r = 0; r < Kw; ++r)
          for (int64_t j = 0; j < nc; ++j) qt[r * TN + j] = uint32_t(m.qweight[r * N + n0 + j]);
      } else {
        for (int64_t j = 0; j < nc; ++j) {
          const uint8_t* c = codes.data() + (n0 + j) * K;
          for (int64_t i = 0; i < K; ++i) row[size_t(i)] = c[order[size_t(i)]];
          quant::pack_stream(row.data(), K, m.bits, qt + j, TN);
        }
      }
      for (int64_t g = 0; g < ng; ++g)
        for (int64_t j = 0; j < nc; ++j) {
          p.scales[size_t((t * ng + g) * TN + j)] = m.scales[g * N + n0 + j];
          p.zeros[size_t((t * ng + g) * TN + j)] = fp32_to_fp16(float(zeros[size_t(g * N + n0 + j)]));
        }
    }
  });
  if (m.bias) {
    p.bias.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) p.bias[size_t(n)] = fp16_to_fp32(m.bias[n]);
  }
  return p;
}

std::vector<float> dequantize(const PreparedQuantMatrix& m) {
  constexpr int64_t TN = PreparedQuantMatrix::kTileN;
  const int64_t K = m.K, N = m.N, ng = m.n_groups, bits = m.bits;
  const uint32_t mask = (1u << bits) - 1;
  std::vector<float> W(size_t(N * K));  // [N, K]
  for (int64_t t = 0; t < m.n_tiles; ++t) {
    const uint32_t* qt = m.qweight.data() + t * m.words_per_col * TN;  // [words_per_col][32]
    for (int64_t j = 0; j < std::min(TN, N - t * TN); ++j) {
      float* w = W.data() + (t * TN + j) * K;
      for (int64_t g = 0; g < ng; ++g) {
        const float s = fp16_to_fp32(m.scales[size_t((t * ng + g) * TN + j)]);
        const float z = fp16_to_fp32(m.zeros[size_t((t * ng + g) * TN + j)]);
        // k: the prepared (group-sorted) order; perm maps it back to the input channel
        for (int64_t k = m.group_begin[size_t(g)]; k < m.group_begin[size_t(g + 1)]; ++k) {
          const int64_t bit = k * bits, wi = bit >> 5, sh = bit & 31;
          uint32_t q = qt[wi * TN + j] >> sh;
          if (sh + bits > 32) q |= qt[(wi + 1) * TN + j] << (32 - sh);
          w[m.perm.empty() ? k : m.perm[size_t(k)]] = s * (float(q & mask) - z);
        }
      }
    }
  }
  return W;
}

namespace detail {

// The readable reference over the prepared layout: every output is sum_k x[k] * s * (q - z), with
// codes pulled bit by bit from the tile stream. Handles any group layout.
void qgemm_scalar(const QgemmCall& c) {
  const PreparedQuantMatrix& m = *c.w;
  constexpr int64_t TN = PreparedQuantMatrix::kTileN;
  const int64_t K = m.K, N = m.N, ng = m.n_groups, bits = m.bits;
  const uint32_t mask = (1u << bits) - 1;
  c.pool->parallel_for(0, size_t(m.n_tiles), [&](size_t t0, size_t t1) {
    for (int64_t t = int64_t(t0); t < int64_t(t1); ++t) {
      const uint32_t* qt = m.qweight.data() + t * m.words_per_col * TN;  // [words_per_col][32]
      for (int64_t j = 0; j < std::min(TN, N - t * TN); ++j) {
        const int64_t n = t * TN + j;
        for (int64_t r = 0; r < c.T; ++r) {
          const float* x = c.xp + r * K;  // [K]
          float acc = 0.f;
          for (int64_t g = 0; g < ng; ++g) {
            const float s = fp16_to_fp32(m.scales[size_t((t * ng + g) * TN + j)]);
            const float z = fp16_to_fp32(m.zeros[size_t((t * ng + g) * TN + j)]);
            for (int64_t k = m.group_begin[size_t(g)]; k < m.group_begin[size_t(g + 1)]; ++k) {
              const int64_t bit = k * bits, w = bit >> 5, sh = bit & 31;
              uint32_t q = qt[w * TN + j] >> sh;
              if (sh + bits > 32) q |= qt[(w + 1) * TN + j] << (32 - sh);
              acc += x[k] * (s * (float(q & mask) - z));
            }
          }
          c.y[r * N + n] = acc;
        }
      }
    }
  });
}

}  // namespace detail

void qgemm(ThreadPool& pool, const PreparedQuantMatrix& w, const float* x, int64_t T, float* y, const QgemmOptions& opt) {
  GPTQ_ASSERT(T >= 0);
  if (T == 0) return;
  QgemmIsa isa = opt.isa == QgemmIsa::kAuto ? qgemm_best_isa() : opt.isa;
  GPTQ_ASSERT(qgemm_isa_supported(isa), "qgemm: ISA ", isa_name(isa), " is not supported by this CPU");
  if (!w.unit_aligned) isa = QgemmIsa::kScalar;
  const int64_t K = w.K, N = w.N, ng = w.n_groups;

  // xp: [T, K] columns in prepared order; xsum: [T, ng].
  thread_local std::vector<float> xbuf, xsbuf;
  const float* xp = x;
  if (!w.perm.empty()) {
    xbuf.resize(size_t(T * K));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) xbuf[size_t(t * K + k)] = x[t * K + w.perm[size_t(k)]];
    xp = xbuf.data();
  }
  xsbuf.resize(size_t(T * ng));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < ng; ++g) {
      float s = 0.f;
      for (int64_t k = w.group_begin[size_t(g)]; k < w.group_begin[size_t(g + 1)]; ++k) s += xp[t * K + k];
      xsbuf[size_t(t * ng + g)] = s;
    }

  detail::QgemmCall call;
  call.w = &w;
  call.xp = xp;
  call.xsum = xsbuf.data();
  call.T = T;
  call.y = y;
  call.max_direct_t = opt.max_direct_t;
  call.pool = &pool;
  switch (isa) {
    case QgemmIsa::kAvx512: detail::qgemm_avx512(call); break;
    case QgemmIsa::kAvx2: detail::qgemm_avx2(call); break;
    default: detail::qgemm_scalar(call); break;
  }
  if (!w.bias.empty())
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) y[t * N + n] += w.bias[size_t(n)];
}

}  // namespace gptq::cpu
