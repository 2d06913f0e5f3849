// GPTQ kernels over the chunked device layout of gptq_kernels.h: a decode GEMV (T <= 8 rows) and
// a dequantization to fp16 for cuBLAS at larger T.
//
// gptq_gemv tiling. One block = 32 output columns (one column tile) and all of K; its warps split
// the K chunks into contiguous ranges (warp w: chunks [w*cpw, (w+1)*cpw)). Lane l owns column
// tile*32 + l and, per chunk, loads that column's `bits` consecutive words (4-bit: one 16-byte
// load; 8-bit: two; 3-bit: three 4-byte loads; 2-bit: one 8-byte load), so a warp reads
// 32*4*bits contiguous bytes per chunk (512 B at 4 bits). Loads go in batches of U chunks
// (16 words at T = 1: 4 chunks at 4 bits), double-buffered: batch b+1 is issued before batch b is
// decoded, so a warp has 1-2 batches (2-4 KB at 4 bits) in flight at all times, and an SM with
// 16-24 warps holds ~32-96 KB in flight: past what Little's law asks of HBM3e (~16 B/clk/SM times
// ~1 us of loaded latency). chunk_group and scale_zero (one 4-byte half2 per column and chunk: an
// L1 hit after the first chunk of a group) are loaded with the batch.
// x is read with warp-uniform float4 loads (one broadcast transaction, L1-resident): every lane
// needs all 32 inputs of the chunk, and staging x in shared memory would not fit K*T floats at
// K = 11008, T = 8 without a second pass.
// Decoding: gptq_decode.h (one LOP3 + one FFMA per code, exact q - zero in fp32), then T FFMAs per
// code against x; per chunk y_t += scale * acc_t. At the end the warps' partial sums go through
// shared memory and are added in warp order (deterministic, no atomics).
// Instruction budget at T = 1, 4 bits: ~3.2 issue slots per code, ~26 clk per warp-chunk per SM,
// against ~31 clk for its 512 bytes at 4.25 TB/s over 132 SMs: the kernel is near the memory
// roofline at T = 1 and becomes issue-bound (FFMA) from T ~ 2-3 on; 2- and 3-bit are issue-bound.
//
// Limits: 1 <= T <= 8; K % 4 == 0 (the format guarantees it); x 16-byte aligned and x_stride a
// multiple of 4 floats (float4 loads); N, n_chunks and n_groups*N below 2^31.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/gptq_decode.h"
#include "backend/cuda/gptq_kernels.h"
#include "gptq/error.h"

namespace gptq::cuda {

namespace {

constexpr int kMaxWarps = 16;

// Chunks per load batch (two batches live: the one decoded, the one in flight): 16 weight
// registers per batch (4-bit: 4 chunks = 2 KB per warp in flight while it computes), 8 for 2-bit
// at T > 4 (spilled on sm_80 otherwise).
template <int BITS, int T>
constexpr int chunks_in_flight() {
  constexpr int words = T == 1 ? 16 : T <= 4 ? 12 : BITS == 2 ? 4 : 8;
  return words / BITS > 1 ? words / BITS : 1;
}

template <int BITS>
__device__ __forceinline__ void load_chunk(const uint32_t* __restrict__ p, uint32_t (&w)[BITS]);

// The words and scale/zero of U consecutive chunks [c0, c0 + U) of one column; chunks at or past
// c_end repeat the last one (a cached load, never used).
template <int BITS, int U>
struct Batch {
  uint32_t w[U][BITS];
  uint32_t sz[U];
  __device__ __forceinline__ void load(const uint32_t* __restrict__ qweight, const uint32_t* __restrict__ scale_zero,
                                       const int32_t* __restrict__ chunk_group, int c0, int c_end, int N, int n) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = min(c0 + u, c_end - 1);
      load_chunk<BITS>(qweight + (int64_t(c) * N + n) * BITS, w[u]);
      sz[u] = __ldg(scale_zero + int64_t(__ldg(chunk_group + c)) * N + n);
    }
  }
};

template <int BITS>
__device__ __forceinline__ void load_chunk(const uint32_t* __restrict__ p, uint32_t (&w)[BITS]) {
  if constexpr (BITS == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (BITS == 8) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(p)), b = __ldg(reinterpret_cast<const uint4*>(p) + 1);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  } else if constexpr (BITS == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {  // 3 bits: 12-byte column stride, 4-byte loads (the warp's three loads share 384 bytes)
    w[0] = __ldg(p), w[1] = __ldg(p + 1), w[2] = __ldg(p + 2);
  }
}

