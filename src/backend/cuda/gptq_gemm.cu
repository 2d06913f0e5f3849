// GPTQ kernels over the device layouts of gptq_kernels.h: decode GEMVs (T <= 8 rows) and a
// dequantization to fp16 for cuBLAS at larger T. 4 bits (the mma layout): gptq4_mma_gemv and
// gptq4_mma_dequant below; 2, 3 and 8 bits (the chunk layout): gptq_gemv and gptq_dequant here.
//
// gptq_gemv tiling (chunk layout). One block = 32 output columns (one column tile) and all of K;
// its warps split the K chunks into contiguous ranges (warp w: chunks [w*cpw, (w+1)*cpw)). Lane l
// owns column tile*32 + l and, per chunk, loads that column's `bits` consecutive words (8-bit: two
// 16-byte loads; 3-bit: three 4-byte loads; 2-bit: one 8-byte load), so a warp reads 32*4*bits
// contiguous bytes per chunk. Loads go in batches of U chunks, double-buffered: batch b+1 is issued
// before batch b is decoded, so a warp has 1-2 batches in flight at all times. chunk_group and
// scale_zero (one 4-byte half2 per column and chunk: an L1 hit after the first chunk of a group)
// are loaded with the batch.
// x is read with warp-uniform float4 loads (one broadcast transaction, L1-resident): every lane
// needs all 32 inputs of the chunk, and staging x in shared memory would not fit K*T floats at
// K = 11008, T = 8 without a second pass.
// Decoding: gptq_decode.h (one LOP3 + one FFMA per code, exact q - zero in fp32), then T FFMAs per
// code against x; per chunk y_t += scale * acc_t. At the end the warps' partial sums go through
// shared memory and are added in warp order (deterministic, no atomics).
// Instruction budget: ~3.2 issue slots per code at T = 1, then ~1 FFMA per code per row: issue-bound
// from T ~ 2-3 on at every width (when it ran 4 bits too it reached 32 % of the copy bandwidth at
// T = 1 and 346.7 us per Llama-2-7B layer at T = 8; the tensor-core kernel replaced it there).
//
// Limits: 1 <= T <= 8; K % 4 == 0 (the format guarantees it); x 16-byte aligned and x_stride a
// multiple of 4 floats (float4 loads); N, n_chunks and n_groups*N below 2^31.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "backend/cuda/device_util.cuh"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/gptq_decode.h"
#include "backend/cuda/gptq_kernels.h"
#include "gptq/error.h"

