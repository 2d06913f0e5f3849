// GPTQ on the GPU: the device layout of one quantized linear and its kernels. Host-callable, no
// CUDA types beyond cudaStream_t, so plain C++ (cuda_backend.cpp, tests) includes it.
//
// Device layout (made once at load from the CPU-prepared form, which has already validated the
// checkpoint, applied v1's +1 to the zeros and reordered act-order inputs so groups are contiguous):
//   qweight     uint32, by bit width:
//     4 bits, the mma layout: [n_kb][n_ct][32 lanes][4]: k-block kb = reordered inputs
//               [64kb, 64kb+64), column tile ct = columns [16ct, 16ct+16); lane l's 4 words are
//               the mma.sync m16n8k16 A fragments of the block's 4 16x16 tiles, one word per tile
//               (gptq_mma4_pos below says which code sits where). A warp reads 512 contiguous bytes
//               per k-block, and decodes each word into its fragment with no shuffles.
//     2, 3, 8 bits, the chunk layout: [n_chunks][N][bits]: chunk c = reordered inputs [32c, 32c+32);
//               column n's 32 codes of the chunk as one little-endian bit stream of `bits` words
//               (value i at stream bits [i*b, (i+1)*b); 3-bit values 10 and 21 straddle words).
//   Codes of inputs >= K and of columns >= N (padding) are 0.
//   scale_zero  uint32 [n_groups][S]        half2 bits: low half = scale, high half = zero (exact
//               in fp16: an integer in [0, 2^b]); row stride S = gptq_sz_stride(bits, N): N, or at
//               4 bits N rounded up to 16 (a column tile's 16 words, 16-byte aligned; padding 0)
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

// 4-bit mma layout: where the code of column n, reordered input k sits (n_ct = column tiles).
// Lane (g, c) = (l / 4, l % 4) of tile kt holds the A fragment of mma.sync m16n8k16 (rows =
// columns 16ct + g and + 8, k = 2c, 2c+1, 2c+8, 2c+9 of the tile) as one word whose nibbles the
// kernel's lop3 decode turns into half2 pairs (nibble i, i + 4), i = 0..3:
//   nibble 0, 4: column g,     k 2c, 2c+1   -> a0        nibble 1, 5: column g,     k 2c+8, 2c+9 -> a2
//   nibble 2, 6: column g + 8, k 2c, 2c+1   -> a1        nibble 3, 7: column g + 8, k 2c+8, 2c+9 -> a3
struct GptqMma4Pos {
  int64_t word;
  int nibble;
};
inline GptqMma4Pos gptq_mma4_pos(int64_t n, int64_t k, int64_t n_ct) {
  const int64_t kb = k / 64, kt = (k % 64) / 16, kk = k % 16, ct = n / 16, r = n % 16;
  const int64_t lane = (r % 8) * 4 + (kk % 8) / 2;
  return {((kb * n_ct + ct) * 32 + lane) * 4 + kt, int(r / 8) * 2 + int(kk / 8) + 4 * int(kk % 2)};
}
// Row stride of scale_zero (words).
inline int64_t gptq_sz_stride(int bits, int64_t N) { return bits == 4 ? (N + 15) / 16 * 16 : N; }
// Words of qweight for a layout of these dimensions.
inline int64_t gptq_qweight_words(int bits, int64_t n_chunks, int64_t N) {
  return bits == 4 ? (n_chunks + 1) / 2 * ((N + 15) / 16) * 128 : n_chunks * N * bits;
}

struct GptqLayout {  // on the host, to be uploaded
  int bits = 4;
  int64_t K = 0, N = 0, n_chunks = 0, n_groups = 0;
  std::vector<uint32_t> qweight;      // gptq_qweight_words(bits, n_chunks, N), layout by bits (above)
  std::vector<uint32_t> scale_zero;   // [n_groups][gptq_sz_stride(bits, N)]
  std::vector<int32_t> chunk_group;   // [n_chunks]
  int32_t chunks_per_group = 0;       // > 0: chunk_group[c] == c / chunks_per_group for every c
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
  int32_t chunks_per_group = 0;  // as GptqLayout's (0: read chunk_group)
};

