// Attention over the paged KV cache (ops.h): the new keys/values into their slots, then causal GQA
// attention of every query row of the batch, split over the keys (flash-decoding) so that a few
// long sequences still fill the GPU.
//
// Work item: one warp per (query row, head, key split). A lane holds the element pairs
// 2·lane + 64·e + {0, 1} of q and of the output accumulator (head_dim <= 256, even). Keys are
// visited in tiles of kTile: the loads of a tile's keys and values are issued together (a decode
// step is latency-bound: one key at a time left the warp waiting on every load), their dot
// products reduced together, then an online-softmax update in fp32 (running max m, sum l) per
// tile. Each split writes (acc, m, l) and a second kernel combines the splits, or a row's only
// split writes acc / l directly.
//
// The number of splits (the grid) is sized from an upper bound on the keys (the cache's context
// length when known), so that a decode step captured as a CUDA graph stays valid as the sequences
// grow; each row divides its own keys over them (split_keys: at least kMinSplitKeys each), so a
// short context is a few one-tile splits (a decode step is a chain of dependent loads per tile:
// table, block address, keys; 4 tiles per warp took 15 us at 40 keys, ncu) and splits past a
// row's keys return at once.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/ops.h"

namespace gptq::cuda {

namespace {

constexpr int kMaxPairs = 4;  // head_dim <= 256
constexpr int kTile = 8;      // keys in flight per warp
constexpr int kWarps = 4;     // warps (work items) per block
constexpr int64_t kMinSplitKeys = kTile;


__global__ void kv_store_kernel(PagedKV kv, int64_t layer, const float* k, int64_t k_stride, const float* v,
                                int64_t v_stride, const int64_t* slots) {
  const int64_t t = blockIdx.x;
  const int which = int(blockIdx.y % 2);
  const int64_t j = blockIdx.y / 2;
  const int64_t slot = slots[t];
  const int32_t block = int32_t(slot / kv.block_size);
  const int64_t off = slot % kv.block_size;
  const float* src = (which == 0 ? k + t * k_stride : v + t * v_stride) + j * kv.head_dim;
  char* dst = const_cast<char*>(kv_head_base(kv, layer, block, which, j)) +
              size_t(off * kv.head_dim) * (kv.f16 ? 2 : 4);
  for (int64_t i = threadIdx.x; i < kv.head_dim; i += blockDim.x) {
    if (kv.f16)
      reinterpret_cast<__half*>(dst)[i] = __float2half_rn(src[i]);
    else
      reinterpret_cast<float*>(dst)[i] = src[i];
  }
}

// Elements i, i + 1 (i even) of a head row as fp32.
__device__ __forceinline__ float2 load_pair(const char* p, int64_t i, bool f16) {
  return f16 ? __half22float2(*reinterpret_cast<const __half2*>(p + i * 2)) : *reinterpret_cast<const float2*>(p + i * 4);
}

struct Split {
  int64_t n_splits;
};

// Keys per split of a row that sees `visible` keys, and the splits that hold some.
__device__ __forceinline__ int64_t split_keys(int64_t visible, Split sp) {
  const int64_t per = (visible + sp.n_splits - 1) / sp.n_splits;
  return per > kMinSplitKeys ? per : kMinSplitKeys;
}
__device__ __forceinline__ int64_t used_splits(int64_t visible, Split sp) {
  const int64_t per = split_keys(visible, sp);
  return (visible + per - 1) / per;
}

__device__ __forceinline__ int64_t visible_keys(const AttnArgs& a, int64_t t, AttnSeqDev* seq) {
  const AttnSeqDev S = a.seqs[a.row_seq[t]];
  if (seq) *seq = S;
  return int64_t(S.pos0) + (t - S.row0) + 1;
}

// scratch record of one (row, head, split): acc[head_dim], m, l. 4 blocks (16 warps) per SM: at
// most 128 registers (the split arithmetic took it to 143 and 3 blocks).
__global__ void __launch_bounds__(32 * kWarps, 4) attention_kernel(AttnArgs a, Split sp) {
  allow_dependents();  // the next kernel may launch (PDL: device_util.cuh)
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= a.T * a.n_heads) return;
  const int64_t t = item / a.n_heads, h = item % a.n_heads;
  const int64_t split = blockIdx.y;
  AttnSeqDev S;
  const int64_t visible = visible_keys(a, t, &S);
  if (a.prefill_rows > 0 && S.n_rows >= a.prefill_rows) return;  // paged_attention_prefill's
  const int64_t per = split_keys(visible, sp);
  const int64_t j0 = split * per, j1 = std::min(visible, j0 + per);
  if (j0 >= j1) return;  // past this row's keys: the combine step skips it
  const int64_t hd = a.kv.head_dim, bs = a.kv.block_size;
  const int64_t kvh = h / (a.n_heads / a.kv.n_kv_heads);
  const float scale = 1.f / sqrtf(float(hd));
  const int32_t* table = a.tables + S.table0;
  const size_t es = a.kv.f16 ? 2 : 4;