namespace gptq::cuda {

namespace {

constexpr int kMaxWarps = 16;

// Chunks per load batch (two batches live: the one decoded, the one in flight): ~16 weight
// registers per batch, 8 for 2-bit at T > 4 (spilled on sm_80 otherwise).
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
  static_assert(BITS == 2 || BITS == 3 || BITS == 8, "4 bits have the mma layout (gptq4_mma_gemv)");
  if constexpr (BITS == 8) {
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
                     int64_t y_stride, int N, int K, int n_chunks, int chunks_per_warp, bool accumulate) {
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
    if (col < N) y[t * y_stride + col] = accumulate ? y[t * y_stride + col] + s : s;
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

// ---- 4 bits: tensor cores over the mma layout ----------------------------------------------
//
// gptq4_mma_gemv tiling. One block = CT consecutive column tiles (16 output columns each) and all
// of K; its warps split the k-blocks (64 inputs) into contiguous ranges, and every warp computes
// all CT tiles of its range. Per k-block and tile a lane holds one uint4: its A fragment word of
// the tile's 4 16x16 sub-tiles (the warp: 512 contiguous bytes per tile), decodes each word into
// the fragment (4 LOP3 + 1 SHF + 4 HADD2/HFMA2: exact q - zero in fp16, see decode_a) and runs one
// mma.sync m16n8k16 per sub-tile with B = x^T (k x 8 rows, rows >= T zero; lane (g, c) reads
// x[g][2c, 2c+1] and x[g][2c+8, 2c+9] as float2 and rounds them to half2: once per k-block for
// all CT tiles), fp32 accumulation. Per chunk (32 inputs: one group, as the layout guarantees) the
// fp32 accumulator is scaled by the column's scale and added to y, so every product and the
// per-group sum are exact up to fp32 rounding; scales never round through fp16 arithmetic.
// Memory: decode reads every weight once, so what matters is bytes in flight and that nothing
// else waits on global memory in the loop. Each warp streams its k-blocks through a kStages-deep
// ring in shared memory with cp.async (16 bytes per lane, L2 only): a stage is KB k-blocks of
// codes for the CT tiles (2 KB at CT = 1, KB = 4; 4 KB at CT = 4, KB = 2), the scale/zero words of
// their chunks for the CT*16 columns, and T rows of x over the stage's inputs (fp32, zero-filled
// past K); kStages - 1 stages are in flight while one is computed, without registers.
// x is the same vector for every block, so its traffic from L2 is (blocks x T x K x 4 bytes):
// at CT = 1 and T = 8 that is 4x the weight bytes, and every block asking for the same lines at
// the same time queues on the few L2 slices that hold them. CT > 1 divides that traffic by CT;
// `rotate` starts block b's warps at batch b mod (their batch count), so the blocks' x requests
// spread over all of x. Reading x from global memory inside the loop put an L2 round trip on
// every k-block step (25 % of the bandwidth, measured), and staging all of x per block in a
// prologue serialized T*K/threads dependent loads before the first mma (slower still at T = 8).
// The scale/zero address is computed from the chunk (uniform groups) or read from a chunk -> group
// table in shared memory: no dependent global load.
// Instruction budget per warp, k-block and tile: ~80 (decode 36, x 16 / CT, scale/zero 16, mma 4,
// copies), ~20 issue clk per SM against ~32 clk for its 512 bytes at 4.25 TB/s over 132 SMs:
// memory-bound at every T <= 8 (one mma does all 8 rows at the cost of one).
// Limits: x 16-byte aligned rows (cp.async), K % 4 == 0; T <= 8; the chunk table (4 bytes per 32
// inputs, irregular groups only) fits in shared memory.
constexpr int kStages = 4;
template <int CT>
constexpr int mma_kb() {  // k-blocks per stage
  return CT == 1 ? 4 : 2;
}
// uint4 per warp and stage: codes [KB][CT][32 lanes], scale/zero words [2 KB chunks][CT * 16
// columns], then T rows of x, x_pitch floats apart (+8: rows on other banks).
constexpr int mma_codes_u4(int CT) { return (CT == 1 ? 4 : 2) * CT * 32; }
constexpr int mma_sz_u4(int CT) { return (CT == 1 ? 4 : 2) * CT * 8; }
constexpr int mma_x_pitch(int CT) { return (CT == 1 ? 4 : 2) * 64 + 8; }
constexpr int mma_stage_u4(int CT, int T) { return mma_codes_u4(CT) + mma_sz_u4(CT) + T * mma_x_pitch(CT) / 4; }

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {  // (a & b) | c
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Per column and chunk: 1024 + zero and -(64 + zero) in both halves (exact: zero <= 16).
struct Mma4Zero {
  __half2 z1024, zm64;
};
__device__ __forceinline__ Mma4Zero mma4_zero(uint32_t sz) {
  const __half2 z = u32_as_h2(__byte_perm(sz, 0u, 0x3232));  // the high half (zero) twice
  return {__hadd2(z, u32_as_h2(0x64006400u)), __hsub2(u32_as_h2(0xD400D400u), z)};  // 1024 + z, -64 - z
}

// One word -> the A fragment (q - zero, exact). OR-ing a nibble into the mantissa of fp16 1024
// gives 1024 + q (nibbles 0 and 4 of the word: lo and hi half) or 1024 + 16 q (nibbles 1, 5), so
// one HSUB2 or one HFMA2 by 1/16 leaves q - zero; the word shifted by 8 gives nibbles 2, 6 and 3, 7.
__device__ __forceinline__ void decode_a(uint32_t w, const Mma4Zero& z0, const Mma4Zero& z1, uint32_t (&a)[4]) {
  const __half2 sixteenth = u32_as_h2(0x2C002C00u);  // 1/16
  const uint32_t w8 = w >> 8;
  a[0] = h2_as_u32(__hsub2(u32_as_h2(lop3_and_or(w, 0x000F000Fu, 0x64006400u)), z0.z1024));
  a[2] = h2_as_u32(__hfma2(u32_as_h2(lop3_and_or(w, 0x00F000F0u, 0x64006400u)), sixteenth, z0.zm64));
  a[1] = h2_as_u32(__hsub2(u32_as_h2(lop3_and_or(w8, 0x000F000Fu, 0x64006400u)), z1.z1024));
  a[3] = h2_as_u32(__hfma2(u32_as_h2(lop3_and_or(w8, 0x00F000F0u, 0x64006400u)), sixteenth, z1.zm64));
}

// Dynamic shared memory of a block of `warps` warps at CT tiles and T rows: the stage rings
// (reused for the final reduction), then the chunk -> group table when groups are not uniform.
size_t mma4_smem(int CT, int warps, int64_t T, int64_t n_chunks, bool table) {
  return size_t(warps) * kStages * mma_stage_u4(CT, int(T)) * 16 + (table ? size_t(n_chunks) * 4 : 0);
}

// Both 4-bit GEMVs, per span: y += scale * acc for one tile, acc = (row 2c, column g), (2c+1, g),
// (2c, g+8), (2c+1, g+8), scaled by the scale of column g (sz_g: its scale/zero word) or g + 8.
__device__ __forceinline__ void add_scaled(float (&yv)[4], const float (&acc)[4], uint32_t sz_g, uint32_t sz_g8) {
  const float s0 = half_bits_to_float(sz_g & 0xffffu), s1 = half_bits_to_float(sz_g8 & 0xffffu);
  yv[0] = __fmaf_rn(s0, acc[0], yv[0]);
  yv[1] = __fmaf_rn(s0, acc[1], yv[1]);
  yv[2] = __fmaf_rn(s1, acc[2], yv[2]);
  yv[3] = __fmaf_rn(s1, acc[3], yv[3]);
}

// The end of both 4-bit GEMVs: each warp's partial sums yv (lane (g, c) of tile t: rows 2c, 2c + 1
// of columns g, g + 8) through shared memory `red` ([warp][8 rows][CT * 16 columns], reusing the
// kernel's space: the caller has synchronized the block), added in warp order (deterministic) and
// written to y (or added to it).
template <int CT>
__device__ __forceinline__ void reduce_warps_store(float* red, const float (&yv)[CT][4], int T, int ct0, int N,
                                                   float* __restrict__ y, int64_t y_stride, bool accumulate) {
  constexpr int W = CT * 16;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int t = 0; t < CT; ++t) {
    float* r = red + warp * 8 * W + t * 16 + g;
    if (2 * c < T) r[2 * c * W] = yv[t][0], r[2 * c * W + 8] = yv[t][2];
    if (2 * c + 1 < T) r[(2 * c + 1) * W] = yv[t][1], r[(2 * c + 1) * W + 8] = yv[t][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < T * W; i += blockDim.x) {
    const int t = i / W, j = i % W, col = ct0 * 16 + j;
    float sum = red[t * W + j];
    for (int v = 1; v < n_warps; ++v) sum += red[(v * 8 + t) * W + j];
    if (col < N) y[t * y_stride + col] = accumulate ? y[t * y_stride + col] + sum : sum;
  }
}

// SPAN: consecutive chunks of a stage that share a group (1, 2 or 4, dividing the stage's 2 KB
// chunks and the group's chunk count): their products are summed in one fp32 accumulator and
// scaled once, and their zero constants made once (at g128: once per 128 inputs, not per 32).
// group_shift >= 0: group = chunk >> group_shift (power-of-two chunks per group, or one group:
// shift 30); < 0: the chunk -> group table.
template <int CT, int SPAN>
__global__ void __launch_bounds__(kMaxWarps * 32)
    gptq4_mma_gemv_kernel(const uint4* __restrict__ qw,             // [n_kb][n_ct][32]
                          const uint32_t* __restrict__ scale_zero,  // [n_groups][n_ct * 16]
                          const int32_t* __restrict__ chunk_group,  // [n_chunks]
                          int group_shift, const float* __restrict__ x, int64_t x_stride, int T,
                          float* __restrict__ y, int64_t y_stride, int N, int K, int n_chunks, int n_kb, int n_ct,
                          int kb_per_warp, bool rotate, bool accumulate) {
  constexpr int KB = mma_kb<CT>(), kCodes = mma_codes_u4(CT), kSz = mma_sz_u4(CT), kXPitch = mma_x_pitch(CT);
  static_assert(SPAN == 1 || SPAN == 2 || SPAN == 4, "SPAN");
  static_assert((2 * KB) % SPAN == 0, "a span lies in one stage");
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int ct0 = blockIdx.x * CT;
  const int g = lane >> 2, c = lane & 3;
  const int su4 = mma_stage_u4(CT, T);
  int* table = reinterpret_cast<int*>(smem + n_warps * kStages * su4);
  if (group_shift < 0) {  // irregular groups: the table first (the copies below need it)
    for (int i = threadIdx.x; i < n_chunks; i += blockDim.x) table[i] = __ldg(chunk_group + i);
    __syncthreads();
  }

  uint4* ring = smem + warp * kStages * su4;
  const int kb_begin = warp * kb_per_warp, kb_end = min(kb_begin + kb_per_warp, n_kb);
  const int n_batches = kb_begin < kb_end ? (kb_end - kb_begin + KB - 1) / KB : 0;
  const int rot = rotate && n_batches > 0 ? int(blockIdx.x % unsigned(n_batches)) : 0;
  const int64_t sz_stride = int64_t(n_ct) * 16;
  // This lane's copies that do not change from batch to batch: its codes' offset, tile t's uint4s
  // (the last block's tiles past n_ct read the last tile: never used), its scale/zero pieces.
  const uint4* qw_lane = qw + int64_t(ct0) * 32 + lane;
  int tile_off[CT];
#pragma unroll
  for (int t = 0; t < CT; ++t) tile_off[t] = (min(ct0 + t, n_ct - 1) - ct0) * 32;
  // The first k-block of the s-th batch this warp computes (batches in rotated order).
  auto first_kb = [&](int s) {
    const int b = s + rot;
    return kb_begin + (b < n_batches ? b : b - n_batches) * KB;
  };
  // Batch s into stage s % kStages. Codes: lane l copies its uint4 of every (k-block, tile);
  // scale/zero: 16-byte piece i = chunk i / (4 CT) of the batch, columns 16 ct0 + 4 (i % 4 CT) .. + 4;
  // x: 16-byte pieces l, l + 32, ... of each of the T rows over the batch's inputs (zero-filled past
  // K). Past kb_end (the last warp's last batch only: ranges are whole batches otherwise): the
  // last k-block's codes and scales again, against x = 0.
  // Weights (codes, scale/zero) and x are issued apart so that the first stages' weights can go
  // before wait_for_inputs (a PDL launch: the kernel before may still be writing x).
  auto issue_weights = [&](int s) {
    uint4* st = ring + (s % kStages) * su4;
    const int kb0 = first_kb(s);
#pragma unroll
    for (int u = 0; u < KB; ++u) {
      const uint4* src = qw_lane + int64_t(min(kb0 + u, kb_end - 1)) * n_ct * 32;
#pragma unroll
      for (int t = 0; t < CT; ++t) cp_async16(st + (u * CT + t) * 32 + lane, src + tile_off[t]);
    }
#pragma unroll
    for (int r = 0; r < kSz / 32; ++r) {
      const int i = lane + 32 * r, j = i / (4 * CT), piece = i % (4 * CT);
      const int chunk = min(min(2 * kb0 + j, 2 * kb_end - 1), n_chunks - 1);
      const int grp = group_shift >= 0 ? chunk >> group_shift : table[chunk];
      const int col = min(ct0 + piece / 4, n_ct - 1) * 16 + (piece % 4) * 4;
      cp_async16(st + kCodes + i, scale_zero + int64_t(grp) * sz_stride + col);
    }
  };
  auto issue_x = [&](int s) {
    float* xs = reinterpret_cast<float*>(ring + (s % kStages) * su4 + kCodes + kSz);
    const int kb0 = first_kb(s);
    for (int t = 0; t < T; ++t)
#pragma unroll
      for (int h = 0; h < KB / 2; ++h) {
        const int p = lane + 32 * h, k = kb0 * 64 + 4 * p;  // K % 4 == 0: a piece is all in or all out
        cp_async16_zfill(xs + t * kXPitch + 4 * p, x + t * x_stride + (k < K ? k : 0), k < K);
      }
  };
  // The first kStages - 1 stages: all their weights, then (inputs ready) x stage by stage. Copy
  // group s then holds x of stage s (and group 0 the weights of all of them), so the wait in the
  // loop below still means "stage s has landed".
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s)
    if (s < n_batches) issue_weights(s);
  wait_for_inputs();
  allow_dependents();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_batches) issue_x(s);
    cp_async_commit();  // empty groups too: the wait below counts groups
  }