__device__ __forceinline__ float half_bits_to_float(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// y[t] += scale * sum_i (q_i - zero) * x[t][i] over one chunk. xc: x + 32c (row t at t*x_stride);
// GUARD: the chunk is the last, partial one and inputs at >= k_left read as 0.
// The zero constants of the lane's current zero. At 2 and 3 bits (8 and 16 of them) they are
// recomputed only when the zero changes (at a group boundary; for symmetric checkpoints never
// after the first chunk); at 4 and 8 bits (4 and 2 FADDs) every chunk: the branch and the live
// registers cost as much, and ptxas then spilled 4-bit T = 2.
template <int BITS>
struct ZeroCache {
  static constexpr bool kCached = BITS <= 3;
  GptqZeroConsts zc;
  uint32_t zero_bits = 0xffffffffu;  // no fp16 zero has these bits (the high half is never set)
  __device__ __forceinline__ const GptqZeroConsts& update(uint32_t sz) {
    const uint32_t z = sz >> 16;
    if (!kCached || z != zero_bits) {
      zero_bits = z;
      zc = gptq_zero_consts(half_bits_to_float(z));
    }
    return zc;
  }
};

template <int BITS, int T, bool GUARD>
__device__ __forceinline__ void chunk_fma(const uint32_t (&w)[BITS], uint32_t sz, ZeroCache<BITS>& zcache,
                                          const float* __restrict__ xc, int64_t x_stride, int k_left, float (&y)[T]) {
  const GptqZeroConsts& zc = zcache.update(sz);
  float acc[T];
#pragma unroll
  for (int i4 = 0; i4 < 8; ++i4) {
    float d[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) d[j] = gptq_code_minus_zero<BITS>(w, zc, 4 * i4 + j);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float4 xv = make_float4(0.f, 0.f, 0.f, 0.f);
      if (!GUARD || 4 * i4 < k_left) xv = __ldg(reinterpret_cast<const float4*>(xc + t * x_stride) + i4);
      float a = i4 == 0 ? d[0] * xv.x : __fmaf_rn(d[0], xv.x, acc[t]);
      a = __fmaf_rn(d[1], xv.y, a);
      a = __fmaf_rn(d[2], xv.z, a);
      acc[t] = __fmaf_rn(d[3], xv.w, a);
    }
  }
  const float scale = half_bits_to_float(sz & 0xffffu);
#pragma unroll
  for (int t = 0; t < T; ++t) y[t] = __fmaf_rn(scale, acc[t], y[t]);
}

// Registers per thread (nvcc 13.0, -Xptxas -v; 0 spills, 0 stack, for every BITS x T, sm_90a and
// sm_80 alike within a few registers):
//   T:      1    2    3    4    5    6    7    8
//   4-bit: 68   70   74   82   78   78   80   92
//   8-bit: 66   43   58   64   76   78   78   82
//   3-bit: 84   84   88  104   84   94   94  114
//   2-bit: 86   78   88   90   74   76   80   96
// Occupancy (65536 registers/SM): 4-bit T = 1 at 72 allocated -> 28 warps/SM: 3 blocks of 8
// warps, or 1 of 16 (used only when there are fewer column tiles than 2 per SM, so 1 per SM is
// all there is). Launch bounds of 512 threads without a min-blocks argument: with one, ptxas
// takes all 128 (min 1) or spills (min 2), measured at compile time.
template <int BITS, int T>
__global__ void __launch_bounds__(kMaxWarps * 32)
    gptq_gemv_kernel(const uint32_t* __restrict__ qweight,    // [n_chunks][N][BITS]
                     const uint32_t* __restrict__ scale_zero, // [n_groups][N] half2 (scale, zero)
                     const int32_t* __restrict__ chunk_group, // [n_chunks]
                     const float* __restrict__ x,             // [T][x_stride], reordered inputs
                     int64_t x_stride, float* __restrict__ y, // [T][y_stride]
                     int64_t y_stride, int N, int K, int n_chunks, int chunks_per_warp) {
  constexpr int U = chunks_in_flight<BITS, T>();
  __shared__ float red[kMaxWarps * T * 32];  // [warp][t][lane]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int n = blockIdx.x * 32 + lane;
  const int nl = n < N ? n : N - 1;  // columns past N load a real column; their sums are dropped
  const int n_full = K / 32;
  const int c_begin = warp * chunks_per_warp;
  const int c_end = min(c_begin + chunks_per_warp, n_chunks);
  const int c_full_end = min(c_end, n_full);

  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.f;

  // Double-buffered: the loads of batch b+1 (U chunks) are issued before batch b is decoded, so a
  // warp always has memory in flight while it computes (warps of a block start in step and would
  // otherwise all wait, then all compute).
  Batch<BITS, U> cur, next;
  ZeroCache<BITS> zcache;
  if (c_begin < c_full_end) cur.load(qweight, scale_zero, chunk_group, c_begin, c_full_end, N, nl);
  for (int c0 = c_begin; c0 < c_full_end; c0 += U) {
    if (c0 + U < c_full_end) next.load(qweight, scale_zero, chunk_group, c0 + U, c_full_end, N, nl);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (c0 + u < c_full_end)
        chunk_fma<BITS, T, false>(cur.w[u], cur.sz[u], zcache, x + int64_t(c0 + u) * 32, x_stride, 32, acc);
    cur = next;
  }
  if (n_full < n_chunks && c_begin <= n_full && n_full < c_end) {  // the partial last chunk is ours
    uint32_t w[BITS];
    load_chunk<BITS>(qweight + (int64_t(n_full) * N + nl) * BITS, w);
    const uint32_t sz = __ldg(scale_zero + int64_t(__ldg(chunk_group + n_full)) * N + nl);
    chunk_fma<BITS, T, true>(w, sz, zcache, x + int64_t(n_full) * 32, x_stride, K - n_full * 32, acc);
  }

#pragma unroll
  for (int t = 0; t < T; ++t) red[(warp * T + t) * 32 + lane] = acc[t];
  __syncthreads();
  for (int i = threadIdx.x; i < T * 32; i += blockDim.x) {
    const int t = i >> 5, l = i & 31;
    float s = red[t * 32 + l];
    for (int v = 1; v < n_warps; ++v) s += red[(v * T + t) * 32 + l];
    const int col = blockIdx.x * 32 + l;
    if (col < N) y[t * y_stride + col] = s;
  }
}

