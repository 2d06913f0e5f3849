#include "quant/refit.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/fixed_gemm.h"
#include "core/half.h"
#include "gptq/error.h"

namespace gptq::quant {

Refit parse_refit(const std::string& s) {
  if (s == "none") return Refit::kNone;
  if (s == "hessian") return Refit::kHessian;
  fail("--refit must be none or hessian, got \"", s, "\"");
}

const char* refit_name(Refit r) { return r == Refit::kHessian ? "hessian" : "none"; }

namespace {

// Solves M x = b in place (b becomes x) for the symmetric positive semidefinite M: [n, n] by
// Cholesky in double. Groups with M[g,g] == 0 (every code at the zero, or dead inputs) keep x = 0.
// Returns false when M is not positive definite on the remaining groups.
bool solve_spd(std::vector<double>& M, std::vector<double>& b, int64_t n) {
  double top = 0;
  for (int64_t g = 0; g < n; ++g) top = std::max(top, M[size_t(g * n + g)]);
  if (!(top > 0)) return false;
  for (int64_t g = 0; g < n; ++g)
    if (!(M[size_t(g * n + g)] > 1e-12 * top)) {  // pin x_g = 0
      for (int64_t j = 0; j < n; ++j) M[size_t(g * n + j)] = M[size_t(j * n + g)] = 0;
      M[size_t(g * n + g)] = 1, b[size_t(g)] = 0;
    }
  for (int64_t j = 0; j < n; ++j) {  // M = L L^T, L in the lower triangle
    double d = M[size_t(j * n + j)];
    for (int64_t k = 0; k < j; ++k) d -= M[size_t(j * n + k)] * M[size_t(j * n + k)];
    if (!(d > 0)) return false;
    const double l = std::sqrt(d);
    M[size_t(j * n + j)] = l;
    for (int64_t i = j + 1; i < n; ++i) {
      double s = M[size_t(i * n + j)];
      for (int64_t k = 0; k < j; ++k) s -= M[size_t(i * n + k)] * M[size_t(j * n + k)];
      M[size_t(i * n + j)] = s / l;
    }
  }
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    double s = b[size_t(i)];
    for (int64_t k = 0; k < i; ++k) s -= M[size_t(i * n + k)] * b[size_t(k)];
    b[size_t(i)] = s / M[size_t(i * n + i)];
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[size_t(i)];
    for (int64_t k = i + 1; k < n; ++k) s -= M[size_t(k * n + i)] * b[size_t(k)];
    b[size_t(i)] = s / M[size_t(i * n + i)];
  }
  return true;
}

float to_fp16_value(double s) { return fp16_to_fp32(fp32_to_fp16(float(s))); }

}  // namespace