  const bool xrow = g < T;
  float yv[CT][4];  // per tile: (t 2c, column g), (2c+1, g), (2c, g+8), (2c+1, g+8)
#pragma unroll
  for (int t = 0; t < CT; ++t) yv[t][0] = yv[t][1] = yv[t][2] = yv[t][3] = 0.f;
  for (int s = 0; s < n_batches; ++s) {
    cp_async_wait<kStages - 2>();  // batch s has landed (for this lane's copies) ...
    __syncwarp();                  // ... and for every lane's; stage (s - 1) % kStages is free again
    if (s + kStages - 1 < n_batches) {
      issue_weights(s + kStages - 1);
      issue_x(s + kStages - 1);
    }
    cp_async_commit();
    const uint4* st = ring + (s % kStages) * su4;
    const uint32_t* sz = reinterpret_cast<const uint32_t*>(st + kCodes);  // [2 KB chunks][CT * 16 columns]
    const float* xg = reinterpret_cast<const float*>(st + kCodes + kSz) + (xrow ? g : 0) * kXPitch + 2 * c;
#pragma unroll
    for (int c0 = 0; c0 < 2 * KB; c0 += SPAN) {  // the spans of the stage
      Mma4Zero z[CT][2];
      float acc[CT][4];
#pragma unroll
      for (int t = 0; t < CT; ++t) {
        const uint32_t* szc = sz + c0 * (CT * 16) + t * 16;
        z[t][0] = mma4_zero(szc[g]);
        z[t][1] = mma4_zero(szc[g + 8]);
        acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
      }
#pragma unroll
      for (int ch = c0; ch < c0 + SPAN; ++ch) {  // chunk ch of the stage: k-block ch / 2, its half ch % 2
        const int u = ch >> 1, h = ch & 1;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          // B of sub-tile kt = 2h + j: x[g][16kt + 2c, +1] and x[g][16kt + 2c + 8, +9] in fp16 (rows >= T: 0)
          const int kt = 2 * h + j;
          // Every lane reads (rows >= T read row 0, a valid address) and selects: a branch here
          // was divergent, and the compiler rebuilt the address inside it at every read.
          const float2 x0 = *reinterpret_cast<const float2*>(xg + u * 64 + kt * 16);
          const float2 x1 = *reinterpret_cast<const float2*>(xg + u * 64 + kt * 16 + 8);
          const uint32_t b0 = xrow ? h2_as_u32(__floats2half2_rn(x0.x, x0.y)) : 0u;
          const uint32_t b1 = xrow ? h2_as_u32(__floats2half2_rn(x1.x, x1.y)) : 0u;
#pragma unroll
          for (int t = 0; t < CT; ++t) {
            const uint4 wv = st[(u * CT + t) * 32 + lane];
            const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
            uint32_t a[4];
            decode_a(words[kt], z[t][0], z[t][1], a);
            mma_16816(acc[t], a, b0, b1);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < CT; ++t) {
        const uint32_t* szc = sz + c0 * (CT * 16) + t * 16;
        add_scaled(yv[t], acc[t], szc[g], szc[g + 8]);
      }
    }
  }
  cp_async_wait<0>();  // nothing left in flight (the trailing groups are empty)
  __syncthreads();     // every warp is done with its ring: the reduction reuses the space

  reduce_warps_store<CT>(reinterpret_cast<float*>(smem), yv, T, ct0, N, y, y_stride, accumulate);
}

// ---- 4 bits, T <= 8, weights straight into registers: gptq4_reg_gemv -------------------------
//
// The same mma.sync work as gptq4_mma_gemv over the same layout, without its shared-memory ring:
// gptq4_mma_gemv spends ~130 issue slots per (k-block, tile) on copying codes, scale/zero and fp32
// x through cp.async and converting x to fp16 at every use, which makes it issue-bound at ~2x the
// memory floor. Here:
// - Weights go global -> registers (ld.global.nc.L1::no_allocate.v4: streamed once, no L1 line
//   kept), U k-blocks x CT tiles per load batch, two batches live in registers (A and B, the loop
//   unrolled by two so no register moves): batch i + 1 is in flight while batch i is decoded. The
//   scale/zero words of a span (SPAN chunks of one group, uniform groups only) are loaded with it.
// - x: each warp stages its own k-range once, in shared memory, already in fp16 and in the order
//   of the B fragments: per k-block and row 32 words, [c][kt 0..3][b0, b1] with the two 16-byte
//   halves of a lane's 8 words swapped on odd rows (rows 0 and 1 of a quarter-warp's loads then
//   hit different banks); zero past K. Lane (g, c) reads one 16-byte word per chunk (the B
//   fragments of its two 16-input sub-tiles). Rows >= T read row T - 1: the mma's output columns
//   are independent, and those columns are never stored.
// - Per word: decode_a (exact q - zero in fp16) + one mma.sync; per span the fp32 accumulators
//   are scaled by the column's scale into y (as gptq4_mma_gemv: identical products and sums).
// Instruction budget per (k-block, tile): ~36 decode + 4 mma + 1 load + ~2 x loads + ~8 per span
// of scale/zero work, ~50 issue slots against ~126 the SM's 4 schedulers have in the 31.5 clk its
// share of the bandwidth takes for the 512 bytes: memory-bound with room for latency.
// The first two batches are issued before wait_for_inputs (a PDL launch: the kernel before may
// still be writing x); x is staged after it.
// Limits: uniform groups (group_shift >= 0); T <= 8; the staged x (warps x k-blocks per warp x T x
// 128 bytes ~ T x K x 2) within the block's shared memory; otherwise gptq4_mma_gemv runs.
__device__ __forceinline__ uint4 ld_stream_u4(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
constexpr int kRegXKbRowU32 = 32;  // staged x words per k-block and row

template <int CT, int U, int SPAN>
__global__ void __launch_bounds__(kMaxWarps * 32)
    gptq4_reg_gemv_kernel(const uint4* __restrict__ qw,             // [n_kb][n_ct][32]
                          const uint32_t* __restrict__ scale_zero,  // [n_groups][n_ct * 16]
                          int group_shift, const float* __restrict__ x, int64_t x_stride, int T,
                          float* __restrict__ y, int64_t y_stride, int N, int K, int n_chunks, int n_kb, int n_ct,
                          int kb_per_warp, bool accumulate) {
  static_assert(SPAN == 1 || SPAN == 2 || SPAN == 4, "SPAN");
  static_assert((2 * U) % SPAN == 0, "a span lies in one batch");
  constexpr int kSpans = 2 * U / SPAN;
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ct0 = blockIdx.x * CT, g = lane >> 2, c = lane & 3;
  const int kb_begin = warp * kb_per_warp, kb_end = min(kb_begin + kb_per_warp, n_kb);
  const int n_batches = kb_begin < kb_end ? (kb_end - kb_begin + U - 1) / U : 0;
  const int64_t sz_stride = int64_t(n_ct) * 16, kb_stride = int64_t(n_ct) * 32;

  // This lane's uint4 of tile t (tiles past n_ct read the last one: never stored) and its
  // scale/zero words (column g of the tile; g + 8 is 8 words on) in group 0.
  const uint4* qw_lane[CT];
  const uint32_t* sz_lane[CT];
#pragma unroll
  for (int t = 0; t < CT; ++t) {
    const int ct = min(ct0 + t, n_ct - 1);
    qw_lane[t] = qw + int64_t(ct) * 32 + lane;
    sz_lane[t] = scale_zero + ct * 16 + g;
  }
  struct Batch {
    uint4 w[U][CT];
    uint32_t sz[kSpans][CT][2];  // per span: column g, g + 8
  };
  // Batch i: k-blocks kb_begin + i U .. + U (past n_kb: the last again, against staged x = 0).
  auto load = [&](Batch& b, int i) {
    const int kb0 = kb_begin + i * U;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t off = int64_t(min(kb0 + u, n_kb - 1)) * kb_stride;
#pragma unroll
      for (int t = 0; t < CT; ++t) b.w[u][t] = ld_stream_u4(qw_lane[t] + off);
    }
#pragma unroll
    for (int sp = 0; sp < kSpans; ++sp) {
      const int64_t grp = int64_t(min(2 * kb0 + sp * SPAN, n_chunks - 1) >> group_shift) * sz_stride;
#pragma unroll
      for (int t = 0; t < CT; ++t) {
        b.sz[sp][t][0] = __ldg(sz_lane[t] + grp);
        b.sz[sp][t][1] = __ldg(sz_lane[t] + grp + 8);
      }
    }
  };
  Batch A, B;
  if (n_batches > 0) load(A, 0);
  if (n_batches > 1) load(B, 1);
  wait_for_inputs();
  allow_dependents();

  // Stage x: piece p (4 inputs) = row p / (kb_per_warp * 16), input 4 (p % (kb_per_warp * 16)) of
  // the warp's range; 8 loads in flight per lane before any is converted.
  uint32_t* xw = reinterpret_cast<uint32_t*>(smem) + warp * kb_per_warp * T * kRegXKbRowU32;
  {
    const int per_row = kb_per_warp * 16, pieces = T * per_row;
    for (int p0 = 0; p0 < pieces; p0 += 32 * 8) {
      float4 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int p = p0 + 32 * j + lane, row = p / per_row, k = kb_begin * 64 + 4 * (p % per_row);
        v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (p < pieces && k < K) v[j] = __ldg(reinterpret_cast<const float4*>(x + row * x_stride + k));
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int p = p0 + 32 * j + lane;
        if (p >= pieces) break;
        const int row = p / per_row, q = p % per_row, kbl = q >> 4, kt = (q >> 2) & 3, kk = (q & 3) * 4;
        // inputs kk, kk + 1 -> lane c = (kk % 8) / 2, b = kk / 8; kk + 2, kk + 3 -> lane c + 1
        const int slot = kt * 2 + (kk >> 3), half = (slot >> 2) ^ (row & 1);
        uint32_t* base = xw + (kbl * T + row) * kRegXKbRowU32 + half * 4 + (slot & 3);
        const int cc = (kk & 7) >> 1;
        base[cc * 8] = h2_as_u32(__floats2half2_rn(v[j].x, v[j].y));
        base[(cc + 1) * 8] = h2_as_u32(__floats2half2_rn(v[j].z, v[j].w));
      }
    }
  }
  __syncwarp();