// out[n][k] = scale * (q - zero) rounded to fp16, k < K. Block: 8 warps, each one chunk of the
// same 32-column tile at a time. Lane l decodes column tile*32 + l (the warp's loads: contiguous
// 32*4*bits bytes), puts its 32 halves in the warp's shared tile, and the warp then writes the 32
// rows of 64 bytes with 8-byte stores, 4 rows per instruction (full 32-byte sectors; a lane per
// column would scatter each store over 32 rows). Rows are only 8-byte aligned (K % 4 == 0).
template <int BITS>
__global__ void __launch_bounds__(256)
    gptq_dequant_kernel(const uint32_t* __restrict__ qweight, const uint32_t* __restrict__ scale_zero,
                        const int32_t* __restrict__ chunk_group, __half* __restrict__ out, int N, int K,
                        int n_chunks) {
  constexpr int kPitch = 17;  // words per column in the tile: 16 + 1 against bank conflicts
  __shared__ uint32_t tile[8][32 * kPitch];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = blockIdx.x * 32 + lane;
  const int nl = n < N ? n : N - 1;
  uint32_t* st = tile[warp];
  for (int c = blockIdx.y * 8 + warp; c < n_chunks; c += gridDim.y * 8) {
    uint32_t w[BITS];
    load_chunk<BITS>(qweight + (int64_t(c) * N + nl) * BITS, w);
    const uint32_t sz = __ldg(scale_zero + int64_t(__ldg(chunk_group + c)) * N + nl);
    const GptqZeroConsts zc = gptq_zero_consts(half_bits_to_float(sz >> 16));
    const float scale = half_bits_to_float(sz & 0xffffu);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const __half2 v = __floats2half2_rn(scale * gptq_code_minus_zero<BITS>(w, zc, 2 * i),
                                          scale * gptq_code_minus_zero<BITS>(w, zc, 2 * i + 1));
      st[lane * kPitch + i] = *reinterpret_cast<const uint32_t*>(&v);
    }
    __syncwarp();
    const int k_left = K - c * 32, part = lane & 7;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int row = 4 * r + (lane >> 3), col = blockIdx.x * 32 + row;
      if (col < N && 4 * part < k_left) {
        uint2 v;
        v.x = st[row * kPitch + 2 * part];
        v.y = st[row * kPitch + 2 * part + 1];
        *reinterpret_cast<uint2*>(out + int64_t(col) * K + int64_t(c) * 32 + 4 * part) = v;
      }
    }
    __syncwarp();
  }
}

