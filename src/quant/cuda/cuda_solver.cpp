// quant::Solver on the GPU: the CUDA backend's Hessians (backend/cuda/cuda_hessian.h) solved where
// they lie by CudaSolver (gptq_solver.h), on the accumulator's stream and the current device.
#include <memory>

#include "backend/cuda/cuda_hessian.h"
#include "gptq/error.h"
#include "quant/cuda/gptq_solver.h"
#include "quant/solver.h"

namespace gptq::quant {

namespace {

class DeviceSolver final : public Solver {
 public:
  using Solver::Solver;

  QuantResult solve_gptq(const float* W, HessianAccumulator& H, int64_t N, int64_t K, const QuantSpec& spec,
                         bool with_wq) override {
    cuda::CudaHessian& h = device_hessian(H, K);
    return solver(h).gptq_solve(W, h.device(), N, K, spec, with_wq);
  }

  double module_error(const float* W, const QuantMatrix& q, HessianAccumulator& H) override {
    cuda::CudaHessian& h = device_hessian(H, q.K);
    return solver(h).module_error(W, q, h.device());
  }

 private:
  static cuda::CudaHessian& device_hessian(HessianAccumulator& H, int64_t K) {
    auto* h = dynamic_cast<cuda::CudaHessian*>(&H);
    GPTQ_ASSERT(h && h->K() == K, "the Hessian was not made by a CUDA backend's hessian(K)");
    return *h;
  }
  // The cuBLAS and cuSOLVER handles (and the solver's kept buffers), made on first use on the
  // stream the Hessians are on.
  cuda::CudaSolver& solver(const cuda::CudaHessian& h) {
    if (!solver_ || solver_->stream() != h.stream()) solver_ = std::make_unique<cuda::CudaSolver>(h.stream(), &pool_);
    return *solver_;
  }
  std::unique_ptr<cuda::CudaSolver> solver_;
};

}  // namespace

std::unique_ptr<Solver> make_cuda_solver(ThreadPool& pool, Refit refit) {
  return std::make_unique<DeviceSolver>(pool, refit);
}

}  // namespace gptq::quant