  const int r = min(g, T - 1), rpar = r & 1;
  const uint32_t* x_lane = xw + r * kRegXKbRowU32 + c * 8;
  float yv[CT][4];  // per tile: (t 2c, column g), (2c+1, g), (2c, g+8), (2c+1, g+8)
#pragma unroll
  for (int t = 0; t < CT; ++t) yv[t][0] = yv[t][1] = yv[t][2] = yv[t][3] = 0.f;
  auto compute = [&](const Batch& b, int i) {
    const uint32_t* xb = x_lane + i * U * T * kRegXKbRowU32;
#pragma unroll
    for (int sp = 0; sp < kSpans; ++sp) {
      Mma4Zero z[CT][2];
      float acc[CT][4];
#pragma unroll
      for (int t = 0; t < CT; ++t) {
        z[t][0] = mma4_zero(b.sz[sp][t][0]);
        z[t][1] = mma4_zero(b.sz[sp][t][1]);
        acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
      }
#pragma unroll
      for (int ch = sp * SPAN; ch < sp * SPAN + SPAN; ++ch) {  // chunk ch of the batch: k-block ch / 2, half ch % 2
        const int u = ch >> 1, h = ch & 1;
        const uint4 xq = *reinterpret_cast<const uint4*>(xb + u * T * kRegXKbRowU32 + 4 * (h ^ rpar));
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int kt = 2 * h + j;
          const uint32_t b0 = j ? xq.z : xq.x, b1 = j ? xq.w : xq.y;
#pragma unroll
          for (int t = 0; t < CT; ++t) {
            const uint32_t words[4] = {b.w[u][t].x, b.w[u][t].y, b.w[u][t].z, b.w[u][t].w};
            uint32_t a[4];
            decode_a(words[kt], z[t][0], z[t][1], a);
            mma_16816(acc[t], a, b0, b1);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < CT; ++t) add_scaled(yv[t], acc[t], b.sz[sp][t][0], b.sz[sp][t][1]);
    }
  };
  for (int i = 0; i < n_batches; i += 2) {
    compute(A, i);
    if (i + 2 < n_batches) load(A, i + 2);
    if (i + 1 < n_batches) {
      compute(B, i + 1);
      if (i + 3 < n_batches) load(B, i + 3);
    }
  }
  __syncthreads();  // every warp is done with its x: the reduction reuses the space

  reduce_warps_store<CT>(reinterpret_cast<float*>(smem), yv, T, ct0, N, y, y_stride, accumulate);
}

// out[n][k] = scale * (q - zero) rounded to fp16 (the product in fp32, as the host computes it),
// from the mma layout. One warp per (column tile, kDequantBatch consecutive k-blocks): the batch's
// loads are issued together, each k-block is decoded into a [16 rows][64 k] tile in shared memory
// (rows padded to 72 halves: the fragment writes hit 32 distinct banks), and the warp writes the
// tile as 16 rows of 128 contiguous bytes, 8 bytes per lane (rows are only 8-byte aligned: K % 4).
constexpr int kDequantBatch = 4;
__global__ void __launch_bounds__(256)
    gptq4_mma_dequant_kernel(const uint4* __restrict__ qw, const uint32_t* __restrict__ scale_zero,
                             const int32_t* __restrict__ chunk_group, __half* __restrict__ out, int N, int K,
                             int n_chunks, int n_kb) {
  constexpr int kPitch = 72;  // halves per tile row
  __shared__ __align__(16) __half tile[8][16 * kPitch];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ct = blockIdx.x, n_ct = gridDim.x;
  const int g = lane >> 2, c = lane & 3;
  const int64_t sz_stride = int64_t(n_ct) * 16;
  __half* st = tile[warp];
  for (int kb0 = (blockIdx.y * 8 + warp) * kDequantBatch; kb0 < n_kb; kb0 += gridDim.y * 8 * kDequantBatch) {
    uint4 wv[kDequantBatch];
    uint32_t sz[kDequantBatch][2][2];  // [u][chunk][column g, g + 8]
#pragma unroll
    for (int u = 0; u < kDequantBatch; ++u) {
      const int kb = min(kb0 + u, n_kb - 1);
      wv[u] = __ldcs(qw + (int64_t(kb) * n_ct + ct) * 32 + lane);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t grp = __ldg(chunk_group + min(2 * kb + h, n_chunks - 1));
        sz[u][h][0] = __ldg(scale_zero + grp * sz_stride + ct * 16 + g);
        sz[u][h][1] = __ldg(scale_zero + grp * sz_stride + ct * 16 + g + 8);
      }
    }
#pragma unroll
    for (int u = 0; u < kDequantBatch; ++u) {
      if (kb0 + u >= n_kb) break;
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
      for (int kt = 0; kt < 4; ++kt) {
        const uint32_t* s2 = sz[u][kt >> 1];
        uint32_t a[4];
        decode_a(words[kt], mma4_zero(s2[0]), mma4_zero(s2[1]), a);
        const float s[2] = {half_bits_to_float(s2[0] & 0xffffu), half_bits_to_float(s2[1] & 0xffffu)};
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // a[r]: row g + 8 (r & 1), k + 8 (r >> 1)
          const float2 v = __half22float2(u32_as_h2(a[r]));
          *reinterpret_cast<__half2*>(st + (g + 8 * (r & 1)) * kPitch + kt * 16 + 2 * c + 8 * (r >> 1)) =
              __floats2half2_rn(s[r & 1] * v.x, s[r & 1] * v.y);
        }
      }
      __syncwarp();
      const int kb = kb0 + u;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int row = 2 * i + (lane >> 4), seg = lane & 15, col = ct * 16 + row, k = kb * 64 + seg * 4;
        if (col < N && k < K)
          *reinterpret_cast<uint2*>(out + int64_t(col) * K + k) =
              *reinterpret_cast<const uint2*>(st + row * kPitch + seg * 4);
      }
      __syncwarp();
    }
  }
}

// ---- 4 bits at 9..64 rows: gptq4_mma_gemm ---------------------------------------------------
//
// Batched decode (T = 9..64 rows) reads every weight once per step, as T <= 8 does, but each
// decoded weight now feeds T / 8 mma.sync instead of one, and x is T times larger: staging it per
// warp, as gptq4_mma_gemv does, would not fit. So here a block's warps share one k-range and x.
// Tiling. Block = W warps x CTW column tiles each (BN = 16 W CTW output columns), k-range
// [kb_begin, kb_end) of split blockIdx.y. Per stage (one k-block: 64 inputs) it copies with
// cp.async, kStages deep: each warp's codes of its CTW tiles (512 contiguous bytes per tile), the
// scale/zero words of the stage's 2 chunks for the BN columns, and NT * 8 rows of x in fp16 (rows
// >= T zero-filled; rows 144 bytes apart so ldmatrix hits 32 distinct banks). Per 16-input
// sub-tile: the B fragments of the NT 8-row n-tiles by ldmatrix.x4 (two n-tiles each, shared by
// the warp's tiles), then per tile the word is decoded (exact q - zero, decode_a) and multiplied by
// the scale in fp16 (exactly the fp16 weight of gptq_dequant_f16: (q - zero) and scale are fp16
// values, their product rounded once), and NT mma.sync m16n8k16 accumulate in fp32 across groups.
// So the results are those of the dequantize + cuBLAS path (fp16 W, fp16 x, fp32 sums) up to the
// order of the fp32 additions.
// x is converted to fp16 once per call (x_to_half_k64, rows padded with zeros to whole k-blocks)
// so that cp.async can copy it; rows >= T read as zero.
// Split-K (splits > 1, chosen when the column blocks alone leave SMs idle): every block writes its
// fp32 partial sums [split][T][N] to the workspace (L2), then the last block of its column range
// to finish (a counter per column block, reset by that block) adds the partials in split order and
// writes y: deterministic, no atomics on the data, capturable in a CUDA graph.
// Limits: T <= 64 per launch (gptq_gemm loops over larger T), K % 4 == 0.
constexpr int kGemmStages = 4;
constexpr int kXRowU4 = 9;  // uint4 per staged x row: 64 halves + 8 of padding
__host__ __device__ constexpr int gemm_stage_u4(int warps, int ctw, int nt) {
  return warps * ctw * 32 + warps * ctw * 8 + nt * 8 * kXRowU4;  // codes, scale/zero [2][BN], x
}

