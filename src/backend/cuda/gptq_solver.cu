// The GPTQ solver's kernels (quant/gptq.h semantics) and the Hessian's element-wise passes.
//
// The column loop: rows of W are independent given Hinv, so one warp owns one row and walks a lazy
// block of up to 128 columns sequentially; lane l holds the block's columns l, l+32, l+64, l+96 of
// its row in registers (w1[4]), the current column's value is broadcast from its owner lane, every
// lane computes the same quantization and scaled error, and each lane applies the in-block error
// feedback to its own later columns from the block's Hinv[i1:i2, i1:i2] in shared memory (64 KiB,
// every warp of the CTA reads the same row of it: broadcasts). The lazy update of the columns
// right of the block is a cuBLAS GEMM on the host side (quant/cuda/gptq_solver.cpp).
//
// Bit-for-bit with the CPU where the inputs are equal: every step of the quantizer (grid, code,
// dequantized value, error, loss) uses explicitly rounded intrinsics (__fdiv_rn, __fmul_rn, ...)
// so that nvcc contracts nothing into an fma the x86-64 baseline build does not have, and every
// reduction runs in the CPU's order: min/max are exact in any order; the mse search gives each
// lane whole candidates (their error summed in column order in double, as quantizer.cpp does) and
// picks the smallest (error, candidate) pair, the CPU's first strictly smaller one. The GPU's
// Hinv (cuSOLVER) and lazy update (cuBLAS) round differently from the CPU's fixed-order ones, so
// codes differ where a value lies within rounding of a decision boundary. No atomics: the same
// inputs on the same GPU give the same bytes.
#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/gptq_solver_kernels.h"

namespace gptq::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kSlots = kSolverMaxBlock / 32;
constexpr int kWarpsPerCta = 8;  // rows per CTA of the column kernel

// ---- Hessian

// The exponent e of the split's scale 2^e: |x| 2^e < 2^15 for |x| <= amax (fp16 holds < 65504);
// 0 for amax 0, Inf or NaN (which then propagate as on the CPU); clamped so that 2^e and 2^-2e
// stay normal.
__device__ __forceinline__ int split_exponent(const uint32_t* amax_bits) {
  if (!amax_bits) return 0;
  const float amax = __uint_as_float(*amax_bits);
  if (!(amax > 0.f) || !isfinite(amax)) return 0;
  return min(100, max(-100, 14 - ilogbf(amax)));
}

__global__ void hessian_absmax_kernel(const float* x, int64_t rows, int64_t K, int64_t ld, uint32_t* amax_bits) {
  const int64_t n = rows * K;
  uint32_t m = 0;  // bits of a non-negative float: ordered as the floats are
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x)
    m = max(m, __float_as_uint(fabsf(x[(idx / K) * ld + idx % K])));
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(kFull, m, o));
  if (threadIdx.x % 32 == 0) atomicMax(amax_bits, m);  // a max: the same in any order
}

__global__ void hessian_split_kernel(const float* x, int64_t rows, int64_t K, int64_t ld, const uint32_t* amax_bits,
                                     __half* split) {
  const float c = ldexpf(1.f, split_exponent(amax_bits));
  const int64_t n = rows * K;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const float v = __fmul_rn(x[(idx / K) * ld + idx % K], c);  // exact: a power of 2
    const __half hi = __float2half_rn(v);
    const __half lo = __float2half_rn(__fmul_rn(__fsub_rn(v, __half2float(hi)), 2048.f));  // v - hi: exact
    split[idx] = hi;
    split[n + idx] = lo;
  }
}

// 32 x 32 tiles on or above the diagonal; the transposed tile of prod through shared memory, so
// that both reads are coalesced.
__global__ void hessian_accumulate_kernel(double* sum, const float* prod, int64_t K, double alpha, double beta,
                                          const uint32_t* amax_bits) {
  const int64_t i0 = int64_t(blockIdx.y) * 32, j0 = int64_t(blockIdx.x) * 32;
  if (i0 > j0) return;  // wholly below the diagonal
  __shared__ float tile[32][33];
  const int tx = threadIdx.x;
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {  // tile[ty][tx] = prod[j0 + ty, i0 + tx]
    const int64_t r = j0 + ty, c = i0 + tx;
    if (r < K && c < K) tile[ty][tx] = prod[r * K + c];
  }
  __syncthreads();
  alpha = ldexp(alpha, -2 * split_exponent(amax_bits)) / 2;  // exact
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t i = i0 + ty, j = j0 + tx;
    if (i < K && j < K && i <= j) {
      const int64_t idx = i * K + j;
      sum[idx] = beta * sum[idx] + alpha * (double(prod[idx]) + double(tile[tx][ty]));
    }
  }
}

