// The GPTQ solver (Frantar et al. 2022) as IST-DASLab/gptq GPTQ.fasterquant implements it, with
// AutoGPTQ/GPTQModel's act-order + static-groups variant and g_idx output. And round-to-nearest.
// The CUDA solver (quant/cuda/gptq_solver.h, through quant::Solver in solver.h) follows the same notes
// from the same host-side plan (quant/gptq_plan.h).
//
// Faithfulness notes (each is what the reference does, kept so results match it):
//  - With group_size == -1 the grid comes from the whole row of W *before* dead columns are zeroed.
//  - Dead inputs (H[i,i] == 0) get H[i,i] = 1 and W[:,i] = 0.
//  - Act-order permutes columns by diag(H) descending (ties: lower index first; torch leaves tie
//    order unspecified).
//  - damp = damp_percent * mean(diag(H)), added to the diagonal; Hinv = upper Cholesky factor of
//    H^-1. We compute it as the inverse of the "upper-lower" Cholesky factor of H (H = R R^T,
//    Hinv = R^-1), in double: mathematically the same matrix in half the flops of
//    cholesky -> cholesky_inverse -> cholesky, and without forming H^-1.
//  - Group parameters (without static groups) are computed at each group start from the W
//    columns as they stand at the start of the current block of block_size columns: they include
//    the lazy updates of earlier blocks but not the in-block error feedback (fasterquant reads W,
//    not its in-block copy W1).
//  - Static groups: one grid per group of *original* columns, computed before the loop (after dead
//    zeroing); act-order then visits columns in permuted order, each using its original group.
//  - Grid::kMse (not the reference's default) replaces each of those min-max grids by the best
//    shrink of it under the group's Hessian-diagonal-weighted error (quantizer.h), computed at the
//    same point from the same values; the weights are diag(H) as accumulated (0 for dead inputs).
//  - group_order (ours, not in the reference): the non-act-order layout (g_idx[k] = k / G, every
//    group G consecutive input channels) quantized in a better order: groups by decreasing
//    Hessian mass sum(diag(H)) over the group, the columns inside a group by decreasing diag(H).
//    Each group stays contiguous in the solver's order, so its grid is still computed at its
//    first column; a partial last group (K % G != 0) stays last so that groups start at multiples
//    of G. With group_size -1 (one group) it orders the columns as act-order does.
//  - When the Cholesky fails (H + damp*I not positive definite) the damping is multiplied by 10
//    and the factorization retried, up to max_damp_retries times; the result reports it.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "io/gptq_format.h"
#include "quant/quantizer.h"

namespace gptq::quant {

struct QuantSpec {
  int bits = 4;              // 2, 3, 4, 8
  int group_size = 128;      // -1: one group per row
  bool sym = true;           // symmetric grid (zero = 2^(bits-1))
  bool desc_act = false;     // act-order
  bool static_groups = false;
  bool group_order = false;  // act-order inside groups and between them, keeping g_idx = k / G (no desc_act)
  Grid grid = Grid::kMinMax; // how each group's scale and zero are chosen (quantizer.h)
  double damp_percent = 0.01;
  int block_size = 128;      // lazy-update block width (does not change the result)
  int max_damp_retries = 4;  // damping x10 per retry
};

struct QuantResult {
  int64_t N = 0, K = 0;
  int bits = 4, group_size = 128;
  int64_t n_groups = 0;
  std::vector<uint8_t> codes;   // [N, K] in the original column order
  std::vector<float> scales;    // [n_groups, N]
  std::vector<int32_t> zeros;   // [n_groups, N], in [0, 2^bits-1]
  std::vector<int32_t> g_idx;   // [K]
  std::vector<float> Wq;        // [N, K] quantized-dequantized W (fp32 scales)
  // Solver statistics (GPTQ only).
  double damp = 0;              // absolute value added to diag(H) in the successful factorization
  double damp_percent = 0;      // relative damping that succeeded (spec.damp_percent * 10^retries)
  int damp_retries = 0;
  int64_t dead_columns = 0;
  double loss = 0;              // sum (w - q)^2 / Hinv[i,i]^2 / 2, fasterquant's "error"
  std::vector<double> row_loss; // [N] each row's sum (w - q)^2 / Hinv[i,i]^2; loss = sum of row_loss / 2 in row order
  double seconds_factor = 0;    // Cholesky + triangular inverse
  double seconds_solve = 0;     // column loop
};

// W: [N, K] fp32 row-major (N outputs, K inputs). H: [K, K] from HessianAccumulator (not modified).
// Throws gptq::Error for bad specs or when H stays non positive definite after the retries.
QuantResult gptq_quantize(ThreadPool& pool, const float* W, const float* H, int64_t N, int64_t K, const QuantSpec& spec);

// Round-to-nearest on the same grid (per row, per group of group_size columns), no error feedback.
// Grid::kMse weighs every column alike (there is no Hessian).
QuantResult rtn_quantize(ThreadPool& pool, const float* W, int64_t N, int64_t K, const QuantSpec& spec);

// Rows [r0, r0 + n) of a result (codes, Wq, scales, zeros, row losses and their loss; g_idx and
// the solver's statistics as they are). The parts of one stage share a Hessian (q, k, v; gate, up)
// and GPTQ's rows are independent given it, so they are solved stacked, as one [sum N, K] problem,
// and split here: on the CPU each part gets exactly what its own solve gives it, bit for bit.
QuantResult slice_rows(const QuantResult& r, int64_t r0, int64_t n);

// Packs a result for the checkpoint writer. bias: [N] fp32 or nullptr. pool: packed in parallel
// on it (the same bytes).
PackedQuant pack_result(const QuantResult& r, QuantFormat format, const float* bias = nullptr, ThreadPool* pool = nullptr);

// Throws gptq::Error when spec cannot be applied to a K-input layer.
void check_spec(const QuantSpec& spec, int64_t K);

}  // namespace gptq::quant
