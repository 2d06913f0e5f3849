#include "quant/solver.h"

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
  // sum_i (A H Aᵀ)_ii for A: [N, K]: one fixed-order fp32 GEMM, the products summed in double in
  // element order.
  double hessian_norm(const float* A, HessianAccumulator& H, int64_t N, int64_t K) {
    const std::vector<float>& h = hessian(H, K);
    std::vector<float> AH(size_t(N * K));
    cpu::gemm_nn_fixed(&pool_, N, K, K, 1.f, A, K, h.data(), K, 0.f, AH.data(), K);
    double s = 0;
    for (size_t i = 0; i < AH.size(); ++i) s += double(AH[i]) * A[i];
    return s;
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