RefitStats refit_scales(ThreadPool& pool, const float* W, const float* H, int64_t N, int64_t K, QuantResult& r) {
  GPTQ_ASSERT(r.N == N && r.K == K, "a result of another layer");
  const int64_t ng = r.n_groups;
  // The input columns of each group (act-order scatters them).
  std::vector<std::vector<int64_t>> cols(static_cast<size_t>(ng));
  for (int64_t k = 0; k < K; ++k) cols[size_t(r.g_idx[size_t(k)])].push_back(k);
  size_t widest = 0;
  for (const auto& c : cols) widest = std::max(widest, c.size());

  std::vector<double> before(static_cast<size_t>(N), 0.0), after(static_cast<size_t>(N), 0.0);
  std::vector<uint8_t> changed(static_cast<size_t>(N), 0);
  pool.parallel_for(
      0, size_t(N),
      [&](size_t r0_, size_t r1_) {
        const int64_t r0 = int64_t(r0_), R = int64_t(r1_) - r0;
        std::vector<float> C(static_cast<size_t>(R * K)), D(static_cast<size_t>(R * K));  // [R, K]
        std::vector<float> T(static_cast<size_t>(R * K));  // [R, K]
        std::vector<float> Ch(static_cast<size_t>(R) * widest), Hh(widest * size_t(K));  // one group's C columns, H rows
        for (int64_t i = 0; i < R; ++i) {
          const int64_t n = r0 + i;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t g = r.g_idx[size_t(k)];
            C[size_t(i * K + k)] = float(r.codes[size_t(n * K + k)]) - float(r.zeros[size_t(g * N + n)]);
            D[size_t(i * K + k)] = W[n * K + k] - r.Wq[size_t(n * K + k)];
          }
        }
        // M[i][g][g'] = c_g^T H[g, g'] c_g' and b[i][g] = c_g^T (H d)_g, d = w - q (the step from
        // the current scales: the new ones are s + x with M x = b).
        std::vector<double> M(static_cast<size_t>(R * ng * ng), 0.0), b(static_cast<size_t>(R * ng), 0.0);
        cpu::gemm_nn_fixed(nullptr, R, K, K, 1.f, D.data(), K, H, K, 0.f, T.data(), K);  // T = D H
        for (int64_t i = 0; i < R; ++i)
          for (int64_t k = 0; k < K; ++k) {
            b[size_t(i * ng + r.g_idx[size_t(k)])] += double(C[size_t(i * K + k)]) * T[size_t(i * K + k)];
            before[size_t(r0 + i)] += double(D[size_t(i * K + k)]) * T[size_t(i * K + k)];
          }
        for (int64_t h = 0; h < ng; ++h) {  // T = C[:, group h] H[group h, :]
          const std::vector<int64_t>& ch = cols[size_t(h)];
          const int64_t len = int64_t(ch.size());
          if (len == 0) continue;
          for (int64_t j = 0; j < len; ++j) {
            std::copy(H + ch[size_t(j)] * K, H + (ch[size_t(j)] + 1) * K, Hh.data() + j * K);
            for (int64_t i = 0; i < R; ++i) Ch[size_t(i * len + j)] = C[size_t(i * K + ch[size_t(j)])];
          }
          cpu::gemm_nn_fixed(nullptr, R, K, len, 1.f, Ch.data(), len, Hh.data(), K, 0.f, T.data(), K);
          for (int64_t i = 0; i < R; ++i)
            for (int64_t k = 0; k < K; ++k)
              M[size_t((i * ng + r.g_idx[size_t(k)]) * ng + h)] += double(C[size_t(i * K + k)]) * T[size_t(i * K + k)];
        }
        std::vector<double> Mi(static_cast<size_t>(ng * ng)), x(static_cast<size_t>(ng)), step(static_cast<size_t>(ng));
        std::vector<float> s_new(static_cast<size_t>(ng));
        for (int64_t i = 0; i < R; ++i) {
          const int64_t n = r0 + i;
          after[size_t(n)] = before[size_t(n)];
          const double* Mr = M.data() + i * ng * ng;
          const double* br = b.data() + i * ng;
          // Symmetrize: the fp32 gemms leave M[g][h] and M[h][g] a few ulps apart.
          for (int64_t g = 0; g < ng; ++g)
            for (int64_t h = 0; h < ng; ++h)
              Mi[size_t(g * ng + h)] = 0.5 * (Mr[g * ng + h] + Mr[h * ng + g]);
          std::copy(br, br + ng, x.begin());
          if (!solve_spd(Mi, x, ng)) continue;
          for (int64_t g = 0; g < ng; ++g) {
            const float s_old = r.scales[size_t(g * N + n)];
            const float s = to_fp16_value(double(s_old) + x[size_t(g)]);
            // A pinned group (x = 0) keeps its scale as it was, not rounded to fp16.
            s_new[size_t(g)] = x[size_t(g)] != 0 && std::isfinite(s) && s > 0.f ? s : s_old;
            step[size_t(g)] = double(s_new[size_t(g)]) - double(s_old);
          }
          // e(s + x) - e(s) = x^T M x - 2 x^T b, from the unsymmetrized M (the same value).
          double delta = 0;
          for (int64_t g = 0; g < ng; ++g) {
            double mx = 0;
            for (int64_t h = 0; h < ng; ++h) mx += Mr[g * ng + h] * step[size_t(h)];
            delta += step[size_t(g)] * (mx - 2 * br[g]);
          }
          if (!(delta < 0)) continue;
          after[size_t(n)] = before[size_t(n)] + delta;
          changed[size_t(n)] = 1;
          for (int64_t g = 0; g < ng; ++g) r.scales[size_t(g * N + n)] = s_new[size_t(g)];
          for (int64_t k = 0; k < K; ++k) {
            const int64_t g = r.g_idx[size_t(k)];
            r.Wq[size_t(n * K + k)] =
                dequantize_code(float(r.codes[size_t(n * K + k)]), r.scales[size_t(g * N + n)], float(r.zeros[size_t(g * N + n)]));
          }
        }
      },
      16);
  RefitStats st;
  for (int64_t n = 0; n < N; ++n) {
    st.error_before += before[size_t(n)];
    st.error_after += after[size_t(n)];
    st.rows_changed += changed[size_t(n)];
  }
  return st;
}

}  // namespace gptq::quant
