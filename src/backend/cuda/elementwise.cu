// Elementwise, normalization and RoPE kernels of the CUDA backend (ops.h). Memory-bound and
// small next to the linears; written for coalescing, one pass each.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/ops.h"
#include "core/synthetic.h"

namespace gptq::cuda {

namespace {

__device__ __forceinline__ float load_elem(const void* p, ElemType t, int64_t i) {
  switch (t) {
    case ElemType::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__global__ void embed_kernel(const void* table, ElemType tt, int64_t H, const int32_t* tokens, float* y,
                             int64_t y_stride) {
  const int64_t t = blockIdx.y;
  const int64_t row = int64_t(tokens[t]) * H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < H; i += int64_t(gridDim.x) * blockDim.x)
    y[t * y_stride + i] = load_elem(table, tt, row + i);
}

// One block per row: fp32 sum of squares by a block tree. Each thread holds its (at most VEC)
// float4 of the row in registers from the sum to the scaling, so the row is read once with all
// of a thread's loads in flight together (a strided loop over global memory waited on each load in
// turn: ~7 us for a 4096-wide row, measured); its weights are loaded with it, before the
// reduction, not after. VEC = 0: any D and alignment, two strided passes.
template <int kThreads, int VEC>
__global__ void rms_norm_kernel(const float* x, int64_t x_stride, const float* w, float eps, int64_t D, float* y,
                                int64_t y_stride) {
  allow_dependents();  // the next kernel may launch (PDL: device_util.cuh)
  const float* xr = x + blockIdx.x * x_stride;
  float* yr = y + blockIdx.x * y_stride;
  float ss = 0.f;
  float4 v[VEC > 0 ? VEC : 1], wv[VEC > 0 ? VEC : 1];
  if constexpr (VEC > 0) {
    const int64_t n4 = D / 4;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      v[j] = i < n4 ? reinterpret_cast<const float4*>(xr)[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      wv[j] = i < n4 ? __ldg(reinterpret_cast<const float4*>(w) + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      ss = fmaf(v[j].w, v[j].w, fmaf(v[j].z, v[j].z, fmaf(v[j].y, v[j].y, fmaf(v[j].x, v[j].x, ss))));
  } else {
    for (int64_t i = threadIdx.x; i < D; i += kThreads) ss = fmaf(xr[i], xr[i], ss);
  }
  __shared__ float part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) part[0] = ss;
  }
  __syncthreads();
  const float inv = 1.f / sqrtf(part[0] / float(D) + eps);
  if constexpr (VEC > 0) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < D / 4)
        reinterpret_cast<float4*>(yr)[i] = make_float4(wv[j].x * (v[j].x * inv), wv[j].y * (v[j].y * inv),
                                                       wv[j].z * (v[j].z * inv), wv[j].w * (v[j].w * inv));
    }
  } else {
    for (int64_t i = threadIdx.x; i < D; i += kThreads) yr[i] = w[i] * (xr[i] * inv);
  }
}

__global__ void rope_angles_kernel(const float* inv, int64_t half, const int32_t* pos, float* cs, int64_t cs_stride) {
  const int64_t t = blockIdx.y;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= half) return;
  const float a = float(pos[t]) * inv[i];  // fp32 angle, as transformers computes it
  double sn, cn;
  sincos(double(a), &sn, &cn);
  cs[t * cs_stride + i] = float(cn);
  cs[t * cs_stride + half + i] = float(sn);
}

// Heads [0, nq) of q, then [nq, nq + nk) of k: one thread per (head, pair).
__global__ void rope_kernel(float* q, int64_t q_stride, int64_t nq, float* k, int64_t k_stride, int64_t nk,
                            int64_t hd, const float* cs, int64_t cs_stride) {
  const int64_t t = blockIdx.y;
  const int64_t half = hd / 2;
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;  // over (nq + nk) * half
  if (j >= (nq + nk) * half) return;
  const int64_t h = j / half, i = j % half;
  float* v = h < nq ? q + t * q_stride + h * hd : k + t * k_stride + (h - nq) * hd;
  const float c = cs[t * cs_stride + i], s = cs[t * cs_stride + half + i];
  const float x1 = v[i], x2 = v[i + half];
  v[i] = x1 * c - x2 * s;
  v[i + half] = x2 * c + x1 * s;
}

__global__ void silu_mul_kernel(float* g, int64_t g_stride, const float* u, int64_t u_stride, int64_t cols) {
  allow_dependents();  // the next kernel may launch (PDL: device_util.cuh)
  const int64_t r = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < cols; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = g[r * g_stride + i];
    g[r * g_stride + i] = x / (1.f + expf(-x)) * u[r * u_stride + i];
  }
}