int sm_count() {  // of the current device; cached per device (callers may be on any thread)
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> cached[64] = {};
  if (dev < 64)
    if (const int n = cached[dev].load(std::memory_order_relaxed)) return n;
  int n = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) cached[dev].store(n, std::memory_order_relaxed);
  return n;
}

template <int BITS, int T>
void launch_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                 cudaStream_t stream) {
  const int n_tiles = int((w.N + 31) / 32), n_chunks = int(w.n_chunks);
  // Enough warps in flight per SM: 16 per block when the column tiles alone leave SMs thin
  // (N = 4096: 128 tiles for 132 SMs), 8 otherwise; never more warps than chunks.
  int warps = n_tiles < 2 * sm_count() ? 16 : 8;
  warps = std::max(1, std::min(warps, n_chunks));
  const int cpw = std::max(1, (n_chunks + warps - 1) / warps);
  warps = std::max(1, (n_chunks + cpw - 1) / cpw);  // drop warps that would get no chunk
  gptq_gemv_kernel<BITS, T><<<n_tiles, warps * 32, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, x, x_stride,
                                                                y, y_stride, int(w.N), int(w.K), n_chunks, cpw);
}

template <int BITS>
void launch_gemv_bits(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
                      int64_t y_stride, cudaStream_t stream) {
  switch (T) {
    case 1: return launch_gemv<BITS, 1>(w, x, x_stride, y, y_stride, stream);
    case 2: return launch_gemv<BITS, 2>(w, x, x_stride, y, y_stride, stream);
    case 3: return launch_gemv<BITS, 3>(w, x, x_stride, y, y_stride, stream);
    case 4: return launch_gemv<BITS, 4>(w, x, x_stride, y, y_stride, stream);
    case 5: return launch_gemv<BITS, 5>(w, x, x_stride, y, y_stride, stream);
    case 6: return launch_gemv<BITS, 6>(w, x, x_stride, y, y_stride, stream);
    case 7: return launch_gemv<BITS, 7>(w, x, x_stride, y, y_stride, stream);
    case 8: return launch_gemv<BITS, 8>(w, x, x_stride, y, y_stride, stream);
  }
}

void check_matrix(const GptqDeviceMatrix& w) {
  GPTQ_ASSERT(w.bits == 2 || w.bits == 3 || w.bits == 4 || w.bits == 8, "bits ", w.bits);
  GPTQ_ASSERT(w.K >= 0 && w.N >= 0 && w.K % 4 == 0 && w.n_chunks == (w.K + 31) / 32, "K ", w.K);
  GPTQ_ASSERT(w.N < (int64_t(1) << 31) && w.n_chunks * 32 < (int64_t(1) << 31) && w.n_groups * w.N < (int64_t(1) << 31));
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(w.qweight) % 16 == 0, "qweight must be 16-byte aligned");
}

}  // namespace

void gptq_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               cudaStream_t stream) {
  check_matrix(w);
  GPTQ_ASSERT(T >= 1 && T <= kGemvMaxRows, "T ", T);
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(x) % 16 == 0 && x_stride % 4 == 0 && (T == 1 || x_stride >= w.K),
              "x must be 16-byte aligned with rows a multiple of 4 floats apart");
  GPTQ_ASSERT(T == 1 || y_stride >= w.N);
  if (w.N == 0) return;
  switch (w.bits) {
    case 2: launch_gemv_bits<2>(w, x, x_stride, T, y, y_stride, stream); break;
    case 3: launch_gemv_bits<3>(w, x, x_stride, T, y, y_stride, stream); break;
    case 4: launch_gemv_bits<4>(w, x, x_stride, T, y, y_stride, stream); break;
    case 8: launch_gemv_bits<8>(w, x, x_stride, T, y, y_stride, stream); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

void gptq_dequant_f16(const GptqDeviceMatrix& w, void* out, cudaStream_t stream) {
  check_matrix(w);
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(out) % 8 == 0, "out must be 8-byte aligned");
  if (w.N == 0 || w.n_chunks == 0) return;
  const dim3 grid(unsigned((w.N + 31) / 32), unsigned(std::min<int64_t>((w.n_chunks + 7) / 8, 65535)));
  auto* o = static_cast<__half*>(out);
  const int N = int(w.N), K = int(w.K), nc = int(w.n_chunks);
  switch (w.bits) {
    case 2: gptq_dequant_kernel<2><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
    case 3: gptq_dequant_kernel<3><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
    case 4: gptq_dequant_kernel<4><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
    case 8: gptq_dequant_kernel<8><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace gptq::cuda
