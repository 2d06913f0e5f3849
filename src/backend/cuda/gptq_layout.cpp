// make_gptq_layout: the CPU-prepared form (column tiles of 32, act-order already reordered) cut
// into the chunked device layout of gptq_kernels.h. Plain C++; runs once per layer at load.
#include <algorithm>

#include "backend/cuda/gptq_kernels.h"
#include "core/half.h"
#include "gptq/error.h"
#include "io/gptq_format.h"

namespace gptq::cuda {

GptqLayout make_gptq_layout(const cpu::PreparedQuantMatrix& w) {
  constexpr int64_t TN = cpu::PreparedQuantMatrix::kTileN;
  GptqLayout L;
  L.bits = w.bits;
  L.K = w.K;
  L.N = w.N;
  L.n_groups = w.n_groups;
  L.n_chunks = (w.K + 31) / 32;
  GPTQ_ASSERT(w.bits == 2 || w.bits == 3 || w.bits == 4 || w.bits == 8);
  GPTQ_ASSERT(int64_t(w.group_begin.size()) == w.n_groups + 1 && w.words_per_col * 32 == w.K * w.bits);
  // A chunk has one group only when every boundary inside K is a multiple of 32 (a boundary equal
  // to K, the end of the last non-empty group, may fall anywhere).
  for (int32_t b : w.group_begin)
    if (b != w.K && b % 32 != 0) return L;  // fast = false, vectors empty
  const int b = w.bits;
  const int64_t N = w.N, nc = L.n_chunks, ng = w.n_groups, Kw = w.words_per_col;

  // qweight: chunk c of column n is stream words [c*b, c*b+b) of the column, which the prepared
  // tile holds at qt[word][n % 32]; words past the column's stream (the last chunk's padding) are 0.
  L.qweight.assign(size_t(nc * N * b), 0u);
  for (int64_t n = 0; n < N; ++n) {
    const uint32_t* qt = w.qweight.data() + (n / TN) * Kw * TN + n % TN;
    for (int64_t c = 0; c < nc; ++c)
      for (int j = 0; j < b; ++j) {
        const int64_t r = c * b + j;
        if (r < Kw) L.qweight[size_t((c * N + n) * b + j)] = qt[r * TN];
      }
  }
  L.scale_zero.resize(size_t(ng * N));
  for (int64_t g = 0; g < ng; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = size_t(((n / TN) * ng + g) * TN + n % TN);
      L.scale_zero[size_t(g * N + n)] = uint32_t(w.scales[i]) | (uint32_t(w.zeros[i]) << 16);
    }
  // Groups are contiguous ranges of the reordered K (prepare sorted them), so the group of chunk c
  // is the one whose range holds input 32c; empty groups (act-order maps may skip one) never match.
  L.chunk_group.resize(size_t(nc));
  int64_t g = 0;
  for (int64_t c = 0; c < nc; ++c) {
    while (g + 1 < ng && w.group_begin[size_t(g + 1)] <= 32 * c) ++g;
    L.chunk_group[size_t(c)] = int32_t(g);
  }
  L.perm = w.perm;
  L.fast = true;
  return L;
}

std::vector<float> dequantize_layout(const GptqLayout& L) {
  GPTQ_ASSERT(L.fast);
  std::vector<float> W(size_t(L.N * L.K));
  std::vector<uint8_t> q(32);
  for (int64_t c = 0; c < L.n_chunks; ++c) {
    const int32_t g = L.chunk_group[size_t(c)];
    for (int64_t n = 0; n < L.N; ++n) {
      quant::unpack_stream(L.qweight.data() + size_t((c * L.N + n) * L.bits), 1, 32, L.bits, q.data());
      const uint32_t sz = L.scale_zero[size_t(g * L.N + n)];
      const float s = fp16_to_fp32(uint16_t(sz & 0xffffu)), z = fp16_to_fp32(uint16_t(sz >> 16));
      for (int64_t i = 0; i < 32 && c * 32 + i < L.K; ++i) {
        const int64_t k = c * 32 + i, ko = L.perm.empty() ? k : L.perm[size_t(k)];
        W[size_t(n * L.K + ko)] = s * (float(q[size_t(i)]) - z);
      }
    }
  }
  return W;
}

}  // namespace gptq::cuda