__global__ void add_kernel(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t cols) {
  const int64_t r = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < cols; i += int64_t(gridDim.x) * blockDim.x)
    x[r * x_stride + i] += y[r * y_stride + i];
}

__global__ void gather_rows_kernel(const float* x, int64_t x_stride, const int64_t* rows, int64_t cols, float* y,
                                   int64_t y_stride) {
  const int64_t r = blockIdx.y;
  const float* src = x + rows[r] * x_stride;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < cols; i += int64_t(gridDim.x) * blockDim.x)
    y[r * y_stride + i] = src[i];
}

__global__ void permute_cols_kernel(const float* x, int64_t x_stride, const int32_t* perm, int64_t K, float* y,
                                    int64_t y_stride) {
  allow_dependents();  // the next kernel may launch (PDL: device_util.cuh)
  const int64_t t = blockIdx.y;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x)
    y[t * y_stride + k] = x[t * x_stride + perm[k]];
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void convert_rows_kernel(const float* x, int64_t x_stride, int64_t K, T* y) {
  const int64_t t = blockIdx.y;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x)
    y[t * K + k] = from_float<T>(x[t * x_stride + k]);
}

__global__ void to_f32_kernel(const void* src, ElemType t, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = load_elem(src, t, i);
}

__global__ void add_bias_kernel(float* y, int64_t y_stride, const float* b, int64_t N) {
  const int64_t t = blockIdx.y;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x)
    y[t * y_stride + i] += b[i];
}

__global__ void fill_uniform_kernel(void* dst, ElemType t, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = synthetic_uniform(seed, uint64_t(i), scale);
    if (t == ElemType::kF32)
      static_cast<float*>(dst)[i] = v;
    else if (t == ElemType::kF16)
      static_cast<__half*>(dst)[i] = __float2half_rn(v);
    else
      static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(v);
  }
}

constexpr int kThreads = 256;

// Grid over (columns, rows) for row-wise kernels; rows go in grid.y (at most 65535 per launch).
template <typename F>
void for_row_chunks(int64_t rows, F&& launch) {
  constexpr int64_t kMaxY = 65535;
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxY) launch(r0, std::min(kMaxY, rows - r0));
}

unsigned col_blocks(int64_t cols) { return unsigned(std::min<int64_t>(std::max<int64_t>(1, (cols + kThreads - 1) / kThreads), 1024)); }

}  // namespace

void embed_rows(const void* table, ElemType tt, int64_t H, const int32_t* tokens, int64_t T, float* y,
                int64_t y_stride, cudaStream_t s) {
  for_row_chunks(T, [&](int64_t r0, int64_t n) {
    embed_kernel<<<dim3(col_blocks(H), unsigned(n)), kThreads, 0, s>>>(table, tt, H, tokens + r0, y + r0 * y_stride, y_stride);
  });
  CUDA_CHECK_LAUNCH();
}

void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t D, float* y,
              int64_t y_stride, cudaStream_t s) {
  if (rows == 0) return;
  // rows go in grid.x (up to 2^31-1)
  const bool vec = D % 4 == 0 && x_stride % 4 == 0 && y_stride % 4 == 0 && D <= 256 * 4 * 8 &&
                   (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(w)) % 16 == 0;
  if (vec && D <= 256 * 4 * 4)
    rms_norm_kernel<256, 4><<<unsigned(rows), 256, 0, s>>>(x, x_stride, w, eps, D, y, y_stride);
  else if (vec)
    rms_norm_kernel<256, 8><<<unsigned(rows), 256, 0, s>>>(x, x_stride, w, eps, D, y, y_stride);
  else
    rms_norm_kernel<256, 0><<<unsigned(rows), 256, 0, s>>>(x, x_stride, w, eps, D, y, y_stride);
  CUDA_CHECK_LAUNCH();
}

void rope_angles(const float* inv_freq, int64_t half, const int32_t* positions, int64_t T, float* cs,
                 int64_t cs_stride, cudaStream_t s) {
  for_row_chunks(T, [&](int64_t r0, int64_t n) {
    rope_angles_kernel<<<dim3(blocks_for(half, 128), unsigned(n)), 128, 0, s>>>(inv_freq, half, positions + r0,
                                                                                cs + r0 * cs_stride, cs_stride);
  });
  CUDA_CHECK_LAUNCH();
}

