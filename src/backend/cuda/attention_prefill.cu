// Prefill attention on tensor cores (ops.h: paged_attention_prefill): the rows of the sequences
// that bring kPrefillMinRows or more new tokens, FlashAttention-2 style, over the paged KV cache.
//
// Work item: one block of 4 warps per (sequence, tile of 64 query rows, head); warp w owns query
// rows 16w .. 16w+15 of the tile. Keys and values are visited in tiles of 64 from position 0 up to
// the last key the tile's last row sees: each tile is read from its cache blocks (fp16 or fp32,
// converted to fp16) into shared memory, S = Q·Kᵀ on mma.sync m16n8k16 (fp16 operands, fp32
// accumulation), the causal mask where the tile crosses the diagonal, an online-softmax update in
// fp32 (running max m, sum l per row), then O += P·V with P rounded to fp16 straight from the
// score registers (the accumulator layout of m16n8 is the A-operand layout of m16n8k16) and V
// read transposed by ldmatrix. O / l is written in fp32.
//
// Precision: q, k, v and the softmax weights are rounded to fp16 (relative 2^-11), products and
// sums in fp32 — what FlashAttention, FlashInfer and vLLM do. Decode rows (fewer new tokens per
// sequence) stay on the fp32 kernel of attention.cu; which kernel a sequence gets depends only on
// its own number of new rows, so batching does not change its results.
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/ops.h"

namespace gptq::cuda {

namespace {

constexpr int kRows = 64;   // query rows per block
constexpr int kKeys = 64;   // keys per tile
constexpr int kWarps = 4;   // 16 query rows each
constexpr int kPad = 8;     // halves of padding per shared row: conflict-free fragment loads

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) { return h2_as_u32(__floats2half2_rn(lo, hi)); }

// Position j's key (which 0) or value (1) row of head kvh in the layer's cache blocks.
__device__ __forceinline__ const char* key_row(const AttnArgs& a, const int32_t* table, int which, int64_t kvh,
                                               int64_t j) {
  const int64_t bs = a.kv.block_size;
  return kv_head_base(a.kv, a.layer, table[j / bs], which, kvh) + size_t((j % bs) * a.kv.head_dim) * (a.kv.f16 ? 2 : 4);
}

// Rows [j0, j0 + kKeys) of head kvh's keys (which 0) or values (1) into dst [kKeys][HD + kPad] as
// fp16; rows at or past `end` are zeros (so that masked weights never meet garbage).
template <int HD>
__device__ __forceinline__ void load_tile(const AttnArgs& a, const int32_t* table, int which, int64_t kvh, int64_t j0,
                                          int64_t end, __half (*dst)[HD + kPad]) {
  if (a.kv.f16) {
    constexpr int kChunks = HD / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < kKeys * kChunks; c += blockDim.x) {
      const int r = c / kChunks, e = (c % kChunks) * 8;
      const int64_t j = j0 + r;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (j < end) v = *reinterpret_cast<const uint4*>(key_row(a, table, which, kvh, j) + size_t(e) * 2);
      *reinterpret_cast<uint4*>(&dst[r][e]) = v;
    }
  } else {
    constexpr int kChunks = HD / 4;  // float4 per row
    for (int c = threadIdx.x; c < kKeys * kChunks; c += blockDim.x) {
      const int r = c / kChunks, e = (c % kChunks) * 4;
      const int64_t j = j0 + r;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (j < end) v = *reinterpret_cast<const float4*>(key_row(a, table, which, kvh, j) + size_t(e) * 4);
      *reinterpret_cast<uint2*>(&dst[r][e]) = make_uint2(pack_half2(v.x, v.y), pack_half2(v.z, v.w));
    }
  }
}

