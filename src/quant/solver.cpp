#include "quant/solver.h"

#include <algorithm>

#include "backend/cpu/fixed_gemm.h"
#include "gptq/error.h"
#include "io/gptq_format.h"

namespace gptq::quant {

#if defined(GPTQ_WITH_CUDA)
std::unique_ptr<Solver> make_cuda_solver(ThreadPool& pool, Refit refit);  // quant/cuda/cuda_solver.cpp
#endif

namespace {

// From the host copy of H (HessianAccumulator::host()): the CPU backend's accumulators keep it there.
class HostSolver final : public Solver {
 public:
  using Solver::Solver;

  QuantResult solve_gptq(const float* W, HessianAccumulator& H, int64_t N, int64_t K, const QuantSpec& spec,
                         bool) override {
    return gptq_quantize(pool_, W, hessian(H, K).data(), N, K, spec);
  }

  double module_error(const float* W, const QuantMatrix& q, HessianAccumulator& H) override {
    const int64_t N = q.N, K = q.K;
    const std::vector<float> Q = dequantize(q, &pool_);
    std::vector<float> D(Q.size());
    pool_.parallel_for(0, D.size(), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) D[i] = W[i] - Q[i];
    }, 4096);
    const double den = hessian_norm(W, H, N, K);
    return den > 0 ? hessian_norm(D.data(), H, N, K) / den : 0;
  }

 private:
  // sum_i (A H Aᵀ)_ii for A: [N, K], from H's lower block triangle: H is symmetric, so with
  // column blocks b of kBlock inputs the sum is sum_b a_b·(H_bb a_bᵀ) + 2 sum_b a_b·(H[>b, b]ᵀ a_>bᵀ):
  // per block one fixed-order fp32 GEMM of A's columns past it and one of its diagonal block,
  // N·K²/2 multiply-adds in all instead of the full product's N·K². The products are summed in
  // double in a fixed order (block, row, column): the same value for any pool size and CPU.
  double hessian_norm(const float* A, HessianAccumulator& H, int64_t N, int64_t K) {
    constexpr int64_t kBlock = 256;
    const float* h = hessian(H, K).data();
    std::vector<float> C(size_t(N * std::min(K, kBlock)));
    double diag = 0, off = 0;
    for (int64_t j0 = 0; j0 < K; j0 += kBlock) {
      const int64_t j1 = std::min(K, j0 + kBlock), bw = j1 - j0;
      auto add = [&](double& s) {
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < bw; ++j) s += double(C[size_t(n * bw + j)]) * A[n * K + j0 + j];
      };
      // C = A[:, b] · H[b, b]
      cpu::gemm_nn_fixed(&pool_, N, bw, bw, 1.f, A + j0, K, h + j0 * K + j0, K, 0.f, C.data(), bw);
      add(diag);
      if (j1 == K) continue;
      // C = A[:, j1:] · H[j1:, b]
      cpu::gemm_nn_fixed(&pool_, N, bw, K - j1, 1.f, A + j1, K, h + j1 * K + j0, K, 0.f, C.data(), bw);
      add(off);
    }
    return diag + 2 * off;
  }

  static const std::vector<float>& hessian(HessianAccumulator& H, int64_t K) {
    const std::vector<float>& h = H.host();
    GPTQ_ASSERT(int64_t(h.size()) == K * K, "a Hessian of another size");
    return h;
  }
};

}  // namespace

QuantResult Solver::solve(const float* W, HessianAccumulator& H, int64_t N, int64_t K, const QuantSpec& spec,
                          bool with_wq) {
  QuantResult r = solve_gptq(W, H, N, K, spec, with_wq || refit_ == Refit::kHessian);
  if (refit_ == Refit::kHessian) refit_scales(pool_, W, H.host().data(), N, K, r);
  return r;
}

std::unique_ptr<Solver> make_solver(Backend& be, ThreadPool& pool, Refit refit) {
#if defined(GPTQ_WITH_CUDA)
  if (be.device() == Device::kCuda) return make_cuda_solver(pool, refit);
#else
  (void)be;
#endif
  return std::make_unique<HostSolver>(pool, refit);
}

}  // namespace gptq::quant
