// The CPU backend: the readable reference of every op (plain C++ with shape comments), with the
// heavy parts on SIMD kernels (gemm.h, qgemm.h) and OpenBLAS. It owns its thread pool and its BLAS
// policy: OpenBLAS is held to one thread and called from inside the pool's tasks.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace gptq {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& o);
  ~CpuBackend() override;

  Device device() const override { return Device::kCpu; }
  std::string name() const override;
  int threads() const override { return pool_.size(); }
  ThreadPool& pool() { return pool_; }

  std::shared_ptr<void> alloc(size_t bytes) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void to_host(const Tensor& src, float* dst) override;
  void from_host(const float* src, const Tensor& dst) override;
  void fill_zero(const Tensor& t) override;
  void copy(const Tensor& src, const Tensor& dst) override;

  std::unique_ptr<Weight> dense_weight(const DenseWeightDesc& d) override;
  std::unique_ptr<Weight> gptq_weight(const quant::QuantMatrix& m, const float* bias) override;

  void embed(const Weight& table, const BatchPlan& plan, const Tensor& y) override;
  void linear(const Weight& w, const Tensor& x, const Tensor& y) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override;
  void rope_angles(const Tensor& inv_freq, const BatchPlan& plan, const Tensor& cs) override;
  void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& cs) override;
  void attention(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v, const KVView& kv,
                 const BatchPlan& plan, int64_t n_heads, const Tensor& out) override;
  void silu_mul(const Tensor& g, const Tensor& u) override;
  void add(const Tensor& x, const Tensor& y) override;
  void gather_rows(const Tensor& x, const BatchPlan& plan, const Tensor& y) override;
  std::unique_ptr<HessianAccumulator> hessian(int64_t K) override;
  void set_deterministic(bool on) override { deterministic_ = on; }
  bool deterministic() const { return deterministic_; }

 private:
  ThreadPool pool_;
  bool deterministic_ = false;
};

// The pool of a CPU backend, else null (host-side work that wants the same threads).
inline ThreadPool* cpu_pool(Backend& b) {
  auto* c = dynamic_cast<CpuBackend*>(&b);
  return c ? &c->pool() : nullptr;
}

}  // namespace gptq
