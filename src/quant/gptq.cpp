#include "quant/gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/thread_pool.h"
#include "gptq/error.h"
#include "backend/cpu/fixed_gemm.h"
#include "quant/gptq_plan.h"
#include "quant/quantizer.h"

namespace gptq::quant {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Computes U: [K, K] fp32 row-major, the upper Cholesky factor of (Hp + damp*I)^-1, where
// Hp = H[perm][:, perm] with `diag` replacing H's diagonal. Returns false when Hp + damp*I is not
// positive definite.
//
// With J the index reversal, J Hp J = L L^T (lower Cholesky) gives Hp = R R^T with the
// upper-triangular R = J L J, hence Hp^-1 = (R^-1)^T R^-1 and U = R^-1 = J L^-1 J.
// Both factorizations are the fixed-order ones (cpu/fixed_gemm.h), so U is the same bits for any
// pool size and CPU. a: [K*K] double scratch, row-major.
bool factor_hinv(ThreadPool& pool, const float* H, const float* diag, const std::vector<int64_t>& perm, int64_t K, double damp,
                 std::vector<double>& a, float* U) {
  // M = J Hp J: M[i][j] = Hp[K-1-i][K-1-j] = H[q[i]][q[j]], q[i] = perm[K-1-i] (lower triangle).
  pool.parallel_for(0, size_t(K), [&](size_t i0, size_t i1) {
    for (int64_t i = int64_t(i0); i < int64_t(i1); ++i) {
      const int64_t qi = perm[size_t(K - 1 - i)];
      const float* h = H + qi * K;
      double* ai = a.data() + i * K;
      for (int64_t j = 0; j < i; ++j) ai[j] = h[perm[size_t(K - 1 - j)]];
      ai[i] = double(diag[qi]) + damp;
    }
  });
  if (!cpu::cholesky_lower_fixed(&pool, K, a.data(), K)) return false;
  cpu::tri_lower_inverse_fixed(&pool, K, a.data(), K);
  // U[i][j] = Linv[K-1-i][K-1-j] for i <= j: row i of U is row K-1-i of Linv, reversed.
  pool.parallel_for(0, size_t(K), [&](size_t i0, size_t i1) {
    for (int64_t i = int64_t(i0); i < int64_t(i1); ++i) {
      const double* src = a.data() + (K - 1 - i) * K;
      float* u = U + i * K;
      std::fill(u, u + i, 0.f);
      for (int64_t j = i; j < K; ++j) u[j] = float(src[K - 1 - j]);
    }
  });
  return true;
}

}  // namespace

void check_spec(const QuantSpec& spec, int64_t K) {
  check_bits(spec.bits);
  if (K <= 0) fail("cannot quantize a layer with ", K, " input features");
  resolve_group_size(K, spec.group_size);
  if (!(spec.damp_percent >= 0.0) || spec.damp_percent >= 1.0)
    fail("damp_percent ", spec.damp_percent, " must be in [0, 1)");
  if (spec.block_size <= 0) fail("block_size ", spec.block_size, " must be positive");
  if (spec.max_damp_retries < 0) fail("max_damp_retries must be >= 0");
}

