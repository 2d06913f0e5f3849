// Launchers of the GPTQ solver's and the Hessian's kernels (gptq_solver.cu). All asynchronous on
// `s`; pointers are device memory; matrices row-major unless said. The host side that sequences
// them (and the cuSOLVER/cuBLAS calls between) is quant/cuda/gptq_solver.cpp; the semantics are quant/gptq.h's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gptq::cuda {

// The widest lazy block the column kernel takes: 4 columns per lane of a warp.
constexpr int kSolverMaxBlock = 128;

// ---- Hessian
// The split-fp16 product (cuda_hessian.h): x scaled by c = 2^e, e from max|x| so that |c x| < 2^15
// (fp16's range), then c x = hi + lo / 2048 with hi = fp16(c x), lo = fp16((c x - hi) * 2048).
// *amax_bits: the bits of max |x| (a non-negative float), atomically maxed in; zero it first.
// x: [rows, K] fp32 with row stride ld.
void hessian_absmax(const float* x, int64_t rows, int64_t K, int64_t ld, uint32_t* amax_bits, cudaStream_t s);
// split: [2 rows, K] fp16 = [hi; lo]. Reads *amax_bits (hessian_absmax).
void hessian_split(const float* x, int64_t rows, int64_t K, int64_t ld, const uint32_t* amax_bits, void* split,
                   cudaStream_t s);
// sum[i, j] = beta * sum[i, j] + alpha * (prod[i, j] + prod[j, i]) / (2 c^2) for i <= j (the upper
// triangle; the rest of sum is never read), c the scale of hessian_split from *amax_bits (1 when
// null). sum: [K, K] fp64, prod: [K, K] fp32 (all of it read).
void hessian_accumulate(double* sum, const float* prod, int64_t K, double alpha, double beta,
                        const uint32_t* amax_bits, cudaStream_t s);
// H[i, j] = H[j, i] = float(sum[min(i,j), max(i,j)]): the symmetric fp32 Hessian.
void hessian_round(const double* sum, int64_t K, float* H, cudaStream_t s);

// out[n] = sum_k a[n, k] * b[n, k] in double, in a fixed order (a warp per row). a, b: [N, K].
void row_dots(const float* a, const float* b, int64_t N, int64_t K, double* out, cudaStream_t s);

// ---- the modules' errors
// A packed checkpoint matrix (io/gptq_format.h) in device memory.
struct GptqPacked {
  const int32_t* qweight = nullptr;  // [K*bits/32, N]
  const int32_t* qzeros = nullptr;   // [n_groups, N*bits/32]
  const uint16_t* scales = nullptr;  // fp16 [n_groups, N]
  const int32_t* g_idx = nullptr;    // [K], or null for k / G
  int bits = 4;
  int64_t G = 128;                   // resolved group size
  bool v1 = true;                    // QuantFormat::kGptqV1: qzeros hold zero-1 (read back as stored+1)
};
// D[n, k] = W[n, k] - s * (q - z), s = scales[g, n] (fp16 → fp32), q, z the code and the zero as
// quant::dequantize reads them, g = g_idx[k]: the reference's roundings (no contraction). W, D: [N, K].
void gptq_dequant_diff(const float* W, const GptqPacked& p, int64_t N, int64_t K, float* D, cudaStream_t s);

// ---- factorization input and output
// a (column-major [K, K] fp64) = J Hp J + damp I with Hp = H[perm][:, perm] and `diag` replacing
// its diagonal: a(r, c) = H[q_r, q_c], q_r = perm[K-1-r], read from H's upper triangle.
void gptq_factor_input(const float* H, const int32_t* perm, const float* diag, int64_t K, double damp, double* a,
                       cudaStream_t s);
// U[i, j] = float(a(K-1-i, K-1-j)) for i <= j, 0 below: the upper Cholesky factor of
// (Hp + damp I)^-1 from the inverted lower factor L^-1 held in a (column-major).
void gptq_hinv_from_factor(const double* a, int64_t K, float* U, cudaStream_t s);

// ---- weights and grids
// Wp[n, i] = dead[perm[i]] ? 0 : W[n, perm[i]]
void gptq_permute_weights(const float* W, const int32_t* perm, const uint8_t* dead, int64_t N, int64_t K, float* Wp,
                          cudaStream_t s);

struct GridArgs {
  int maxq = 15;
  bool sym = true;
  bool mse = false;  // quant::Grid::kMse (the Hessian-weighted shrink search) instead of min-max
};
// Grids before the column loop, one warp per (row n, group g): the values W[n, g*G .. g*G+len)
// (dead columns read as 0 when dead is not null), weights h[g*G ..]; scales/zeros [n_groups, N].
// Whole-row grids: G = K, n_groups = 1, dead = null.
void gptq_group_grids(const float* W, const uint8_t* dead, const float* h, int64_t N, int64_t K, int64_t G,
                      int64_t n_groups, GridArgs grid, float* scales, int32_t* zeros, cudaStream_t s);

// One lazy block of the column loop: columns [i1, i1 + cnt) of every row, cnt <= kSolverMaxBlock.
struct ColumnBlockArgs {
  int64_t N = 0, K = 0, G = 0;
  GridArgs grid;
  // Grids computed here for the groups starting in the block (from Wp, weights hperm), or only
  // read from scales/zeros (whole-row and static groups: gptq_group_grids before the loop).
  bool dynamic_groups = true;
  const int32_t* perm = nullptr;       // [K] solver column → original column
  const int32_t* col_group = nullptr;  // [K] quant::ColumnPlan::col_group
  const float* hperm = nullptr;        // [K] diag(H) in the solver's order (the mse weights of dynamic groups)
  const float* U = nullptr;            // [K, K] upper Cholesky factor of Hinv
  float* Wp = nullptr;                 // [N, K] the working weights: read here, lazily updated by the caller
  float* err = nullptr;                // [N, kSolverMaxBlock] out: the block's scaled errors
  float* scales = nullptr;             // [n_groups, N] written (dynamic_groups) or read
  int32_t* zeros = nullptr;            // [n_groups, N]
  uint8_t* codes = nullptr;            // [N, K] out, original column order
  float* Wq = nullptr;                 // [N, K] out, original column order (not written when null)
  double* row_loss = nullptr;          // [N] running sum of (w - q)^2 / d^2 per row, column order
};
void gptq_column_block(const ColumnBlockArgs& a, int64_t i1, int cnt, cudaStream_t s);

}  // namespace gptq::cuda
