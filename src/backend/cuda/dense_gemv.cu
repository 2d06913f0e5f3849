// Dense fp16/bf16 weights at decode batch sizes: y[T, N] = x[T, K] · Wᵀ with W [N, K] in the file's
// 16-bit type, x and y fp32, fp32 accumulation (x is not rounded, unlike the cuBLASLt path).
//
// Memory-bound: the weights are read once. A warp owns kRows consecutive output rows; each lane
// reads 16 bytes (8 values) of every row per step, so the warp streams 512 contiguous bytes of each
// row, and kUnroll steps are loaded before they are used. x is read as float4 through L1 (every
// row of W reuses it: kRows rows per warp cut its traffic). Partial sums are reduced across the
// warp with shuffles at the end. Needs K % 8 == 0 and 16-byte aligned W, x rows (checked by the
// caller, dense_gemv_ok); other shapes take cuBLASLt. pdl: a programmatic dependent launch (the
// warp's first weights load before the kernel before it has finished; device_util.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/ops.h"

namespace gptq::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRows = 2;
constexpr int kUnroll = 4;  // 4 KB of weights in flight per warp (2: 45 % of bandwidth at N = K = 4096)

template <bool kBf16>
__device__ __forceinline__ void unpack8(const uint4& v, float (&w)[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kBf16) {
      w[2 * i] = __uint_as_float(u[i] << 16);
      w[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
      w[2 * i] = f.x;
      w[2 * i + 1] = f.y;
    }
  }
}

template <int T, bool kBf16>
__global__ void __launch_bounds__(kWarps * 32) dense_gemv_kernel(const uint16_t* __restrict__ W, int64_t K, int64_t N,
                                                                 const float* __restrict__ x, int64_t xs,
                                                                 float* __restrict__ y, int64_t ys, bool accumulate) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarps + threadIdx.x / 32) * kRows;
  if (n0 >= N) return;
  float acc[kRows][T];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
  const uint4* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) rows[r] = reinterpret_cast<const uint4*>(W + (n0 + r < N ? n0 + r : n0) * K);
  const int64_t steps = K / 8;  // 16-byte pieces per row
  // The first batch of weights (no kernel writes them) prefetched into L2 before the inputs are
  // ready: with a PDL launch this overlaps the kernel before (registers stay free for the loop).
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (lane + 32 * u < steps) asm volatile("prefetch.global.L2 [%0];" ::"l"(rows[r] + lane + 32 * u));
  wait_for_inputs();
  allow_dependents();
  for (int64_t s0 = lane; s0 < steps; s0 += 32 * kUnroll) {
    uint4 wv[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (s0 + 32 * u < steps) wv[u][r] = __ldcs(rows[r] + s0 + 32 * u);  // streamed once: no L1 keep
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t s = s0 + 32 * u;
      if (s >= steps) break;
      float xv[T][8];
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float4* xp = reinterpret_cast<const float4*>(x + t * xs + s * 8);
        const float4 a = __ldg(xp), b = __ldg(xp + 1);
        xv[t][0] = a.x, xv[t][1] = a.y, xv[t][2] = a.z, xv[t][3] = a.w;
        xv[t][4] = b.x, xv[t][5] = b.y, xv[t][6] = b.z, xv[t][7] = b.w;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float w[8];
        unpack8<kBf16>(wv[u][r], w);
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(w[i], xv[t][i], acc[r][t]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float v = acc[r][t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && n0 + r < N) y[t * ys + n0 + r] = accumulate ? y[t * ys + n0 + r] + v : v;
    }
}

template <bool kBf16>
void launch(const uint16_t* W, int64_t K, int64_t N, const float* x, int64_t xs, int64_t T, float* y, int64_t ys,
            bool accumulate, bool pdl, cudaStream_t s) {
  const dim3 grid(unsigned((N + kWarps * kRows - 1) / (kWarps * kRows)));
  switch (T) {
#define GPTQ_GEMV_CASE(n)                                                                                   \
  case n:                                                                                                   \
    launch_kernel(dense_gemv_kernel<n, kBf16>, grid, dim3(kWarps * 32), 0, s, pdl, W, K, N, x, xs, y, ys, accumulate); \
    break;
    GPTQ_GEMV_CASE(1) GPTQ_GEMV_CASE(2) GPTQ_GEMV_CASE(3) GPTQ_GEMV_CASE(4)
    GPTQ_GEMV_CASE(5) GPTQ_GEMV_CASE(6) GPTQ_GEMV_CASE(7) GPTQ_GEMV_CASE(8)
#undef GPTQ_GEMV_CASE
    default: GPTQ_ASSERT(false, "dense_gemv: T out of range");
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool dense_gemv_ok(const void* W, int64_t K, const float* x, int64_t xs, int64_t T) {
  return T >= 1 && T <= kDenseGemvMaxRows && K % 8 == 0 && xs % 4 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void dense_gemv(const void* W, ElemType wt, int64_t K, int64_t N, const float* x, int64_t xs, int64_t T, float* y,
                int64_t ys, cudaStream_t s, bool accumulate, bool pdl) {
  GPTQ_ASSERT(dense_gemv_ok(W, K, x, xs, T) && wt != ElemType::kF32);
  if (wt == ElemType::kBF16)
    launch<true>(static_cast<const uint16_t*>(W), K, N, x, xs, T, y, ys, accumulate, pdl, s);
  else
    launch<false>(static_cast<const uint16_t*>(W), K, N, x, xs, T, y, ys, accumulate, pdl, s);
}

}  // namespace gptq::cuda
