// Attention over the paged KV cache (ops.h): the new keys/values into their slots, then causal GQA
// attention of every query row of the batch, split over the keys (flash-decoding) so that a few
// long sequences still fill the GPU.
//
// Work item: one warp per (query row, head, key split). A lane holds head_dim/32 elements of q and
// of the output accumulator (head_dim <= 256). Keys are visited in position order with an online
// softmax in fp32 (running max m, sum l); each split writes (acc, m, l) and a second kernel
// combines the splits, or the single split writes acc / l directly.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/ops.h"

namespace gptq::cuda {

namespace {

constexpr int kMaxPerLane = 8;   // head_dim <= 256
constexpr int kWarps = 4;        // warps (work items) per block
constexpr int64_t kMinSplitKeys = 128;

__device__ __forceinline__ const char* head_base(const PagedKV& kv, int64_t layer, int32_t block, int which, int64_t kvh) {
  return static_cast<const char*>(kv.blocks[block]) + size_t(layer) * kv.layer_bytes +
         size_t(which * kv.n_kv_heads + kvh) * kv.head_bytes;
}

__global__ void kv_store_kernel(PagedKV kv, int64_t layer, const float* k, int64_t k_stride, const float* v,
                                int64_t v_stride, const int64_t* slots) {
  const int64_t t = blockIdx.x;
  const int which = int(blockIdx.y % 2);
  const int64_t j = blockIdx.y / 2;
  const int64_t slot = slots[t];
  const int32_t block = int32_t(slot / kv.block_size);
  const int64_t off = slot % kv.block_size;
  const float* src = (which == 0 ? k + t * k_stride : v + t * v_stride) + j * kv.head_dim;
  char* dst = const_cast<char*>(head_base(kv, layer, block, which, j)) +
              size_t(off * kv.head_dim) * (kv.f16 ? 2 : 4);
  for (int64_t i = threadIdx.x; i < kv.head_dim; i += blockDim.x) {
    if (kv.f16)
      reinterpret_cast<__half*>(dst)[i] = __float2half_rn(src[i]);
    else
      reinterpret_cast<float*>(dst)[i] = src[i];
  }
}

__device__ __forceinline__ float load_kv(const char* p, int64_t i, bool f16) {
  return f16 ? __half2float(reinterpret_cast<const __half*>(p)[i]) : reinterpret_cast<const float*>(p)[i];
}

struct Split {
  int64_t n_splits, keys_per_split;
};

// scratch record of one (row, head, split): acc[head_dim], m, l
__global__ void attention_kernel(AttnArgs a, Split sp) {
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= a.T * a.n_heads) return;
  const int64_t t = item / a.n_heads, h = item % a.n_heads;
  const int64_t split = blockIdx.y;
  const AttnSeqDev S = a.seqs[a.row_seq[t]];
  const int64_t visible = int64_t(S.pos0) + (t - S.row0) + 1;
  const int64_t hd = a.kv.head_dim;
  const int64_t kvh = h / (a.n_heads / a.kv.n_kv_heads);
  const int64_t j0 = split * sp.keys_per_split, j1 = std::min(visible, j0 + sp.keys_per_split);
  const float scale = 1.f / sqrtf(float(hd));
  const int32_t* table = a.tables + S.table0;
  const size_t es = a.kv.f16 ? 2 : 4;

  float q[kMaxPerLane], acc[kMaxPerLane];
  const float* qr = a.q + t * a.q_stride + h * hd;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int64_t i = lane + 32 * e;
    q[e] = i < hd ? qr[i] : 0.f;
    acc[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = j0; j < j1; ++j) {
    const int32_t block = table[j / a.kv.block_size];
    const size_t off = size_t((j % a.kv.block_size) * hd) * es;
    const char* kp = head_base(a.kv, a.layer, block, 0, kvh) + off;
    const char* vp = head_base(a.kv, a.layer, block, 1, kvh) + off;
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int64_t i = lane + 32 * e;
      if (i < hd) dot = fmaf(q[e], load_kv(kp, i, a.kv.f16), dot);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float s = dot * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float p = expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int64_t i = lane + 32 * e;
      if (i < hd) acc[e] = fmaf(p, load_kv(vp, i, a.kv.f16), acc[e] * corr);
    }
    m = m_new;
  }
  if (sp.n_splits == 1) {
    float* o = a.out + t * a.out_stride + h * hd;
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int64_t i = lane + 32 * e;
      if (i < hd) o[i] = acc[e] * inv;
    }
    return;
  }
  float* rec = a.scratch + (item * sp.n_splits + split) * (hd + 2);
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int64_t i = lane + 32 * e;
    if (i < hd) rec[i] = acc[e];
  }
  if (lane == 0) {
    rec[hd] = m;  // -inf for an empty split
    rec[hd + 1] = l;
  }
}

__global__ void combine_kernel(AttnArgs a, Split sp) {
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= a.T * a.n_heads) return;
  const int64_t t = item / a.n_heads, h = item % a.n_heads, hd = a.kv.head_dim;
  const float* recs = a.scratch + item * sp.n_splits * (hd + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < sp.n_splits; ++s) M = fmaxf(M, recs[s * (hd + 2) + hd]);
  float L = 0.f, acc[kMaxPerLane] = {};
  for (int64_t s = 0; s < sp.n_splits; ++s) {
    const float* r = recs + s * (hd + 2);
    const float ms = r[hd];
    if (ms == -INFINITY) continue;  // a split past this row's keys
    const float w = expf(ms - M);
    L = fmaf(r[hd + 1], w, L);
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int64_t i = lane + 32 * e;
      if (i < hd) acc[e] = fmaf(r[i], w, acc[e]);
    }
  }
  float* o = a.out + t * a.out_stride + h * hd;
  const float inv = 1.f / L;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int64_t i = lane + 32 * e;
    if (i < hd) o[i] = acc[e] * inv;
  }
}

// Enough warps to fill the GPU (~2 waves of 132 SMs × 16 warps), splits of at least 128 keys.
Split choose_split(int64_t T, int64_t n_heads, int64_t max_keys) {
  const int64_t items = T * n_heads, want = 4224;
  int64_t n = std::max<int64_t>(1, (want + items - 1) / items);
  n = std::min(n, std::max<int64_t>(1, (max_keys + kMinSplitKeys - 1) / kMinSplitKeys));
  const int64_t per = (max_keys + n - 1) / n;
  return {(max_keys + per - 1) / per, per};
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
  GPTQ_ASSERT(a.kv.head_dim <= 32 * kMaxPerLane, "head_dim above 256");
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