QuantResult gptq_quantize(ThreadPool& pool, const float* W, const float* H, int64_t N, int64_t K, const QuantSpec& spec) {
  check_spec(spec, K);
  if (N <= 0) fail("cannot quantize a layer with ", N, " output features");
  const int maxq = max_code(spec.bits);
  std::vector<float> h_diag(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) h_diag[size_t(k)] = H[k * K + k];
  const ColumnPlan plan = plan_columns(h_diag.data(), K, spec);
  const bool whole_row = plan.whole_row, static_groups = plan.static_groups;
  const int64_t G = plan.G;
  const std::vector<int64_t>& perm = plan.perm;
  const std::vector<uint8_t>& dead = plan.dead;

  QuantResult res = empty_result(N, K, spec);
  res.dead_columns = plan.dead_columns;
  res.g_idx = plan.g_idx;
  auto grid_of = [&](const float* x, const float* h, int64_t len) {
    return find_grid(spec.grid, x, h, len, maxq, spec.sym);
  };

  // The whole-row grid comes from W before dead columns are zeroed (fasterquant's first find_params).
  if (whole_row) {
    pool.parallel_for(0, size_t(N), [&](size_t n0, size_t n1) {
      for (int64_t n = int64_t(n0); n < int64_t(n1); ++n) {
        const GridParams p = grid_of(W + n * K, plan.hdiag.data(), K);
        res.scales[size_t(n)] = p.scale;
        res.zeros[size_t(n)] = int32_t(p.zero);
      }
    });
  }

  // Wp: [N, K] = W with dead columns zeroed, columns permuted (the solver's working copy).
  std::vector<float> Wp(static_cast<size_t>(N * K));
  pool.parallel_for(0, size_t(N), [&](size_t n0, size_t n1) {
    for (int64_t n = int64_t(n0); n < int64_t(n1); ++n)
      for (int64_t i = 0; i < K; ++i) {
        const int64_t k = perm[size_t(i)];
        Wp[size_t(n * K + i)] = dead[size_t(k)] ? 0.f : W[n * K + k];
      }
  });

  // Static groups: grids of the original column groups, from the dead-zeroed W.
  if (static_groups) {
    pool.parallel_for(0, size_t(N), [&](size_t n0, size_t n1) {
      std::vector<float> row(static_cast<size_t>(G));
      for (int64_t n = int64_t(n0); n < int64_t(n1); ++n)
        for (int64_t g = 0; g < res.n_groups; ++g) {
          const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
          for (int64_t k = k0; k < k1; ++k) row[size_t(k - k0)] = dead[size_t(k)] ? 0.f : W[n * K + k];
          const GridParams p = grid_of(row.data(), plan.hdiag.data() + k0, k1 - k0);
          res.scales[size_t(g * N + n)] = p.scale;
          res.zeros[size_t(g * N + n)] = int32_t(p.zero);
        }
    });
  }

  // Hinv: [K, K] upper Cholesky factor of (Hp + damp I)^-1, retrying with more damping.
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> U(static_cast<size_t>(K * K));
  {
    std::vector<double> a(static_cast<size_t>(K * K));
    factor_with_damping(
        spec, plan.mean_diag,
        [&](double damp) { return factor_hinv(pool, H, plan.diag.data(), perm, K, damp, a, U.data()); }, res);
  }
  res.seconds_factor = seconds_since(t0);

  // Column loop. Rows are independent given U, so each thread runs the whole blocked algorithm on
  // its own rows; the lazy update of the columns right of a block is one fixed-order gemm per
  // thread (each output's sum order does not depend on which rows a thread got).
  t0 = std::chrono::steady_clock::now();
  const int64_t B = spec.block_size;
  std::vector<double> row_loss(static_cast<size_t>(N), 0.0);  // summed in row order: reproducible
  pool.parallel_for(
      0, size_t(N),
      [&](size_t r0_, size_t r1_) {
        const int64_t r0 = int64_t(r0_), R = int64_t(r1_) - r0;
        std::vector<float> W1(static_cast<size_t>(R * B));    // [R, B] in-block copy receiving the eager updates
        std::vector<float> Err1(static_cast<size_t>(R * B));  // [R, B] scaled errors of the block
        std::vector<GridParams> cur(static_cast<size_t>(R));  // each row's grid of the current group
        for (int64_t i1 = 0; i1 < K; i1 += B) {
          const int64_t i2 = std::min(K, i1 + B), cnt = i2 - i1;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t n = r0 + r;
            double& loss = row_loss[size_t(n)];
            float* w1 = W1.data() + r * B;
            float* e1 = Err1.data() + r * B;
            const float* wrow = Wp.data() + n * K;  // block-start state of the row
            std::copy(wrow + i1, wrow + i2, w1);
            for (int64_t i = 0; i < cnt; ++i) {
              const int64_t col = i1 + i;
              GridParams p;
              const int64_t g = plan.col_group[size_t(col)];
              if (whole_row || static_groups) {
                p = {res.scales[size_t(g * N + n)], float(res.zeros[size_t(g * N + n)])};
              } else {
                if (col % G == 0) {
                  cur[size_t(r)] = grid_of(wrow + col, plan.hperm.data() + col, std::min(G, K - col));
                  res.scales[size_t(g * N + n)] = cur[size_t(r)].scale;
                  res.zeros[size_t(g * N + n)] = int32_t(cur[size_t(r)].zero);
                }
                p = cur[size_t(r)];
              }
              const float w = w1[i];
              const float q = quantize_code(w, p.scale, p.zero, maxq);
              const float dq = dequantize_code(q, p.scale, p.zero);
              const int64_t k = perm[size_t(col)];
              res.codes[size_t(n * K + k)] = uint8_t(q);
              res.Wq[size_t(n * K + k)] = dq;
              const float* u = U.data() + col * K;  // row `col` of Hinv
              const float d = u[col];
              loss += double(w - dq) * double(w - dq) / (double(d) * double(d));
              const float err = (w - dq) / d;
              for (int64_t j = i + 1; j < cnt; ++j) w1[j] -= err * u[i1 + j];
              e1[i] = err;
            }
          }
          // Wp[rows, i2:] -= Err1[rows, :cnt] * Hinv[i1:i2, i2:]
          if (i2 < K)
            cpu::gemm_nn_fixed(nullptr, R, K - i2, cnt, -1.f, Err1.data(), B, U.data() + i1 * K + i2, K, 1.f,
                               Wp.data() + r0 * K + i2, K);
        }
      },
      16);
  for (double l : row_loss) res.loss += l / 2;
  res.row_loss = std::move(row_loss);
  res.seconds_solve = seconds_since(t0);
  return res;
}

