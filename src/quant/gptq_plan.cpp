#include "quant/gptq_plan.h"

#include <algorithm>
#include <numeric>

#include "gptq/error.h"

namespace gptq::quant {

ColumnPlan plan_columns(const float* H_diag, int64_t K, const QuantSpec& spec) {
  ColumnPlan p;
  p.whole_row = spec.group_size == -1;
  p.G = resolve_group_size(K, spec.group_size);
  p.static_groups = spec.static_groups && !p.whole_row;
  const int64_t G = p.G;

  // Dead inputs: never seen non-zero in calibration, so nothing constrains them.
  p.diag.assign(H_diag, H_diag + K);
  p.hdiag = p.diag;
  p.dead.assign(size_t(K), 0);
  for (int64_t k = 0; k < K; ++k)
    if (p.diag[size_t(k)] == 0.f) {
      p.dead[size_t(k)] = 1;
      p.diag[size_t(k)] = 1.f;
      ++p.dead_columns;
    }
  for (float d : p.diag) p.mean_diag += d;
  p.mean_diag /= double(K);

  std::vector<int64_t>& perm = p.perm;
  perm.resize(size_t(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  auto by_diag = [&](int64_t a, int64_t b) { return p.diag[size_t(a)] > p.diag[size_t(b)]; };
  const bool group_order = spec.group_order && !spec.desc_act;
  if (spec.desc_act || (group_order && p.whole_row)) {
    std::stable_sort(perm.begin(), perm.end(), by_diag);
  } else if (group_order) {
    // Full groups by decreasing Hessian mass (the partial last one stays last), then each group's
    // columns by decreasing diagonal, in place.
    const int64_t full = K / G;
    std::vector<double> mass(static_cast<size_t>(full), 0.0);
    for (int64_t k = 0; k < full * G; ++k) mass[size_t(k / G)] += p.diag[size_t(k)];
    std::vector<int64_t> order(static_cast<size_t>(full));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return mass[size_t(a)] > mass[size_t(b)]; });
    for (int64_t j = 0; j < full; ++j) {
      auto first = perm.begin() + j * G;
      std::iota(first, first + G, order[size_t(j)] * G);
      std::stable_sort(first, first + G, by_diag);
    }
    std::stable_sort(perm.begin() + full * G, perm.end(), by_diag);
  }

  p.hperm.resize(size_t(K));
  for (int64_t i = 0; i < K; ++i) p.hperm[size_t(i)] = p.hdiag[size_t(perm[size_t(i)])];

  p.g_idx.resize(size_t(K));
  for (int64_t k = 0; k < K; ++k) p.g_idx[size_t(k)] = p.whole_row ? 0 : int32_t(k / G);
  if (spec.desc_act && !p.static_groups && !p.whole_row)
    for (int64_t i = 0; i < K; ++i) p.g_idx[size_t(perm[size_t(i)])] = int32_t(i / G);

  // group_order keeps every group contiguous in the solver's order, so perm[i] / G is the same
  // original group for all of a group's columns, its first included.
  p.col_group.resize(size_t(K));
  for (int64_t i = 0; i < K; ++i)
    p.col_group[size_t(i)] =
        p.whole_row ? 0 : int32_t(p.static_groups || group_order ? perm[size_t(i)] / G : i / G);
  return p;
}

void factor_with_damping(const QuantSpec& spec, double mean_diag, const std::function<bool(double)>& factor,
                         QuantResult& res) {
  double pct = spec.damp_percent;
  for (int attempt = 0;; ++attempt) {
    const double damp = pct * mean_diag;
    if (factor(damp)) {
      res.damp = damp;
      res.damp_percent = pct;
      res.damp_retries = attempt;
      return;
    }
    if (attempt == spec.max_damp_retries)
      fail("the Hessian is not positive definite even with damp_percent ", pct, " (", attempt,
           " retries); the calibration data may be too small or degenerate for this layer");
    pct = pct > 0 ? pct * 10.0 : 0.01;  // damp_percent 0 still deserves a retry
  }
}

QuantResult empty_result(int64_t N, int64_t K, const QuantSpec& spec, bool with_wq) {
  QuantResult res;
  res.N = N;
  res.K = K;
  res.bits = spec.bits;
  res.group_size = spec.group_size;
  res.n_groups = num_groups(K, spec.group_size);
  res.codes.resize(size_t(N * K));
  if (with_wq) res.Wq.resize(size_t(N * K));
  res.scales.resize(size_t(res.n_groups * N));
  res.zeros.resize(size_t(res.n_groups * N));
  res.g_idx.resize(static_cast<size_t>(K));
  return res;
}

}  // namespace gptq::quant
