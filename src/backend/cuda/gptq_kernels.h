// GPTQ on the GPU: the device layout of one quantized linear and its kernels. Host-callable, no
// CUDA types beyond cudaStream_t, so plain C++ (cuda_backend.cpp, tests) includes it.
//
// Device layout (made once at load from the CPU-prepared form, which has already validated the
// checkpoint, applied v1's +1 to the zeros and reordered act-order inputs so groups are contiguous):
//   qweight     uint32 [n_chunks][N][bits]  chunk c = reordered inputs [32c, 32c+32); column n's 32
//               codes of the chunk as one little-endian bit stream of `bits` words (value i at
//               stream bits [i*b, (i+1)*b); 3-bit values 10 and 21 straddle words). Codes of
//               inputs >= K (the last chunk's padding) are 0.
//   scale_zero  uint32 [n_groups][N]        half2 bits: low half = scale, high half = zero (exact
//               in fp16: an integer in [0, 2^b])
//   chunk_group int32 [n_chunks]            the group of every input of chunk c
//   W[n, k] = scale[g, n] * (q[k, n] - zero[g, n]),   g = chunk_group[k / 32]
// A layer whose group boundaries do not all fall on multiples of 32 reordered inputs has no such
// layout (make_gptq_layout returns fast = false); the backend runs it as dense fp16 instead.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/cpu/qgemm.h"

namespace gptq::cuda {

struct GptqLayout {  // on the host, to be uploaded
  int bits = 4;
  int64_t K = 0, N = 0, n_chunks = 0, n_groups = 0;
  std::vector<uint32_t> qweight;      // [n_chunks][N][bits]
  std::vector<uint32_t> scale_zero;   // [n_groups][N]
  std::vector<int32_t> chunk_group;   // [n_chunks]
  std::vector<int32_t> perm;          // [K]: reordered input k is x[perm[k]]; empty = identity
  bool fast = false;                  // false: no chunk layout (see above); the vectors are empty
};
GptqLayout make_gptq_layout(const cpu::PreparedQuantMatrix& w);
// W [N, K] fp32 in the original input order (the reference dequantization, exactly), from a fast
// layout (as downloaded from the device).
std::vector<float> dequantize_layout(const GptqLayout& L);

struct GptqDeviceMatrix {  // views of the uploaded layout
  int bits = 4;
  int64_t K = 0, N = 0, n_chunks = 0, n_groups = 0;
  const uint32_t* qweight = nullptr;
  const uint32_t* scale_zero = nullptr;
  const int32_t* chunk_group = nullptr;
};

// The most rows gptq_gemv takes; above it the backend dequantizes to fp16 and calls cuBLAS.
constexpr int64_t kGemvMaxRows = 8;

// y[T, N] = x[T, K] · Wᵀ (fp32 in and out, fp32 accumulation), 1 <= T <= kGemvMaxRows; x in the
// reordered input order, rows x_stride floats apart; y rows y_stride apart, overwritten.
// Needs (asserted): x 16-byte aligned and x_stride % 4 == 0 (float4 loads), qweight 16-byte
// aligned (cudaMalloc'd or at a 16-byte offset). No workspace; deterministic (fixed reduction
// order, no atomics); capturable in a CUDA graph. Kernel design: gptq_gemm.cu.
void gptq_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               cudaStream_t stream);

// out[N][K] fp16 row-major (reordered input order) = W, for cuBLAS at larger T: each value is
// scale * (q - zero) computed exactly in fp32 and rounded once to fp16. out 8-byte aligned.
void gptq_dequant_f16(const GptqDeviceMatrix& w, void* out, cudaStream_t stream);

}  // namespace gptq::cuda