__global__ void hessian_round_kernel(const double* sum, int64_t K, float* H) {
  const int64_t n = K * K;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / K, j = idx % K;
    H[idx] = float(i <= j ? sum[idx] : sum[j * K + i]);
  }
}

__global__ void row_dots_kernel(const float* a, const float* b, int64_t N, int64_t K, double* out) {
  const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  double s = 0;
  for (int64_t k = lane; k < K; k += 32) s += double(a[n * K + k]) * double(b[n * K + k]);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
  if (lane == 0) out[n] = s;
}

// Value i of a little-endian b-bit stream whose word j is words[j * stride] (io/gptq_format.h; 3
// bits may straddle two words).
__device__ __forceinline__ uint32_t stream_value(const int32_t* words, int64_t stride, int64_t i, int bits) {
  const int64_t bit = i * bits, w = bit / 32;
  const int off = int(bit % 32);
  uint32_t v = uint32_t(words[w * stride]) >> off;
  if (off + bits > 32) v |= uint32_t(words[(w + 1) * stride]) << (32 - off);
  return v & ((1u << bits) - 1u);
}

__global__ void dequant_diff_kernel(const float* W, GptqPacked p, int64_t N, int64_t K, float* D) {
  const int64_t n_elem = N * K, zcols = N * p.bits / 32;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n_elem;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / K, k = idx % K;
    const int64_t g = p.g_idx ? p.g_idx[k] : k / p.G;
    const uint32_t q = stream_value(p.qweight + n, N, k, p.bits);
    const uint32_t zs = stream_value(p.qzeros + g * zcols, 1, n, p.bits);
    const float z = float(p.v1 ? zs + 1u : zs);  // v1: stored + 1, as every loader reads it
    const float sc = __half2float(__ushort_as_half(p.scales[g * N + n]));
    D[idx] = __fsub_rn(W[idx], __fmul_rn(sc, __fsub_rn(float(q), z)));
  }
}

unsigned grid_stride_blocks(int64_t n, int threads) { return unsigned(std::min<int64_t>(blocks_for(n, threads), 65536)); }

// ---- factorization

__global__ void factor_input_kernel(const float* H, const int32_t* perm, const float* diag, int64_t K, double damp,
                                    double* a) {
  const int64_t n = K * K;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = idx / K, r = idx % K;  // column-major: consecutive threads, consecutive rows
    const int64_t qr = perm[K - 1 - r], qc = perm[K - 1 - c];
    a[idx] = r == c ? double(diag[qr]) + damp : double(H[min(qr, qc) * K + max(qr, qc)]);
  }
}

// 32 x 32 tiles through shared memory: a(K-1-i, K-1-j) is read along its columns (coalesced,
// reversed) and U written along its rows.
__global__ void hinv_from_factor_kernel(const double* a, int64_t K, float* U) {
  __shared__ double tile[32][33];
  const int64_t i0 = int64_t(blockIdx.y) * 32, j0 = int64_t(blockIdx.x) * 32;
  const int tx = threadIdx.x;
  if (i0 <= j0 + 31) {  // tiles wholly below the diagonal are zeros
    for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
      const int64_t i = i0 + tx, j = j0 + ty;
      if (i < K && j < K) tile[tx][ty] = a[(K - 1 - i) + (K - 1 - j) * K];
    }
  }
  __syncthreads();
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t i = i0 + ty, j = j0 + tx;
    if (i < K && j < K) U[i * K + j] = i <= j ? float(tile[ty][tx]) : 0.f;
  }
}

// ---- weights