template <int HD>
__global__ void __launch_bounds__(kWarps * 32) prefill_kernel(AttnArgs a) {
  const AttnSeqDev S = a.seqs[blockIdx.z];
  const int64_t tile0 = int64_t(blockIdx.x) * kRows;
  if (S.n_rows < kPrefillMinRows || tile0 >= S.n_rows) return;
  const int64_t h = blockIdx.y, kvh = h / (a.n_heads / a.kv.n_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int32_t* table = a.tables + S.table0;

  __shared__ __align__(16) __half sK[kKeys][HD + kPad];
  __shared__ __align__(16) __half sV[kKeys][HD + kPad];

  // Q: the tile's rows into sK as fp16 (rows past the sequence: zeros), then into registers.
  for (int c = threadIdx.x; c < kRows * (HD / 4); c += blockDim.x) {
    const int r = c / (HD / 4), e = (c % (HD / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (tile0 + r < S.n_rows) v = *reinterpret_cast<const float4*>(a.q + (S.row0 + tile0 + r) * a.q_stride + h * HD + e);
    *reinterpret_cast<uint2*>(&sK[r][e]) = make_uint2(pack_half2(v.x, v.y), pack_half2(v.z, v.w));
  }
  __syncthreads();
  uint32_t qf[HD / 16][4];
  const int qr = warp * 16 + g;
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    qf[kc][0] = *reinterpret_cast<const uint32_t*>(&sK[qr][kc * 16 + 2 * t]);
    qf[kc][1] = *reinterpret_cast<const uint32_t*>(&sK[qr + 8][kc * 16 + 2 * t]);
    qf[kc][2] = *reinterpret_cast<const uint32_t*>(&sK[qr][kc * 16 + 2 * t + 8]);
    qf[kc][3] = *reinterpret_cast<const uint32_t*>(&sK[qr + 8][kc * 16 + 2 * t + 8]);
  }

  // This thread's two rows (g and g + 8 of its warp's 16) and the last key each sees; rows past
  // the sequence see key 0 only (finite, never written).
  int64_t last[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t r = tile0 + qr + 8 * i;
    last[i] = r < S.n_rows ? S.pos0 + r : 0;
  }
  const int64_t tile_rows = S.n_rows - tile0 < kRows ? S.n_rows - tile0 : kRows;
  const int64_t end = S.pos0 + tile0 + tile_rows;  // keys the tile's last row sees
  const int64_t diag = S.pos0 + tile0;             // the first row's last key
  const float scale_log2 = 1.4426950408889634f / sqrtf(float(HD));

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int64_t j0 = 0; j0 < end; j0 += kKeys) {
    __syncthreads();  // the previous tile (or Q) is read
    load_tile<HD>(a, table, 0, kvh, j0, end, sK);
    load_tile<HD>(a, table, 1, kvh, j0, end, sV);
    __syncthreads();

    float s[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kc = 0; kc < HD / 16; ++kc) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&sK[nt * 8 + g][kc * 16 + 2 * t]);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&sK[nt * 8 + g][kc * 16 + 2 * t + 8]);
        mma_16816(s[nt], qf[kc], b0, b1);
      }
    }
    // Scores in log2 units; keys past a row's last one masked (only where the tile crosses the
    // diagonal or the end).
    const bool masked = j0 + kKeys - 1 > diag;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2;
        float v = s[nt][e] * scale_log2;
        if (masked && j0 + nt * 8 + 2 * t + (e % 2) > last[i]) v = -INFINITY;
        s[nt][e] = v;
        mx[i] = fmaxf(mx[i], v);
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    }
    // Key 0 is in the first tile and every row sees it: mx is finite from the first tile on.
    float corr[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      corr[i] = exp2f(m[i] - mx[i]);  // 0 on the first tile (m = -inf)
      m[i] = mx[i];
    }
    uint32_t pf[kKeys / 16][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      const float p0 = exp2f(s[nt][0] - m[0]), p1 = exp2f(s[nt][1] - m[0]);
      const float p2 = exp2f(s[nt][2] - m[1]), p3 = exp2f(s[nt][3] - m[1]);
      sum[0] += p0 + p1;
      sum[1] += p2 + p3;
      pf[nt / 2][(nt % 2) * 2 + 0] = pack_half2(p0, p1);
      pf[nt / 2][(nt % 2) * 2 + 1] = pack_half2(p2, p3);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) l[i] = l[i] * corr[i] + sum[i];  // quad partial sums: reduced at the end
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      o[dt][0] *= corr[0];
      o[dt][1] *= corr[0];
      o[dt][2] *= corr[1];
      o[dt][3] *= corr[1];
    }
    // O += P·V: for 16 keys kc and 16 value columns, ldmatrix.trans gives the B fragments of two
    // n-tiles: matrix q (lane / 8) is keys kc·16 + (q % 2)·8 + row, columns d0 + (q / 2)·8.
#pragma unroll
    for (int kc = 0; kc < kKeys / 16; ++kc) {
#pragma unroll
      for (int d0 = 0; d0 < HD; d0 += 16) {
        const int q = lane / 8, r = lane % 8;
        uint32_t b[4];
        ldmatrix_x4_trans(b, &sV[kc * 16 + (q % 2) * 8 + r][d0 + (q / 2) * 8]);
        mma_16816(o[d0 / 8], pf[kc], b[0], b[1]);
        mma_16816(o[d0 / 8 + 1], pf[kc], b[2], b[3]);
      }
    }
  }

  // The row sums over the quad, then O / l in fp32.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t r = tile0 + qr + 8 * i;
    if (r >= S.n_rows) continue;
    const float inv = 1.f / l[i];
    float* dst = a.out + (S.row0 + r) * a.out_stride + h * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt)
      *reinterpret_cast<float2*>(dst + dt * 8 + 2 * t) = make_float2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
  }
}

}  // namespace

bool prefill_attention_ok(int64_t head_dim, const float* q, int64_t q_stride, const float* out, int64_t out_stride) {
  return (head_dim == 64 || head_dim == 128) && q_stride % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
         out_stride % 2 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
}

void paged_attention_prefill(const AttnArgs& a, int64_t n_seqs, int64_t max_rows, cudaStream_t s) {
  if (n_seqs == 0 || max_rows < kPrefillMinRows) return;
  GPTQ_ASSERT(prefill_attention_ok(a.kv.head_dim, a.q, a.q_stride, a.out, a.out_stride) && n_seqs <= 65535 && a.n_heads <= 65535);
  const dim3 grid(unsigned((max_rows + kRows - 1) / kRows), unsigned(a.n_heads), unsigned(n_seqs));
  if (a.kv.head_dim == 64)
    prefill_kernel<64><<<grid, kWarps * 32, 0, s>>>(a);
  else
    prefill_kernel<128><<<grid, kWarps * 32, 0, s>>>(a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptq::cuda