// out[t][k] = fp16(x[t][k]) for k < K, 0 for K <= k < K64 (K64: whole k-blocks). 8 halves per thread.
__global__ void x_to_half_k64(const float* __restrict__ x, int64_t x_stride, int T, int K, int K64,
                              __half* __restrict__ out) {
  const int per_row = K64 / 8;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < T * per_row; i += gridDim.x * blockDim.x) {
    const int t = i / per_row, k = (i % per_row) * 8;
    float v[8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // K % 4 == 0: a float4 is all in or all out
      float4 f = make_float4(0.f, 0.f, 0.f, 0.f);
      if (k + 4 * h < K) f = __ldg(reinterpret_cast<const float4*>(x + t * x_stride + k + 4 * h));
      v[4 * h] = f.x, v[4 * h + 1] = f.y, v[4 * h + 2] = f.z, v[4 * h + 3] = f.w;
    }
    uint4 o;
    o.x = h2_as_u32(__floats2half2_rn(v[0], v[1]));
    o.y = h2_as_u32(__floats2half2_rn(v[2], v[3]));
    o.z = h2_as_u32(__floats2half2_rn(v[4], v[5]));
    o.w = h2_as_u32(__floats2half2_rn(v[6], v[7]));
    *reinterpret_cast<uint4*>(out + int64_t(t) * K64 + k) = o;
  }
}

template <int NT, int CTW>
__global__ void __launch_bounds__(256)
    gptq4_mma_gemm_kernel(const uint4* __restrict__ qw,             // [n_kb][n_ct][32]
                          const uint32_t* __restrict__ scale_zero,  // [n_groups][n_ct * 16]
                          const int32_t* __restrict__ chunk_group,  // [n_chunks]
                          int group_shift,                          // >= 0: group = chunk >> shift
                          const __half* __restrict__ x16,           // [T][n_kb * 64]
                          int T, float* __restrict__ y, int64_t y_stride, int N, int n_chunks, int n_kb, int n_ct,
                          int kb_per_split, float* __restrict__ partials, int* __restrict__ counters,
                          bool accumulate) {
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int BN = n_warps * CTW * 16;
  const int ct_block = blockIdx.x * n_warps * CTW;  // the block's first column tile
  const int codes_u4 = n_warps * CTW * 32, sz_u4 = n_warps * CTW * 8;
  const int stage_u4 = gemm_stage_u4(n_warps, CTW, NT);
  const int64_t sz_stride = int64_t(n_ct) * 16, x_row = int64_t(n_kb) * 64;
  const int kb_begin = blockIdx.y * kb_per_split, kb_end = min(kb_begin + kb_per_split, n_kb);
  const int n_iter = max(kb_end - kb_begin, 0);

  const uint4* qw_lane[CTW];  // this lane's uint4 of each of the warp's tiles in k-block 0
#pragma unroll
  for (int t = 0; t < CTW; ++t) qw_lane[t] = qw + int64_t(min(ct_block + warp * CTW + t, n_ct - 1)) * 32 + lane;
  auto issue = [&](int i) {
    uint4* st = smem + (i % kGemmStages) * stage_u4;
    const int kb = kb_begin + i;
#pragma unroll
    for (int t = 0; t < CTW; ++t)
      cp_async16(st + (warp * CTW + t) * 32 + lane, qw_lane[t] + int64_t(kb) * n_ct * 32);
    for (int p = threadIdx.x; p < sz_u4; p += blockDim.x) {  // [chunk h][BN columns], 4 words a piece
      const int h = p / (sz_u4 / 2), col = min(ct_block * 16 + (p % (sz_u4 / 2)) * 4, int(sz_stride) - 4);
      const int chunk = min(2 * kb + h, n_chunks - 1);
      const int grp = group_shift >= 0 ? chunk >> group_shift : __ldg(chunk_group + chunk);
      cp_async16(st + codes_u4 + p, scale_zero + int64_t(grp) * sz_stride + col);
    }
    for (int p = threadIdx.x; p < NT * 8 * 8; p += blockDim.x) {  // x: NT*8 rows x 8 pieces of 8 halves
      const int r = p >> 3, piece = p & 7;
      const bool valid = r < T;
      cp_async16_zfill(st + codes_u4 + sz_u4 + r * kXRowU4 + piece,
                       x16 + (valid ? r : 0) * x_row + int64_t(kb) * 64 + piece * 8, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kGemmStages - 1; ++s) {
    if (s < n_iter) issue(s);
    cp_async_commit();  // empty groups too: the wait below counts groups
  }

  float acc[CTW][NT][4];
#pragma unroll
  for (int t = 0; t < CTW; ++t)
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[t][n][0] = acc[t][n][1] = acc[t][n][2] = acc[t][n][3] = 0.f;

  for (int i = 0; i < n_iter; ++i) {
    cp_async_wait<kGemmStages - 2>();  // stage i has landed (this thread's copies) ...
    __syncthreads();                   // ... and everyone's; stage i - 1's slot is free again
    if (i + kGemmStages - 1 < n_iter) issue(i + kGemmStages - 1);
    cp_async_commit();
    const uint4* st = smem + (i % kGemmStages) * stage_u4;
    const uint32_t* sz = reinterpret_cast<const uint32_t*>(st + codes_u4);  // [2][BN]
    const uint4* xs = st + codes_u4 + sz_u4;
    uint4 wq[CTW];
#pragma unroll
    for (int t = 0; t < CTW; ++t) wq[t] = st[(warp * CTW + t) * 32 + lane];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // chunk h of the k-block: sub-tiles 2h, 2h + 1
      Mma4Zero z[CTW][2];
      __half2 sc[CTW][2];
#pragma unroll
      for (int t = 0; t < CTW; ++t) {
        const uint32_t* s = sz + h * BN + (warp * CTW + t) * 16;
        const uint32_t s0 = s[g], s1 = s[g + 8];
        z[t][0] = mma4_zero(s0);
        z[t][1] = mma4_zero(s1);
        sc[t][0] = u32_as_h2(__byte_perm(s0, 0u, 0x1010));  // the low half (scale) twice
        sc[t][1] = u32_as_h2(__byte_perm(s1, 0u, 0x1010));
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int kt = 2 * h + j;
        // B of n-tiles 2p, 2p + 1: matrix q = lane / 8 is rows 8 (2p + q / 2) .. + 8, inputs
        // 16 kt + 8 (q % 2) .. + 8 of the staged x.
        uint32_t b[NT][2];
#pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
          uint32_t r[4];
          const int q = lane >> 3, row = 16 * p + 8 * (q >> 1) + (lane & 7);
          ldmatrix_x4(r, reinterpret_cast<const __half*>(xs + row * kXRowU4) + 16 * kt + 8 * (q & 1));
          b[2 * p][0] = r[0], b[2 * p][1] = r[1], b[2 * p + 1][0] = r[2], b[2 * p + 1][1] = r[3];
        }
#pragma unroll
        for (int t = 0; t < CTW; ++t) {
          const uint32_t words[4] = {wq[t].x, wq[t].y, wq[t].z, wq[t].w};
          uint32_t a[4];
          decode_a(words[kt], z[t][0], z[t][1], a);
          a[0] = h2_as_u32(__hmul2(u32_as_h2(a[0]), sc[t][0]));  // column g
          a[2] = h2_as_u32(__hmul2(u32_as_h2(a[2]), sc[t][0]));
          a[1] = h2_as_u32(__hmul2(u32_as_h2(a[1]), sc[t][1]));  // column g + 8
          a[3] = h2_as_u32(__hmul2(u32_as_h2(a[3]), sc[t][1]));
#pragma unroll
          for (int n = 0; n < NT; ++n)
            if (8 * n < T) mma_16816(acc[t][n], a, b[n][0], b[n][1]);  // n-tiles all past T: skipped
        }
      }
    }
  }
  cp_async_wait<0>();

  // acc[t][n]: (row 8n + 2c, column g), (8n + 2c + 1, g), (8n + 2c, g + 8), (8n + 2c + 1, g + 8)
  // of tile t, columns counted from the tile's first.
  const int splits = gridDim.y;
  float* out = splits > 1 ? partials + int64_t(blockIdx.y) * T * N : y;
  const int64_t out_stride = splits > 1 ? N : y_stride;
#pragma unroll
  for (int t = 0; t < CTW; ++t)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = 8 * n + 2 * c + (e & 1), col = (ct_block + warp * CTW + t) * 16 + g + 8 * (e >> 1);
        if (r >= T || col >= N) continue;
        float* p = out + r * out_stride + col;
        if (splits > 1) __stcg(p, acc[t][n][e]);
        else *p = accumulate ? *p + acc[t][n][e] : acc[t][n][e];
      }
  if (splits == 1) return;
  __shared__ int last;
  __threadfence();  // the partials are visible device-wide before the count says so
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counters + blockIdx.x, 1) == splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < T * BN; i += blockDim.x) {
    const int r = i / BN, col = ct_block * 16 + i % BN;
    if (col >= N) continue;
    float s = 0.f;
    for (int sp = 0; sp < splits; ++sp) s += __ldcg(partials + (int64_t(sp) * T + r) * N + col);
    float* p = y + r * y_stride + col;
    *p = accumulate ? *p + s : s;
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next launch
}