__global__ void permute_weights_kernel(const float* W, const int32_t* perm, const uint8_t* dead, int64_t N, int64_t K,
                                       float* Wp) {
  const int64_t n = N * K;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / K, k = perm[idx % K];
    Wp[idx] = dead[k] ? 0.f : W[row * K + k];
  }
}

// ---- the quantizer of quant/quantizer.h, op for op

struct Params {
  float scale, zero;
};

__device__ __forceinline__ float quantize_code(float x, Params p, int maxq) {
  const float q = __fadd_rn(rintf(__fdiv_rn(x, p.scale)), p.zero);
  return fminf(fmaxf(q, 0.f), float(maxq));
}
__device__ __forceinline__ float dequantize_code(float q, Params p) { return __fmul_rn(p.scale, __fsub_rn(q, p.zero)); }

__device__ __forceinline__ Params grid_of_range(float xmin, float xmax, int maxq, bool sym) {
  Params p;
  p.scale = __fdiv_rn(__fsub_rn(xmax, xmin), float(maxq));
  p.zero = sym ? float(maxq + 1) / 2.f : rintf(__fdiv_rn(-xmin, p.scale));
  return p;
}

__device__ __forceinline__ float value_at(const float* x, const uint8_t* dead, int64_t i) {
  return dead && dead[i] ? 0.f : x[i];
}

// sum h[i] (x[i] - dq(q(x[i])))^2 in double, in column order (quantizer.cpp grid_error).
__device__ double grid_error(const float* x, const uint8_t* dead, const float* h, int64_t len, Params p, int maxq) {
  double e = 0;
  for (int64_t i = 0; i < len; ++i) {
    const float v = value_at(x, dead, i);
    const double d = __dsub_rn(double(v), double(dequantize_code(quantize_code(v, p, maxq), p)));
    e = __dadd_rn(e, __dmul_rn(__dmul_rn(double(h[i]), d), d));
  }
  return e;
}

