// The GPTQ solver behind one interface, with a CPU and a CUDA version (DESIGN.md: quant/). A
// solver reads the Hessian where the backend accumulated it (Backend::hessian: host memory for the
// CPU, device memory for CUDA), so calibration downloads nothing per module.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "quant/gptq.h"
#include "quant/refit.h"

namespace gptq::quant {

class Solver {
 public:
  Solver(ThreadPool& pool, Refit refit) : pool_(pool), refit_(refit) {}
  virtual ~Solver() = default;
  // gptq_quantize (gptq.h: its semantics, results and errors) of W: [N, K] fp32 on the host with H:
  // an accumulator of the solver's backend's hessian(K) after its adds (read, left as it is); then
  // the scale refit of refit.h when the solver was made with one (host work, from H.host()).
  // with_wq false: the result's Wq may be left empty (the CUDA solver then does not download it;
  // the refit, which reads it, still gets it).
  QuantResult solve(const float* W, HessianAccumulator& H, int64_t N, int64_t K, const QuantSpec& spec,
                    bool with_wq = true);
  // The module's relative output error on the calibration inputs, ‖(W - Q)Xᵀ‖² / ‖W Xᵀ‖² (0 when
  // the denominator is 0), as sum_i (A H Aᵀ)_ii for A = W - Q over A = W: W: [q.N, q.K] fp32 on
  // the host; Q = dequantize(q), exactly what the checkpoint computes (fp16 scales); H: an
  // accumulator of the solver's backend's hessian(q.K) (read, left as it is).
  virtual double module_error(const float* W, const QuantMatrix& q, HessianAccumulator& H) = 0;

 protected:
  virtual QuantResult solve_gptq(const float* W, HessianAccumulator& H, int64_t N, int64_t K, const QuantSpec& spec,
                                 bool with_wq) = 0;
  ThreadPool& pool_;

 private:
  Refit refit_;
};

// The solver for be's Hessians: on the GPU for the CUDA backend, else on the host. Host work runs
// on `pool`, which must outlive the solver.
std::unique_ptr<Solver> make_solver(Backend& be, ThreadPool& pool, Refit refit = Refit::kNone);

}  // namespace gptq::quant