// What the launchers need of the current device, read once per device (callers may be on any
// thread, and one process may drive several GPUs).
struct DeviceLimits {
  int sms = 0, smem_block = 0, smem_sm = 0;  // SMs; opt-in shared memory per block; per SM
};
std::mutex g_device_mutex;
const DeviceLimits& device_limits() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  static std::map<int, DeviceLimits> limits;  // entries are never erased: references stay valid
  std::lock_guard<std::mutex> lock(g_device_mutex);
  auto [it, fresh] = limits.try_emplace(dev);
  if (fresh) {
    DeviceLimits& d = it->second;
    CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
  }
  return it->second;
}
// Grants `kernel` the device's opt-in shared memory per block less its static shared memory (the
// limit counts both: asking for all of it fails for a kernel with a __shared__ variable), once per
// (device, kernel): the attribute belongs to the device's context, so a second GPU needs its own call.
void allow_max_smem(const void* kernel) {
  const int opt_in = device_limits().smem_block;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  static std::set<std::pair<int, const void*>> done;
  std::lock_guard<std::mutex> lock(g_device_mutex);
  if (done.insert({dev, kernel}).second) {
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    opt_in - int(attr.sharedSizeBytes)));
  }
}

// Warps per block (1..kMaxWarps) so that `blocks` blocks give about `per_sm` warps per SM.
int warps_per_block(int64_t blocks, int per_sm) {
  const int64_t target = int64_t(device_limits().sms) * per_sm;
  return int(std::clamp<int64_t>(target / std::max<int64_t>(blocks, 1), 1, kMaxWarps));
}

template <int BITS, int T>
void launch_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, float* y, int64_t y_stride,
                 bool accumulate, cudaStream_t stream) {
  const int n_tiles = int((w.N + 31) / 32), n_chunks = int(w.n_chunks);
  // Enough warps in flight per SM: 16 per block when the column tiles alone leave SMs thin
  // (N = 4096: 128 tiles for 132 SMs), 8 otherwise; never more warps than chunks.
  int warps = n_tiles < 2 * device_limits().sms ? 16 : 8;
  warps = std::max(1, std::min(warps, n_chunks));
  const int cpw = std::max(1, (n_chunks + warps - 1) / warps);
  warps = std::max(1, (n_chunks + cpw - 1) / cpw);  // drop warps that would get no chunk
  gptq_gemv_kernel<BITS, T><<<n_tiles, warps * 32, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, x, x_stride,
                                                                y, y_stride, int(w.N), int(w.K), n_chunks, cpw,
                                                                accumulate);
}

// The 4-bit kernel's launch: CT column tiles per block (x shared by CT tiles), warps per block
// (k split), rotation and the span of chunks per scale; Gemv4Tuning fields left at 0 / -1 take the
// dispatch's choice. Warps: up to ~16 resident warps per SM over the grid, fewer when the blocks
// an SM must hold for one wave do not fit its shared memory, never more than there are batches of
// k-blocks.
template <int CT, int SPAN>
void launch_mma4(const GptqDeviceMatrix& w, int group_shift, const float* x, int64_t x_stride, int64_t T, float* y,
                 int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  const DeviceLimits& dl = device_limits();
  allow_max_smem(reinterpret_cast<const void*>(&gptq4_mma_gemv_kernel<CT, SPAN>));
  const int n_ct = int((w.N + 15) / 16), n_kb = int((w.n_chunks + 1) / 2), KB = mma_kb<CT>();
  const int blocks = (n_ct + CT - 1) / CT;
  const bool table = group_shift < 0;
  GPTQ_ASSERT(mma4_smem(CT, 1, T, w.n_chunks, table) <= size_t(dl.smem_block), "gptq_gemv: K ", w.K, " too large");
  const int blocks_per_sm = (blocks + dl.sms - 1) / dl.sms;
  auto fits = [&](int wp) {
    const size_t b = mma4_smem(CT, wp, T, w.n_chunks, table);
    return b <= size_t(dl.smem_block) && size_t(blocks_per_sm) * (b + 1024) <= size_t(dl.smem_sm);
  };
  int warps = tune.warps;
  if (warps <= 0) {
    warps = std::min(warps_per_block(blocks, 16), (n_kb + KB - 1) / KB);
    while (warps > 1 && !fits(warps)) --warps;
  }
  GPTQ_ASSERT(warps >= 1 && warps <= kMaxWarps && mma4_smem(CT, warps, T, w.n_chunks, table) <= size_t(dl.smem_block),
              "gptq_gemv: ", warps, " warps do not fit");
  // k-blocks per warp: whole batches (so spans never straddle a range), then only the warps that get one.
  const int kbpw = std::max(1, ((n_kb + warps - 1) / warps + KB - 1) / KB * KB);
  warps = std::max(1, (n_kb + kbpw - 1) / kbpw);
  // tune.pdl: a programmatic dependent launch (device_util.cuh), so the first stages' weights
  // stream in while the kernel before finishes.
  launch_kernel(gptq4_mma_gemv_kernel<CT, SPAN>, dim3(unsigned(blocks)), dim3(unsigned(warps * 32)),
                mma4_smem(CT, warps, T, w.n_chunks, table), stream, tune.pdl != 0,
                reinterpret_cast<const uint4*>(w.qweight), w.scale_zero, w.chunk_group, group_shift, x, x_stride,
                int(T), y, y_stride, int(w.N), int(w.K), int(w.n_chunks), n_kb, n_ct, kbpw, tune.rotate != 0,
                accumulate);
}

// SPAN, the chunks of one group scaled at once: 1 with the chunk -> group table (shift < 0), 4 for
// one group, else the group's chunk count (1, 2, 4 or more); at most `most` (what the kernel can
// hold) and tune.span when set.
int group_span(const GptqDeviceMatrix& w, int shift, int most, const Gemv4Tuning& tune) {
  int span = shift < 0 ? 1 : shift == 30 ? 4 : int(std::min<int64_t>(w.chunks_per_group, 4));
  span = std::min(span, most);
  return tune.span > 0 ? std::min(span, tune.span) : span;
}

// The register kernel's launch (gptq4_reg_gemv): CT tiles per block, U k-blocks per load batch,
// SPAN chunks per scale; warps (below) never more than batches of k-blocks, k-blocks per warp
// whole batches. False (nothing launched) when the staged x does not fit the block's shared memory.
template <int CT, int U, int SPAN>
bool launch_reg4(const GptqDeviceMatrix& w, int group_shift, const float* x, int64_t x_stride, int64_t T, float* y,
                 int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  const DeviceLimits& dl = device_limits();
  const int n_ct = int((w.N + 15) / 16), n_kb = int((w.n_chunks + 1) / 2);
  const int blocks = (n_ct + CT - 1) / CT;
  // Warps: ~12 per SM over the grid (the sweep: 4-5 per block on qkv and gate_up beat 8-16 by
  // 10-25 %, 8-16 on o and down beat 4 by 10-40 %; ~16 per SM is at most what 128 registers allow).
  int warps = tune.warps > 0 ? tune.warps : warps_per_block(blocks, 12);
  warps = std::max(1, std::min({warps, kMaxWarps, (n_kb + U - 1) / U}));
  const int kbpw = ((n_kb + warps - 1) / warps + U - 1) / U * U;
  warps = (n_kb + kbpw - 1) / kbpw;
  const size_t smem = std::max(size_t(warps) * kbpw * size_t(T) * kRegXKbRowU32 * 4, size_t(warps) * 8 * CT * 16 * 4);
  if (smem > size_t(dl.smem_block)) return false;
  const void* k = reinterpret_cast<const void*>(&gptq4_reg_gemv_kernel<CT, U, SPAN>);
  if (smem > 48 * 1024) allow_max_smem(k);
  launch_kernel(gptq4_reg_gemv_kernel<CT, U, SPAN>, dim3(unsigned(blocks)), dim3(unsigned(warps * 32)), smem, stream,
                tune.pdl != 0, reinterpret_cast<const uint4*>(w.qweight), w.scale_zero, group_shift, x, x_stride,
                int(T), y, y_stride, int(w.N), int(w.K), int(w.n_chunks), n_kb, n_ct, kbpw, accumulate);
  return true;
}