// The grid of one row's group, computed by the whole warp; every lane returns the same Params.
// x, h: [len] (dead: [len] or null). quantizer.cpp find_params / find_params_mse.
__device__ __noinline__ Params warp_grid(const float* x, const uint8_t* dead, const float* h, int64_t len, GridArgs g) {
  const int lane = threadIdx.x % 32;
  float xmin = 0.f, xmax = 0.f;  // the grid always contains 0; ?: as std::min/std::max do
  for (int64_t i = lane; i < len; i += 32) {
    const float v = value_at(x, dead, i);
    xmin = v < xmin ? v : xmin;
    xmax = xmax < v ? v : xmax;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float a = __shfl_xor_sync(kFull, xmin, o), b = __shfl_xor_sync(kFull, xmax, o);
    xmin = a < xmin ? a : xmin;
    xmax = xmax < b ? b : xmax;
  }
  if (g.sym) {
    xmax = fabsf(xmin) < xmax ? xmax : fabsf(xmin);
    if (xmin < 0.f) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
  if (!g.mse) return grid_of_range(xmin, xmax, g.maxq, g.sym);

  // Shrink candidates c = 0..79 (p = 1 - c/100; c = 0 is min-max), whole candidates per lane.
  constexpr int kCandidates = int(0.8 * 100);
  auto candidate = [&](int c) {
    if (c == 0) return grid_of_range(xmin, xmax, g.maxq, g.sym);
    const float p = float(1.0 - double(c) / 100);
    return grid_of_range(__fmul_rn(p, xmin), __fmul_rn(p, xmax), g.maxq, g.sym);
  };
  double best = 0;
  int best_c = -1;
  for (int c = lane; c < kCandidates; c += 32) {
    const double e = grid_error(x, dead, h, len, candidate(c), g.maxq);
    if (best_c < 0 || e < best) {
      best = e;
      best_c = c;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const double e = __shfl_xor_sync(kFull, best, o);
    const int c = __shfl_xor_sync(kFull, best_c, o);
    // Lanes 16..31 of the last round hold no candidate (c < 0): never better.
    if (c >= 0 && (best_c < 0 || e < best || (e == best && c < best_c))) {
      best = e;
      best_c = c;
    }
  }
  return candidate(best_c);
}

__global__ void group_grids_kernel(const float* W, const uint8_t* dead, const float* h, int64_t N, int64_t K, int64_t G,
                                   int64_t n_groups, GridArgs grid, float* scales, int32_t* zeros) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (w >= N * n_groups) return;  // whole warps: w is warp-uniform
  const int64_t n = w / n_groups, g = w % n_groups, k0 = g * G, len = min(G, K - k0);
  const Params p = warp_grid(W + n * K + k0, dead ? dead + k0 : nullptr, h + k0, len, grid);
  if (threadIdx.x % 32 == 0) {
    scales[g * N + n] = p.scale;
    zeros[g * N + n] = int32_t(p.zero);
  }
}

// ---- the column loop

__global__ void __launch_bounds__(kWarpsPerCta * 32) column_block_kernel(ColumnBlockArgs a, int64_t i1, int cnt) {
  extern __shared__ float us[];  // [cnt][kSolverMaxBlock]: us[i][j] = U[i1 + i, i1 + j] for i <= j
  const int64_t K = a.K, N = a.N, G = a.G;
  for (int idx = threadIdx.x; idx < cnt * cnt; idx += blockDim.x) {
    const int i = idx / cnt, j = idx % cnt;
    if (i <= j) us[i * kSolverMaxBlock + j] = a.U[(i1 + i) * K + i1 + j];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (n >= N) return;  // after the barrier; n is warp-uniform

  const float* wrow = a.Wp + n * K;  // the block-start state of the row (grids read it)
  float w1[kSlots];                  // this lane's columns of the block, receiving the in-block feedback
#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    const int j = c * 32 + lane;
    w1[c] = j < cnt ? wrow[i1 + j] : 0.f;
  }
  // Grids of the groups starting in this block: they read the block-start values (wrow), not the
  // in-block feedback, so they are computed first and the loop reads them like precomputed ones.
  if (a.dynamic_groups) {
    for (int64_t col = i1 + (i1 % G ? G - i1 % G : 0); col < i1 + cnt; col += G) {
      const Params p = warp_grid(wrow + col, nullptr, a.hperm + col, min(G, K - col), a.grid);
      if (lane == 0) {
        const int32_t g = a.col_group[col];
        a.scales[g * N + n] = p.scale;
        a.zeros[g * N + n] = int32_t(p.zero);
      }
    }
    __syncwarp();
  }
  double loss = a.row_loss[n];
  Params p{};
  int32_t cur_g = -1;

#pragma unroll
  for (int c = 0; c < kSlots; ++c) {
    for (int t = 0; t < 32; ++t) {
      const int i = c * 32 + t;
      if (i >= cnt) break;
      const int64_t col = i1 + i;
      // col_group changes exactly where a group starts (quant::ColumnPlan), warp-uniformly.
      if (const int32_t g = a.col_group[col]; g != cur_g) {
        cur_g = g;
        p = {a.scales[g * N + n], float(a.zeros[g * N + n])};
      }
      const float w = __shfl_sync(kFull, w1[c], t);
      const float q = quantize_code(w, p, a.grid.maxq);
      const float dq = dequantize_code(q, p);
      const float d = us[i * kSolverMaxBlock + i];
      const float e = __fsub_rn(w, dq);
      loss = __dadd_rn(loss, __ddiv_rn(__dmul_rn(double(e), double(e)), __dmul_rn(double(d), double(d))));
      const float err = __fdiv_rn(e, d);
      if (lane == t) {
        const int64_t k = a.perm[col];
        a.codes[n * K + k] = uint8_t(q);
        if (a.Wq) a.Wq[n * K + k] = dq;
        a.err[n * kSolverMaxBlock + i] = err;
      }
#pragma unroll
      for (int c2 = c; c2 < kSlots; ++c2) {
        const int j = c2 * 32 + lane;
        if (j > i && j < cnt) w1[c2] = __fsub_rn(w1[c2], __fmul_rn(err, us[i * kSolverMaxBlock + j]));
      }
    }
  }
  if (lane == 0) a.row_loss[n] = loss;
}

}  // namespace