// The most rows gptq_gemv takes; above it the backend dequantizes to fp16 and calls cuBLAS.
constexpr int64_t kGemvMaxRows = 8;

// y[T, N] = x[T, K] · Wᵀ (fp32 out, fp32 accumulation), 1 <= T <= kGemvMaxRows; x in the
// reordered input order, rows x_stride floats apart; y rows y_stride apart, overwritten (added to
// when accumulate: y += x · Wᵀ, one fp32 add per output).
// 4 bits (tensor cores): x is rounded to fp16 (as every GPTQ engine's activations are), the
// products (q - zero) * x are exact and summed in fp32, then scaled per group in fp32.
// 2, 3, 8 bits: all in fp32 (x not rounded).
// Needs (asserted): x 16-byte aligned and x_stride % 4 == 0 (float4 loads), qweight 16-byte
// aligned (cudaMalloc'd or at a 16-byte offset). No workspace; deterministic (fixed reduction
// order, no atomics); capturable in a CUDA graph. Kernel design: gptq_gemm.cu.
// tune: the 4-bit kernel's launch (the workbench sweeps it); defaults = the dispatch's choice.
struct Gemv4Tuning {
  int col_tiles = 0;  // 16-column tiles per block sharing x: 1, 2 or 4 (0: by shape)
  int warps = 0;      // warps per block splitting K (0: by shape and shared memory)
  int rotate = -1;    // start each block's warps at a different batch of K (-1: yes, 0: no)
  int span = 0;       // at most this many chunks (32 inputs) of a group scaled at once: 1, 2, 4 (0: all it can)
  int pdl = 0;        // 1: a programmatic dependent launch (compute capability 9.0+ only: the caller checks):
                      // the first weights load while the kernel before finishes (the rest stays ordered)
  int kernel = 0;     // 1: gptq4_mma_gemv (the cp.async ring), 2: gptq4_reg_gemv (weights into registers;
                      // uniform groups and x within shared memory, else 1); 0: the dispatch's (2 at T = 1)
};
void gptq_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               cudaStream_t stream, const Gemv4Tuning& tune = {}, bool accumulate = false);

// The batched 4-bit kernel (tensor cores; for 8 < T, where the GEMV's one mma per weight would
// leave the tensor cores idle and dequantize + cuBLAS would write and read W in fp16): y[T, N] =
// x[T, K] · Wᵀ with W in fp16 exactly as gptq_dequant_f16 rounds it and x rounded to fp16, fp32
// sums — the numbers of the dequantize + cuBLAS path up to the order of the additions. At most
// kGemmMaxRows rows per launch (larger T: row chunks, each reading W again). x, y as gptq_gemv's;
// accumulate: y += x · Wᵀ. Needs a scratch buffer (x in fp16, split-K partial sums) and
// `counters` ints, zeroed once before first use and left zeroed by every call, of the sizes
// gptq_gemm_scratch gives for (w, T, tune). Deterministic; capturable in a CUDA graph. Kernel
// design: gptq_gemm.cu.
constexpr int64_t kGemmMaxRows = 64;
struct GemmTuning {
  int col_tiles = 0;  // 16-column tiles per warp: 1, 2, 4 (at most 16 / n-tiles; 0: 8 / n-tiles)
  int warps = 0;      // warps per block, 1..8 (0: 8)
  int splits = 0;     // K split over this many blocks per column range (0: to fill the SMs)
};
struct GemmScratch {
  size_t bytes = 0;
  int64_t counters = 0;
};
GemmScratch gptq_gemm_scratch(const GptqDeviceMatrix& w, int64_t T, const GemmTuning& tune = {});
void gptq_gemm(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               void* scratch, size_t scratch_bytes, int* counters, int64_t n_counters, cudaStream_t stream,
               const GemmTuning& tune = {}, bool accumulate = false);

// out[N][K] fp16 row-major (reordered input order) = W, for cuBLAS at larger T: each value is
// scale * (q - zero) computed exactly in fp32 and rounded once to fp16. out 8-byte aligned.
void gptq_dequant_f16(const GptqDeviceMatrix& w, void* out, cudaStream_t stream);

}  // namespace gptq::cuda