template <int CT, int U>
bool launch_reg4_span(const GptqDeviceMatrix& w, int shift, const float* x, int64_t x_stride, int64_t T, float* y,
                      int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  switch (group_span(w, shift, 2 * U, tune)) {
    case 4:
      if constexpr (2 * U >= 4) return launch_reg4<CT, U, 4>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
      [[fallthrough]];
    case 2: return launch_reg4<CT, U, 2>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    default: return launch_reg4<CT, U, 1>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
  }
}

// gptq4_reg_gemv at ct tiles per block and 4 / ct k-blocks per load batch (16 weight registers per
// batch; 8 spilled at the 128 registers of 16-warp blocks, measured with -Xptxas -v); false when it
// does not apply (irregular groups, x too large for shared memory).
bool launch_reg4_gemv(const GptqDeviceMatrix& w, int shift, int ct, const float* x, int64_t x_stride, int64_t T,
                      float* y, int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  if (shift < 0) return false;
  switch (ct) {
    case 1: return launch_reg4_span<1, 4>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    case 2: return launch_reg4_span<2, 2>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    default: return launch_reg4_span<4, 1>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
  }
}

// group = chunk >> shift: uniform groups of a power-of-two chunk count (g32/64/128 of every real
// checkpoint), or one group (30); -1: anything else, read from the chunk -> group table.
int uniform_group_shift(const GptqDeviceMatrix& w) {
  const int64_t cpg = w.chunks_per_group;
  if (cpg > 0 && cpg >= w.n_chunks) return 30;
  if (cpg <= 0 || (cpg & (cpg - 1)) != 0) return -1;
  int shift = 0;
  while ((int64_t(1) << shift) < cpg) ++shift;
  return shift;
}

template <int CT>
void launch_mma4_span(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
                      int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  // Uniform groups of a power-of-two chunk count (g32/64/128 of every real checkpoint) or one
  // group: computed by a shift, and spans of up to 4 chunks share a scale; anything else: the
  // table, a span of 1.
  const int shift = uniform_group_shift(w);
  switch (group_span(w, shift, 4, tune)) {
    case 4: return launch_mma4<CT, 4>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    case 2: return launch_mma4<CT, 2>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    default: return launch_mma4<CT, 1>(w, shift, x, x_stride, T, y, y_stride, accumulate, tune, stream);
  }
}

void launch_mma4_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
                      int64_t y_stride, bool accumulate, const Gemv4Tuning& tune, cudaStream_t stream) {
  // Which kernel, from the H100's workbench --sweep=gemv on the Llama-2-7B layer shapes (the
  // closing note of issue 10): the register kernel at T = 1 (51-58 us per layer against the ring's
  // 60.6), the ring above (at T = 4 and 8 it is 10-25 % faster: its x staging is per stage, the
  // register kernel's all at once, T x K x 2 bytes per block).
  const bool reg = tune.kernel == 2 || (tune.kernel == 0 && T == 1);
  // Column tiles per block: more tiles share x (its L2 traffic is blocks x T x K x 4 bytes) but
  // leave fewer blocks to spread over the SMs. Ring (the H200's sweep): 4 where that still gives
  // 2+ blocks per SM (gate_up: best at every T), or 1+ at T >= 8 (qkv); else 1 at T = 1 (o, qkv,
  // down: 2 is 3-10 % slower there) and 2 above. Register kernel: 4 where 2+ blocks per SM
  // (gate_up), else 2 (qkv, o, down: 1 is 1-17 % slower, 4 is 16-35 % slower).
  int ct = tune.col_tiles;
  if (ct <= 0) {
    const int64_t blocks4 = (w.N + 63) / 64, sms = device_limits().sms;
    ct = blocks4 >= 2 * sms ? 4 : reg ? 2 : (T >= 8 && blocks4 >= sms) ? 4 : T == 1 ? 1 : 2;
  }
  GPTQ_ASSERT(ct == 1 || ct == 2 || ct == 4, "gptq_gemv: col_tiles ", ct);
  if (reg && launch_reg4_gemv(w, uniform_group_shift(w), ct, x, x_stride, T, y, y_stride, accumulate, tune, stream))
    return;
  switch (ct) {
    case 1: return launch_mma4_span<1>(w, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    case 2: return launch_mma4_span<2>(w, x, x_stride, T, y, y_stride, accumulate, tune, stream);
    case 4: return launch_mma4_span<4>(w, x, x_stride, T, y, y_stride, accumulate, tune, stream);
  }
}

template <int BITS>
void launch_gemv_bits(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y,
                      int64_t y_stride, bool accumulate, cudaStream_t stream) {
  switch (T) {
    case 1: return launch_gemv<BITS, 1>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 2: return launch_gemv<BITS, 2>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 3: return launch_gemv<BITS, 3>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 4: return launch_gemv<BITS, 4>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 5: return launch_gemv<BITS, 5>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 6: return launch_gemv<BITS, 6>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 7: return launch_gemv<BITS, 7>(w, x, x_stride, y, y_stride, accumulate, stream);
    case 8: return launch_gemv<BITS, 8>(w, x, x_stride, y, y_stride, accumulate, stream);
  }
}

struct GemmPlan {
  int rows = 0, nt = 0, ctw = 0, warps = 0;    // rows per launch, n-tiles, column tiles per warp, warps
  int col_blocks = 0, splits = 0, kb_per_split = 0;
  size_t smem = 0, x16_bytes = 0, partial_bytes = 0;
};

// The batched kernel's launch for `rows` rows (<= kGemmMaxRows): n-tiles NT from the rows; CTW
// column tiles per warp and W warps (defaults: NT * CTW = 8, so 32 fp32 accumulators per lane, and
// 8 warps); splits of K so that the column blocks times the splits fill whole waves of the SMs,
// capped where the partial sums' traffic (splits x rows x N x 8 bytes) would pass half the weights'.
GemmPlan plan_gemm(const GptqDeviceMatrix& w, int64_t rows, const GemmTuning& tune) {
  const DeviceLimits& dl = device_limits();
  GemmPlan p;
  p.rows = int(std::min<int64_t>(rows, kGemmMaxRows));
  p.nt = p.rows <= 16 ? 2 : p.rows <= 32 ? 4 : 8;
  p.ctw = tune.col_tiles > 0 ? tune.col_tiles : 8 / p.nt;
  p.warps = tune.warps > 0 ? tune.warps : 8;
  GPTQ_ASSERT(p.ctw == 1 || p.ctw == 2 || p.ctw == 4, "gptq_gemm: col_tiles ", p.ctw);
  GPTQ_ASSERT(p.warps >= 1 && p.warps <= 8, "gptq_gemm: warps ", p.warps);
  const int n_ct = int((w.N + 15) / 16), n_kb = int((w.n_chunks + 1) / 2);
  p.col_blocks = (n_ct + p.warps * p.ctw - 1) / (p.warps * p.ctw);
  p.smem = size_t(kGemmStages) * gemm_stage_u4(p.warps, p.ctw, p.nt) * 16;
  GPTQ_ASSERT(p.smem <= size_t(dl.smem_block), "gptq_gemm: ", p.smem, " bytes of shared memory per block");
  int splits = tune.splits;
  if (splits <= 0) {
    const int resident = std::max(1, std::min({int(size_t(dl.smem_sm) / (p.smem + 1024)), 64 / p.warps, 2}));
    const int64_t slots = int64_t(resident) * dl.sms;
    const int cap = int(std::max<int64_t>(1, std::min<int64_t>({16, n_kb / 4, w.K / (32 * int64_t(p.rows))})));
    double best = 0;
    splits = 1;
    for (int s = 1; s <= cap; ++s) {
      const int64_t blocks = int64_t(p.col_blocks) * s, waves = (blocks + slots - 1) / slots;
      const double fill = double(blocks) / double(waves * slots);
      if (fill > best + 0.05) best = fill, splits = s;
    }
  }
  splits = std::max(1, std::min(splits, n_kb));
  p.kb_per_split = (n_kb + splits - 1) / splits;
  p.splits = (n_kb + p.kb_per_split - 1) / p.kb_per_split;  // no split without a k-block
  const size_t k64 = size_t(n_kb) * 64;
  p.x16_bytes = (size_t(p.rows) * k64 * 2 + 255) / 256 * 256;
  p.partial_bytes = p.splits > 1 ? size_t(p.splits) * size_t(p.rows) * size_t(w.N) * 4 : 0;
  return p;
}

template <int NT, int CTW>
void launch_gemm(const GptqDeviceMatrix& w, const GemmPlan& p, int group_shift, const __half* x16, int rows, float* y,
                 int64_t y_stride, float* partials, int* counters, bool accumulate, cudaStream_t stream) {
  const void* k = reinterpret_cast<const void*>(&gptq4_mma_gemm_kernel<NT, CTW>);
  allow_max_smem(k);
  const int n_ct = int((w.N + 15) / 16), n_kb = int((w.n_chunks + 1) / 2);
  gptq4_mma_gemm_kernel<NT, CTW><<<dim3(unsigned(p.col_blocks), unsigned(p.splits)), p.warps * 32, p.smem, stream>>>(
      reinterpret_cast<const uint4*>(w.qweight), w.scale_zero, w.chunk_group, group_shift, x16, rows, y, y_stride,
      int(w.N), int(w.n_chunks), n_kb, n_ct, p.kb_per_split, partials, counters, accumulate);
}

template <int NT>
void launch_gemm_nt(const GptqDeviceMatrix& w, const GemmPlan& p, int shift, const __half* x16, int rows, float* y,
                    int64_t ys, float* partials, int* counters, bool acc, cudaStream_t s) {
  switch (p.ctw) {
    case 1: return launch_gemm<NT, 1>(w, p, shift, x16, rows, y, ys, partials, counters, acc, s);
    case 2: return launch_gemm<NT, 2>(w, p, shift, x16, rows, y, ys, partials, counters, acc, s);
    case 4:
      if constexpr (NT * 4 <= 16) return launch_gemm<NT, 4>(w, p, shift, x16, rows, y, ys, partials, counters, acc, s);
  }
  GPTQ_ASSERT(false, "gptq_gemm: ", p.ctw, " column tiles per warp at ", NT * 8, " rows spill (at most ", 16 / NT, ")");
}

void check_matrix(const GptqDeviceMatrix& w) {
  GPTQ_ASSERT(w.bits == 2 || w.bits == 3 || w.bits == 4 || w.bits == 8, "bits ", w.bits);
  GPTQ_ASSERT(w.K >= 0 && w.N >= 0 && w.K % 4 == 0 && w.n_chunks == (w.K + 31) / 32, "K ", w.K);
  GPTQ_ASSERT(w.N < (int64_t(1) << 31) && w.n_chunks * 32 < (int64_t(1) << 31) && w.n_groups * w.N < (int64_t(1) << 31));
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(w.qweight) % 16 == 0, "qweight must be 16-byte aligned");
}

}  // namespace