void hessian_absmax(const float* x, int64_t rows, int64_t K, int64_t ld, uint32_t* amax_bits, cudaStream_t s) {
  hessian_absmax_kernel<<<std::min(grid_stride_blocks(rows * K, 256), 1024u), 256, 0, s>>>(x, rows, K, ld, amax_bits);
  CUDA_CHECK_LAUNCH();
}

void hessian_split(const float* x, int64_t rows, int64_t K, int64_t ld, const uint32_t* amax_bits, void* split,
                   cudaStream_t s) {
  hessian_split_kernel<<<grid_stride_blocks(rows * K, 256), 256, 0, s>>>(x, rows, K, ld, amax_bits,
                                                                         static_cast<__half*>(split));
  CUDA_CHECK_LAUNCH();
}

void hessian_accumulate(double* sum, const float* prod, int64_t K, double alpha, double beta,
                        const uint32_t* amax_bits, cudaStream_t s) {
  const unsigned t = blocks_for(K, 32);
  hessian_accumulate_kernel<<<dim3(t, t), dim3(32, 8), 0, s>>>(sum, prod, K, alpha, beta, amax_bits);
  CUDA_CHECK_LAUNCH();
}

void hessian_round(const double* sum, int64_t K, float* H, cudaStream_t s) {
  hessian_round_kernel<<<grid_stride_blocks(K * K, 256), 256, 0, s>>>(sum, K, H);
  CUDA_CHECK_LAUNCH();
}

void row_dots(const float* a, const float* b, int64_t N, int64_t K, double* out, cudaStream_t s) {
  row_dots_kernel<<<blocks_for(N * 32, 256), 256, 0, s>>>(a, b, N, K, out);
  CUDA_CHECK_LAUNCH();
}

void gptq_dequant_diff(const float* W, const GptqPacked& p, int64_t N, int64_t K, float* D, cudaStream_t s) {
  dequant_diff_kernel<<<grid_stride_blocks(N * K, 256), 256, 0, s>>>(W, p, N, K, D);
  CUDA_CHECK_LAUNCH();
}

void gptq_factor_input(const float* H, const int32_t* perm, const float* diag, int64_t K, double damp, double* a,
                       cudaStream_t s) {
  factor_input_kernel<<<grid_stride_blocks(K * K, 256), 256, 0, s>>>(H, perm, diag, K, damp, a);
  CUDA_CHECK_LAUNCH();
}

void gptq_hinv_from_factor(const double* a, int64_t K, float* U, cudaStream_t s) {
  const unsigned t = blocks_for(K, 32);
  hinv_from_factor_kernel<<<dim3(t, t), dim3(32, 8), 0, s>>>(a, K, U);
  CUDA_CHECK_LAUNCH();
}

void gptq_permute_weights(const float* W, const int32_t* perm, const uint8_t* dead, int64_t N, int64_t K, float* Wp,
                          cudaStream_t s) {
  permute_weights_kernel<<<grid_stride_blocks(N * K, 256), 256, 0, s>>>(W, perm, dead, N, K, Wp);
  CUDA_CHECK_LAUNCH();
}

void gptq_group_grids(const float* W, const uint8_t* dead, const float* h, int64_t N, int64_t K, int64_t G,
                      int64_t n_groups, GridArgs grid, float* scales, int32_t* zeros, cudaStream_t s) {
  group_grids_kernel<<<blocks_for(N * n_groups * 32, 256), 256, 0, s>>>(W, dead, h, N, K, G, n_groups, grid, scales,
                                                                         zeros);
  CUDA_CHECK_LAUNCH();
}

void gptq_column_block(const ColumnBlockArgs& a, int64_t i1, int cnt, cudaStream_t s) {
  constexpr size_t kSmem = size_t(kSolverMaxBlock) * kSolverMaxBlock * sizeof(float);
  // 64 KiB of dynamic shared memory is above the default 48 (set per call: it is per device).
  CUDA_CHECK(cudaFuncSetAttribute(column_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
  const size_t smem = size_t(cnt) * kSolverMaxBlock * sizeof(float);
  column_block_kernel<<<blocks_for(a.N, kWarpsPerCta), kWarpsPerCta * 32, smem, s>>>(a, i1, cnt);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptq::cuda
