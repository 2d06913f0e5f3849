// make_gptq_layout: the CPU-prepared form (column tiles of 32, act-order already reordered) cut
// into the device layouts of gptq_kernels.h. Plain C++; runs once per layer at load.
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

  // qweight: the prepared tile holds column n's bit stream at qt[word][n % 32]. 4 bits: each code
  // moved to its mma position; otherwise chunk c of column n is stream words [c*b, c*b+b), words
  // past the column's stream (the last chunk's padding) 0.
  L.qweight.assign(size_t(gptq_qweight_words(b, nc, N)), 0u);
  if (b == 4) {
    // Word by word of the mma layout (gptq_mma4_pos inverted): word ((kb n_ct + ct) 32 + lane) 4 + kt
    // holds at nibble j = 2 rh + kh + 4 kl the code of column n = 16 ct + 8 rh + lane / 4, input
    // k = 64 kb + 16 kt + 8 kh + 2 (lane % 4) + kl: both kl of one (rh, kh) are byte lane % 4 of the
    // column's stream word k / 8. A (kb, ct) block reads stream words 8 kb .. 8 kb + 7 of 16
    // columns of one prepared tile (16 contiguous words each); words past K (K % 8 == 0) or N are 0.
    const int64_t n_ct = (N + 15) / 16, n_kb = (nc + 1) / 2;
    uint32_t* out = L.qweight.data();
    uint32_t src[8][16];  // [stream word - 8 kb][column - 16 ct]
    for (int64_t kb = 0; kb < n_kb; ++kb)
      for (int64_t ct = 0; ct < n_ct; ++ct) {
        const int64_t n0 = 16 * ct;
        const uint32_t* base = w.qweight.data() + (n0 / TN) * Kw * TN + n0 % TN;
        for (int rr = 0; rr < 8; ++rr)
          for (int c = 0; c < 16; ++c) {
            const int64_t r = 8 * kb + rr;
            src[rr][c] = r < Kw && n0 + c < N ? base[r * TN + c] : 0u;
          }
        for (int lane = 0; lane < 32; ++lane) {
          const int shift = 8 * (lane % 4), c = lane / 4;
          for (int kt = 0; kt < 4; ++kt) {
            uint32_t word = 0;
            for (int rh = 0; rh < 2; ++rh)
              for (int kh = 0; kh < 2; ++kh) {
                const uint32_t byte = (src[2 * kt + kh][8 * rh + c] >> shift) & 0xffu;
                const int j = 2 * rh + kh;
                word |= (byte & 15u) << (4 * j) | (byte >> 4) << (4 * (j + 4));
              }
            *out++ = word;
          }
        }
      }
  }
  for (int64_t n = 0; n < N && b != 4; ++n) {
    const uint32_t* qt = w.qweight.data() + (n / TN) * Kw * TN + n % TN;
    for (int64_t c = 0; c < nc; ++c)
      for (int j = 0; j < b; ++j) {
        const int64_t r = c * b + j;
        if (r < Kw) L.qweight[size_t((c * N + n) * b + j)] = qt[r * TN];
      }
  }
  const int64_t szs = gptq_sz_stride(b, N);
  L.scale_zero.assign(size_t(ng * szs), 0u);
  for (int64_t g = 0; g < ng; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = size_t(((n / TN) * ng + g) * TN + n % TN);
      L.scale_zero[size_t(g * szs + n)] = uint32_t(w.scales[i]) | (uint32_t(w.zeros[i]) << 16);
    }
  // Groups are contiguous ranges of the reordered K (prepare sorted them), so the group of chunk c
  // is the one whose range holds input 32c; empty groups (act-order maps may skip one) never match.
  L.chunk_group.resize(size_t(nc));
  int64_t g = 0;
  for (int64_t c = 0; c < nc; ++c) {
    while (g + 1 < ng && w.group_begin[size_t(g + 1)] <= 32 * c) ++g;
    L.chunk_group[size_t(c)] = int32_t(g);
  }
  // Uniform groups (every group G = 32 * cpg reordered inputs; act-order checkpoints too, once
  // reordered, unless a group is short or empty): the kernels compute the group, no table read.
  int64_t cpg = 0;  // the chunks of group 0
  while (cpg < nc && L.chunk_group[size_t(cpg)] == 0) ++cpg;
  bool uniform = cpg > 0;
  for (int64_t c = 0; c < nc && uniform; ++c) uniform = L.chunk_group[size_t(c)] == c / cpg;
  L.chunks_per_group = uniform ? int32_t(cpg) : 0;
  L.perm = w.perm;
  L.fast = true;
  return L;
}

std::vector<float> dequantize_layout(const GptqLayout& L) {
  GPTQ_ASSERT(L.fast);
  std::vector<float> W(size_t(L.N * L.K));
  std::vector<uint8_t> q(32);
  const int64_t n_ct = (L.N + 15) / 16;
  for (int64_t c = 0; c < L.n_chunks; ++c) {
    const int32_t g = L.chunk_group[size_t(c)];
    for (int64_t n = 0; n < L.N; ++n) {
      if (L.bits == 4) {
        for (int64_t i = 0; i < 32; ++i) {
          const GptqMma4Pos p = gptq_mma4_pos(n, c * 32 + i, n_ct);
          q[size_t(i)] = uint8_t((L.qweight[size_t(p.word)] >> (4 * p.nibble)) & 15u);
        }
      } else {
        quant::unpack_stream(L.qweight.data() + size_t((c * L.N + n) * L.bits), 1, 32, L.bits, q.data());
      }
      const uint32_t sz = L.scale_zero[size_t(g * gptq_sz_stride(L.bits, L.N) + n)];
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