void gptq_gemv(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               cudaStream_t stream, const Gemv4Tuning& tune, bool accumulate) {
  check_matrix(w);
  GPTQ_ASSERT(T >= 1 && T <= kGemvMaxRows, "T ", T);
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(x) % 16 == 0 && x_stride % 4 == 0 && (T == 1 || x_stride >= w.K),
              "x must be 16-byte aligned with rows a multiple of 4 floats apart");
  GPTQ_ASSERT(T == 1 || y_stride >= w.N);
  if (w.N == 0) return;
  switch (w.bits) {
    case 2: launch_gemv_bits<2>(w, x, x_stride, T, y, y_stride, accumulate, stream); break;
    case 3: launch_gemv_bits<3>(w, x, x_stride, T, y, y_stride, accumulate, stream); break;
    case 4: launch_mma4_gemv(w, x, x_stride, T, y, y_stride, accumulate, tune, stream); break;
    case 8: launch_gemv_bits<8>(w, x, x_stride, T, y, y_stride, accumulate, stream); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

GemmScratch gptq_gemm_scratch(const GptqDeviceMatrix& w, int64_t T, const GemmTuning& tune) {
  check_matrix(w);
  GPTQ_ASSERT(w.bits == 4 && T >= 1, "gptq_gemm: 4 bits, T >= 1");
  if (w.N == 0) return {};
  const GemmPlan p = plan_gemm(w, T, tune);
  return {p.x16_bytes + p.partial_bytes, p.col_blocks};
}

void gptq_gemm(const GptqDeviceMatrix& w, const float* x, int64_t x_stride, int64_t T, float* y, int64_t y_stride,
               void* scratch, size_t scratch_bytes, int* counters, int64_t n_counters, cudaStream_t stream,
               const GemmTuning& tune, bool accumulate) {
  check_matrix(w);
  GPTQ_ASSERT(w.bits == 4, "gptq_gemm: 4 bits only, got ", w.bits);
  GPTQ_ASSERT(T >= 1, "T ", T);
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(x) % 16 == 0 && x_stride % 4 == 0 && (T == 1 || x_stride >= w.K),
              "x must be 16-byte aligned with rows a multiple of 4 floats apart");
  GPTQ_ASSERT(T == 1 || y_stride >= w.N);
  if (w.N == 0) return;
  const GemmPlan p = plan_gemm(w, T, tune);
  GPTQ_ASSERT(scratch_bytes >= p.x16_bytes + p.partial_bytes && n_counters >= p.col_blocks && counters,
              "gptq_gemm: scratch ", scratch_bytes, " bytes and ", n_counters, " counters, needs ",
              p.x16_bytes + p.partial_bytes, " and ", p.col_blocks, " (gptq_gemm_scratch)");
  auto* x16 = static_cast<__half*>(scratch);
  float* partials = reinterpret_cast<float*>(static_cast<char*>(scratch) + p.x16_bytes);
  const int shift = uniform_group_shift(w), K64 = int((w.n_chunks + 1) / 2 * 64);
  // Row chunks of p.rows (the last may be shorter: the same plan, rows past it skipped).
  for (int64_t r0 = 0; r0 < T; r0 += p.rows) {
    const int rows = int(std::min<int64_t>(p.rows, T - r0));
    const int64_t pieces = int64_t(rows) * (K64 / 8);
    x_to_half_k64<<<unsigned(std::min<int64_t>((pieces + 255) / 256, 4096)), 256, 0, stream>>>(
        x + r0 * x_stride, x_stride, rows, int(w.K), K64, x16);
    float* yr = y + r0 * y_stride;
    switch (p.nt) {
      case 2: launch_gemm_nt<2>(w, p, shift, x16, rows, yr, y_stride, partials, counters, accumulate, stream); break;
      case 4: launch_gemm_nt<4>(w, p, shift, x16, rows, yr, y_stride, partials, counters, accumulate, stream); break;
      case 8: launch_gemm_nt<8>(w, p, shift, x16, rows, yr, y_stride, partials, counters, accumulate, stream); break;
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

void gptq_dequant_f16(const GptqDeviceMatrix& w, void* out, cudaStream_t stream) {
  check_matrix(w);
  GPTQ_ASSERT(reinterpret_cast<uintptr_t>(out) % 8 == 0, "out must be 8-byte aligned");
  if (w.N == 0 || w.n_chunks == 0) return;
  auto* o = static_cast<__half*>(out);
  const int N = int(w.N), K = int(w.K), nc = int(w.n_chunks);
  if (w.bits == 4) {
    const int n_kb = (nc + 1) / 2;
    const dim3 grid(unsigned((w.N + 15) / 16), unsigned(std::min((n_kb + 8 * kDequantBatch - 1) / (8 * kDequantBatch), 65535)));
    gptq4_mma_dequant_kernel<<<grid, 256, 0, stream>>>(reinterpret_cast<const uint4*>(w.qweight), w.scale_zero,
                                                       w.chunk_group, o, N, K, nc, n_kb);
  } else {
    const dim3 grid(unsigned((w.N + 31) / 32), unsigned(std::min<int64_t>((w.n_chunks + 7) / 8, 65535)));
    switch (w.bits) {
      case 2: gptq_dequant_kernel<2><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
      case 3: gptq_dequant_kernel<3><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
      case 8: gptq_dequant_kernel<8><<<grid, 256, 0, stream>>>(w.qweight, w.scale_zero, w.chunk_group, o, N, K, nc); break;
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace gptq::cuda