QuantResult slice_rows(const QuantResult& r, int64_t r0, int64_t n) {
  GPTQ_ASSERT(r0 >= 0 && n > 0 && r0 + n <= r.N, "rows ", r0, "..", r0 + n, " of a ", r.N, "-row result");
  // The statistics and g_idx as they are; the per-row arrays (not copied whole) from the rows.
  QuantResult s;
  s.N = n;
  s.K = r.K;
  s.bits = r.bits;
  s.group_size = r.group_size;
  s.n_groups = r.n_groups;
  s.g_idx = r.g_idx;
  s.damp = r.damp;
  s.damp_percent = r.damp_percent;
  s.damp_retries = r.damp_retries;
  s.dead_columns = r.dead_columns;
  s.seconds_factor = r.seconds_factor;
  s.seconds_solve = r.seconds_solve;
  const int64_t K = r.K;
  s.codes.assign(r.codes.begin() + r0 * K, r.codes.begin() + (r0 + n) * K);
  if (!r.Wq.empty()) s.Wq.assign(r.Wq.begin() + r0 * K, r.Wq.begin() + (r0 + n) * K);
  s.scales.resize(size_t(r.n_groups * n));
  s.zeros.resize(size_t(r.n_groups * n));
  for (int64_t g = 0; g < r.n_groups; ++g) {
    std::copy_n(r.scales.begin() + g * r.N + r0, n, s.scales.begin() + g * n);
    std::copy_n(r.zeros.begin() + g * r.N + r0, n, s.zeros.begin() + g * n);
  }
  if (!r.row_loss.empty()) {
    s.row_loss.assign(r.row_loss.begin() + r0, r.row_loss.begin() + r0 + n);
    for (double l : s.row_loss) s.loss += l / 2;  // in row order, as the solvers sum
  }
  return s;
}

QuantResult rtn_quantize(ThreadPool& pool, const float* W, int64_t N, int64_t K, const QuantSpec& spec) {
  check_spec(spec, K);
  if (N <= 0) fail("cannot quantize a layer with ", N, " output features");
  const int maxq = max_code(spec.bits);
  const int64_t G = resolve_group_size(K, spec.group_size);
  QuantResult res = empty_result(N, K, spec);
  for (int64_t k = 0; k < K; ++k) res.g_idx[size_t(k)] = int32_t(k / G);
  pool.parallel_for(0, size_t(N), [&](size_t n0, size_t n1) {
    for (int64_t n = int64_t(n0); n < int64_t(n1); ++n)
      for (int64_t g = 0; g < res.n_groups; ++g) {
        const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
        const GridParams p = find_grid(spec.grid, W + n * K + k0, nullptr, k1 - k0, maxq, spec.sym);
        res.scales[size_t(g * N + n)] = p.scale;
        res.zeros[size_t(g * N + n)] = int32_t(p.zero);
        for (int64_t k = k0; k < k1; ++k) {
          const float q = quantize_code(W[n * K + k], p.scale, p.zero, maxq);
          res.codes[size_t(n * K + k)] = uint8_t(q);
          res.Wq[size_t(n * K + k)] = dequantize_code(q, p.scale, p.zero);
        }
      }
  });
  return res;
}

PackedQuant pack_result(const QuantResult& r, QuantFormat format, const float* bias, ThreadPool* pool) {
  return pack_quantized(r.codes.data(), r.scales.data(), r.zeros.data(), r.g_idx.data(), bias, r.bits,
                        r.group_size, r.K, r.N, format, pool);
}

}  // namespace gptq::quant
