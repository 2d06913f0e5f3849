// The host-side decisions of the GPTQ solver, shared by the CPU solver (quant/gptq.cpp) and the
// CUDA one (quant/cuda/gptq_solver.cpp) so that both follow gptq.h's faithfulness notes from one
// definition: what diag(H) and the spec alone decide (dead inputs, the column order, g_idx, which
// grid each column uses), the damping retries, and the result's sizes.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "quant/gptq.h"

namespace gptq::quant {

struct ColumnPlan {
  std::vector<float> diag;       // [K] diag(H) with 1 on dead inputs (what the factorization sees)
  std::vector<float> hdiag;      // [K] diag(H) as accumulated, 0 on dead inputs (Grid::kMse's weights)
  std::vector<uint8_t> dead;     // [K] 1 where H[k,k] == 0
  std::vector<int64_t> perm;     // [K] the solver's column i is original column perm[i]
  std::vector<float> hperm;      // [K] hdiag[perm[i]]: the weights of groups formed in the solver's order
  std::vector<int32_t> g_idx;    // [K] the checkpoint's group of each original column
  // [K] the grid (row of scales/zeros) the solver's column i uses: 0 for one group per row, the
  // original column's group with static groups or group_order, else i / G (act-order groups are
  // formed in the solver's order). Without static groups a grid is computed at each column where
  // i % G == 0 (group_starts_in_order).
  std::vector<int32_t> col_group;
  int64_t dead_columns = 0;
  double mean_diag = 0;          // mean(diag): damp = damp_percent * mean_diag
  int64_t G = 0;                 // resolved group size (K for -1)
  bool whole_row = false;        // group_size -1: grids from whole rows, before the dead zeroing
  bool static_groups = false;    // grids of original groups before the loop (static, not whole-row)
};

// hdiag: [K] diag(H). spec must have passed check_spec(spec, K).
ColumnPlan plan_columns(const float* hdiag, int64_t K, const QuantSpec& spec);

// Runs factor(damp) with damp = pct * mean_diag for pct = spec.damp_percent, then x10 per retry
// (0 becomes 0.01), until it returns true; records damp, damp_percent and damp_retries in res.
// Throws gptq::Error when it still fails after spec.max_damp_retries retries.
void factor_with_damping(const QuantSpec& spec, double mean_diag, const std::function<bool(double damp)>& factor,
                         QuantResult& res);

// A result of the right sizes for an N x K layer (codes, Wq, scales, zeros, g_idx allocated; Wq
// left empty when with_wq is false).
QuantResult empty_result(int64_t N, int64_t K, const QuantSpec& spec, bool with_wq = true);

}  // namespace gptq::quant