void rope(float* q, int64_t q_stride, int64_t nq, float* k, int64_t k_stride, int64_t nk, int64_t T, int64_t hd,
          const float* cs, int64_t cs_stride, cudaStream_t s) {
  const int64_t n = (nq + nk) * (hd / 2);
  if (n == 0) return;
  for_row_chunks(T, [&](int64_t r0, int64_t rows) {
    rope_kernel<<<dim3(blocks_for(n, 128), unsigned(rows)), 128, 0, s>>>(
        q + r0 * q_stride, q_stride, nq, nk ? k + r0 * k_stride : nullptr, k_stride, nk, hd, cs + r0 * cs_stride, cs_stride);
  });
  CUDA_CHECK_LAUNCH();
}

void silu_mul(float* g, int64_t g_stride, const float* u, int64_t u_stride, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows == 0 || cols == 0) return;
  for_row_chunks(rows, [&](int64_t r0, int64_t n) {
    silu_mul_kernel<<<dim3(col_blocks(cols), unsigned(n)), kThreads, 0, s>>>(g + r0 * g_stride, g_stride,
                                                                            u + r0 * u_stride, u_stride, cols);
  });
  CUDA_CHECK_LAUNCH();
}

void add(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows, int64_t cols, cudaStream_t s) {
  for_row_chunks(rows, [&](int64_t r0, int64_t n) {
    add_kernel<<<dim3(col_blocks(cols), unsigned(n)), kThreads, 0, s>>>(x + r0 * x_stride, x_stride, y + r0 * y_stride,
                                                                       y_stride, cols);
  });
  CUDA_CHECK_LAUNCH();
}

void gather_rows(const float* x, int64_t x_stride, const int64_t* rows, int64_t n, int64_t cols, float* y,
                 int64_t y_stride, cudaStream_t s) {
  for_row_chunks(n, [&](int64_t r0, int64_t m) {
    gather_rows_kernel<<<dim3(col_blocks(cols), unsigned(m)), kThreads, 0, s>>>(x, x_stride, rows + r0, cols,
                                                                               y + r0 * y_stride, y_stride);
  });
  CUDA_CHECK_LAUNCH();
}

void permute_cols(const float* x, int64_t x_stride, const int32_t* perm, int64_t T, int64_t K, int64_t y_stride,
                  float* y, cudaStream_t s) {
  for_row_chunks(T, [&](int64_t r0, int64_t n) {
    permute_cols_kernel<<<dim3(col_blocks(K), unsigned(n)), kThreads, 0, s>>>(x + r0 * x_stride, x_stride, perm, K,
                                                                             y + r0 * y_stride, y_stride);
  });
  CUDA_CHECK_LAUNCH();
}

void convert_rows(const float* x, int64_t x_stride, int64_t T, int64_t K, void* y, ElemType yt, cudaStream_t s) {
  for_row_chunks(T, [&](int64_t r0, int64_t n) {
    const dim3 grid(col_blocks(K), unsigned(n));
    if (yt == ElemType::kF16)
      convert_rows_kernel<__half><<<grid, kThreads, 0, s>>>(x + r0 * x_stride, x_stride, K, static_cast<__half*>(y) + r0 * K);
    else
      convert_rows_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(x + r0 * x_stride, x_stride, K,
                                                                   static_cast<__nv_bfloat16*>(y) + r0 * K);
  });
  CUDA_CHECK_LAUNCH();
}

void to_f32(const void* src, ElemType t, int64_t n, float* out, cudaStream_t s) {
  if (n == 0) return;
  to_f32_kernel<<<unsigned(std::min<int64_t>(blocks_for(n, kThreads), 4096)), kThreads, 0, s>>>(src, t, n, out);
  CUDA_CHECK_LAUNCH();
}

void add_bias(float* y, int64_t y_stride, const float* bias, int64_t T, int64_t N, cudaStream_t s) {
  for_row_chunks(T, [&](int64_t r0, int64_t n) {
    add_bias_kernel<<<dim3(col_blocks(N), unsigned(n)), kThreads, 0, s>>>(y + r0 * y_stride, y_stride, bias, N);
  });
  CUDA_CHECK_LAUNCH();
}

void fill_uniform(void* dst, ElemType t, int64_t n, float scale, uint64_t seed, cudaStream_t s) {
  if (n == 0) return;
  fill_uniform_kernel<<<unsigned(std::min<int64_t>(blocks_for(n, kThreads), 8192)), kThreads, 0, s>>>(dst, t, n, scale,
                                                                                                      seed);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptq::cuda