  float2 q[kMaxPairs], acc[kMaxPairs];
  const float* qr = a.q + t * a.q_stride + h * hd;
#pragma unroll
  for (int e = 0; e < kMaxPairs; ++e) {
    const int64_t i = 2 * lane + 64 * e;
    q[e] = i < hd ? make_float2(qr[i] * scale, qr[i + 1] * scale) : make_float2(0.f, 0.f);
    acc[e] = make_float2(0.f, 0.f);
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t jt = j0; jt < j1; jt += kTile) {
    float s[kTile];
    float2 v[kTile][kMaxPairs];
#pragma unroll
    for (int u = 0; u < kTile; ++u) {
      const int64_t j = jt + u;
      float d = 0.f;
      if (j < j1) {
        const int32_t block = table[j / bs];
        const size_t off = size_t((j % bs) * hd) * es;
        const char* kp = kv_head_base(a.kv, a.layer, block, 0, kvh) + off;
        const char* vp = kv_head_base(a.kv, a.layer, block, 1, kvh) + off;
#pragma unroll
        for (int e = 0; e < kMaxPairs; ++e) {
          const int64_t i = 2 * lane + 64 * e;
          if (i < hd) {
            const float2 k = load_pair(kp, i, a.kv.f16);
            d = fmaf(q[e].x, k.x, fmaf(q[e].y, k.y, d));
            v[u][e] = load_pair(vp, i, a.kv.f16);
          }
        }
      }
      s[u] = d;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int u = 0; u < kTile; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kTile; ++u)
      if (jt + u < j1) m_new = fmaxf(m_new, s[u]);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l *= corr;
#pragma unroll
    for (int e = 0; e < kMaxPairs; ++e) acc[e] = make_float2(acc[e].x * corr, acc[e].y * corr);
#pragma unroll
    for (int u = 0; u < kTile; ++u) {
      if (jt + u >= j1) continue;
      const float p = expf(s[u] - m_new);
      l += p;
#pragma unroll
      for (int e = 0; e < kMaxPairs; ++e)
        if (2 * lane + 64 * e < hd) acc[e] = make_float2(fmaf(p, v[u][e].x, acc[e].x), fmaf(p, v[u][e].y, acc[e].y));
    }
    m = m_new;
  }
  float* dst;
  float inv = 1.f;
  if (used_splits(visible, sp) == 1) {
    dst = a.out + t * a.out_stride + h * hd;
    inv = 1.f / l;
  } else {
    dst = a.scratch + (item * sp.n_splits + split) * (hd + 2);
    if (lane == 0) {
      dst[hd] = m;
      dst[hd + 1] = l;
    }
  }
#pragma unroll
  for (int e = 0; e < kMaxPairs; ++e) {
    const int64_t i = 2 * lane + 64 * e;
    if (i < hd) {
      dst[i] = acc[e].x * inv;
      dst[i + 1] = acc[e].y * inv;
    }
  }
}

// The splits of each (row, head) that hold keys: 0 .. used_splits - 1 (none when one split did it all).
__global__ void combine_kernel(AttnArgs a, Split sp) {
  allow_dependents();  // the next kernel may launch (PDL: device_util.cuh)
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= a.T * a.n_heads) return;
  const int64_t t = item / a.n_heads, h = item % a.n_heads, hd = a.kv.head_dim;
  if (a.prefill_rows > 0 && a.seqs[a.row_seq[t]].n_rows >= a.prefill_rows) return;
  const int64_t used = used_splits(visible_keys(a, t, nullptr), sp);
  if (used == 1) return;  // the split wrote the output
  const float* recs = a.scratch + item * sp.n_splits * (hd + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < used; ++s) M = fmaxf(M, recs[s * (hd + 2) + hd]);
  float L = 0.f;
  float2 acc[kMaxPairs] = {};
  for (int64_t s = 0; s < used; ++s) {
    const float* r = recs + s * (hd + 2);
    const float w = expf(r[hd] - M);
    L = fmaf(r[hd + 1], w, L);
#pragma unroll
    for (int e = 0; e < kMaxPairs; ++e) {
      const int64_t i = 2 * lane + 64 * e;
      if (i < hd) acc[e] = make_float2(fmaf(r[i], w, acc[e].x), fmaf(r[i + 1], w, acc[e].y));
    }
  }
  float* o = a.out + t * a.out_stride + h * hd;
  const float inv = 1.f / L;
#pragma unroll
  for (int e = 0; e < kMaxPairs; ++e) {
    const int64_t i = 2 * lane + 64 * e;
    if (i < hd) {
      o[i] = acc[e].x * inv;
      o[i + 1] = acc[e].y * inv;
    }
  }
}

// Enough warps to fill the GPU (~2 waves of 132 SMs × 16 warps), splits of at least kMinSplitKeys
// of the most keys a row may see.
Split choose_split(int64_t T, int64_t n_heads, int64_t max_keys) {
  const int64_t items = T * n_heads, want = 4224;
  const int64_t n = std::max<int64_t>(1, (want + items - 1) / items);
  return {std::min(n, std::max<int64_t>(1, (max_keys + kMinSplitKeys - 1) / kMinSplitKeys))};
}

}  // namespace

void kv_store(const PagedKV& kv, int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
              const int64_t* slots, int64_t T, cudaStream_t s) {
  if (T == 0) return;
  GPTQ_ASSERT(T <= 0x7fffffff && 2 * kv.n_kv_heads <= 65535);
  kv_store_kernel<<<dim3(unsigned(T), unsigned(2 * kv.n_kv_heads)), 128, 0, s>>>(kv, layer, k, k_stride, v, v_stride,
                                                                                 slots);
  CUDA_CHECK_LAUNCH();
}

size_t attention_scratch_floats(int64_t T, int64_t n_heads, int64_t head_dim, int64_t max_keys) {
  const Split sp = choose_split(T, n_heads, max_keys);
  return sp.n_splits == 1 ? 0 : size_t(T * n_heads * sp.n_splits * (head_dim + 2));
}

void paged_attention(const AttnArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  GPTQ_ASSERT(a.kv.head_dim <= 64 * kMaxPairs && a.kv.head_dim % 2 == 0, "head_dim odd or above 256");
  const Split sp = choose_split(a.T, a.n_heads, a.max_keys);
  GPTQ_ASSERT(sp.n_splits <= 65535);
  const unsigned blocks = blocks_for(a.T * a.n_heads, kWarps);
  attention_kernel<<<dim3(blocks, unsigned(sp.n_splits)), 32 * kWarps, 0, s>>>(a, sp);
  CUDA_CHECK_LAUNCH();
  if (sp.n_splits > 1) {
    combine_kernel<<<blocks, 32 * kWarps, 0, s>>>(a, sp);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace gptq::cuda
