#include "quant/cuda/gptq_solver.h"

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/gptq_solver_kernels.h"
#include "backend/cuda/library_check.h"
#include "gptq/error.h"
#include "quant/gptq_plan.h"
#include "quant/quantizer.h"

namespace gptq::cuda {

struct CudaSolver::Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
};

CudaSolver::CudaSolver(cudaStream_t stream) : stream_(stream), h_(std::make_unique<Handles>()) {
  CUBLAS_CHECK(cublasCreate(&h_->blas));
  CUBLAS_CHECK(cublasSetStream(h_->blas, stream_));
  // Plain fp32 (no TF32): the lazy updates and Hessian products round as the CPU's fp32 do.
  CUBLAS_CHECK(cublasSetMathMode(h_->blas, CUBLAS_DEFAULT_MATH));
  CUSOLVER_CHECK(cusolverDnCreate(&h_->solver));
  CUSOLVER_CHECK(cusolverDnSetStream(h_->solver, stream_));
  CUSOLVER_CHECK(cusolverDnSetDeterministicMode(h_->solver, CUSOLVER_DETERMINISTIC_RESULTS));
  CUSOLVER_CHECK(cusolverDnCreateParams(&h_->params));
}

CudaSolver::~CudaSolver() {
  cudaStreamSynchronize(stream_);
  cusolverDnDestroyParams(h_->params);
  cusolverDnDestroy(h_->solver);
  cublasDestroy(h_->blas);
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class T>
T* upload(const std::vector<T>& v, std::shared_ptr<void>& owner, const char* what, cudaStream_t s) {
  owner = device_alloc(v.size() * sizeof(T), what);
  CUDA_CHECK(cudaMemcpyAsync(owner.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  return static_cast<T*>(owner.get());
}

template <class T>
void download(std::vector<T>& v, const void* src, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(v.data(), src, v.size() * sizeof(T), cudaMemcpyDeviceToHost, s));
}

}  // namespace

quant::QuantResult CudaSolver::gptq_solve(const float* W, const float* H, int64_t N, int64_t K,
                                            const quant::QuantSpec& spec) {
  quant::check_spec(spec, K);
  if (N <= 0) fail("cannot quantize a layer with ", N, " output features");
  if (spec.block_size > kSolverMaxBlock)
    fail("the CUDA GPTQ solver takes block_size up to ", kSolverMaxBlock, ", got ", spec.block_size);
  if (K > INT32_MAX) fail("the CUDA GPTQ solver takes at most ", INT32_MAX, " inputs, got ", K);
  cudaStream_t s = stream_;

  // diag(H): the column plan is the CPU's, made on the host from it.
  std::vector<float> h_diag(static_cast<size_t>(K));
  CUDA_CHECK(cudaMemcpy2DAsync(h_diag.data(), sizeof(float), H, size_t(K + 1) * sizeof(float), sizeof(float),
                               size_t(K), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  const quant::ColumnPlan plan = quant::plan_columns(h_diag.data(), K, spec);
  quant::QuantResult res = quant::empty_result(N, K, spec);
  res.dead_columns = plan.dead_columns;
  res.g_idx = plan.g_idx;

  std::shared_ptr<void> m_perm, m_dead, m_hdiag, m_hperm, m_group, m_diag;
  const std::vector<int32_t> perm32(plan.perm.begin(), plan.perm.end());
  const int32_t* d_perm = upload(perm32, m_perm, "the column order", s);
  const uint8_t* d_dead = upload(plan.dead, m_dead, "the dead inputs", s);
  const float* d_hdiag = upload(plan.hdiag, m_hdiag, "diag(H)", s);
  const float* d_hperm = upload(plan.hperm, m_hperm, "diag(H)", s);
  const int32_t* d_group = upload(plan.col_group, m_group, "the column groups", s);
  const float* d_diag = upload(plan.diag, m_diag, "diag(H)", s);

  const size_t nk = size_t(N * K);
  auto m_w = device_alloc(nk * sizeof(float), "the weights");
  auto m_wp = device_alloc(nk * sizeof(float), "the solver's weights");
  auto m_scales = device_alloc(res.scales.size() * sizeof(float), "the scales");
  auto m_zeros = device_alloc(res.zeros.size() * sizeof(int32_t), "the zeros");
  float* d_w = static_cast<float*>(m_w.get());
  float* d_wp = static_cast<float*>(m_wp.get());
  float* d_scales = static_cast<float*>(m_scales.get());
  int32_t* d_zeros = static_cast<int32_t*>(m_zeros.get());
  CUDA_CHECK(cudaMemcpyAsync(d_w, W, nk * sizeof(float), cudaMemcpyHostToDevice, s));

  GridArgs grid;
  grid.maxq = quant::max_code(spec.bits);
  grid.sym = spec.sym;
  grid.mse = spec.grid == quant::Grid::kMse;
  // The whole-row grid comes from W before dead columns are zeroed; static groups' from the
  // dead-zeroed W in the original column order (gptq.h).
  if (plan.whole_row) gptq_group_grids(d_w, nullptr, d_hdiag, N, K, K, 1, grid, d_scales, d_zeros, s);
  if (plan.static_groups) gptq_group_grids(d_w, d_dead, d_hdiag, N, K, plan.G, res.n_groups, grid, d_scales, d_zeros, s);
  gptq_permute_weights(d_w, d_perm, d_dead, N, K, d_wp, s);

  // U: [K, K] the upper Cholesky factor of (Hp + damp I)^-1, retrying with more damping.
  auto t0 = std::chrono::steady_clock::now();
  auto m_u = device_alloc(size_t(K * K) * sizeof(float), "the inverse Hessian factor");
  float* d_u = static_cast<float*>(m_u.get());
  {
    auto m_a = device_alloc(size_t(K * K) * sizeof(double), "the Cholesky factorization");
    double* d_a = static_cast<double*>(m_a.get());
    size_t pw_dev = 0, pw_host = 0, tw_dev = 0, tw_host = 0;
    CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(h_->solver, h_->params, CUBLAS_FILL_MODE_LOWER, K, CUDA_R_64F, d_a, K,
                                               CUDA_R_64F, &pw_dev, &pw_host));
    CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(h_->solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F,
                                               d_a, K, &tw_dev, &tw_host));
    const size_t info_at = (std::max(pw_dev, tw_dev) + 255) / 256 * 256;  // the status after the workspace, aligned
    auto m_work = device_alloc(info_at + sizeof(int), "the Cholesky workspace");
    std::vector<char> host_work(std::max(pw_host, tw_host));
    int* d_info = reinterpret_cast<int*>(static_cast<char*>(m_work.get()) + info_at);
    std::vector<double> l_diag(static_cast<size_t>(K));
    auto factor = [&](double damp) {
      gptq_factor_input(H, d_perm, d_diag, K, damp, d_a, s);
      CUSOLVER_CHECK(cusolverDnXpotrf(h_->solver, h_->params, CUBLAS_FILL_MODE_LOWER, K, CUDA_R_64F, d_a, K, CUDA_R_64F,
                                      m_work.get(), pw_dev, host_work.data(), pw_host, d_info));
      int info = 0;
      CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaMemcpy2DAsync(l_diag.data(), sizeof(double), d_a, size_t(K + 1) * sizeof(double), sizeof(double),
                                   size_t(K), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaStreamSynchronize(s));
      if (info != 0) return false;
      for (double d : l_diag)
        if (!(d > 0.0) || !std::isfinite(d)) return false;
      CUSOLVER_CHECK(cusolverDnXtrtri(h_->solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F, d_a, K,
                                      m_work.get(), tw_dev, host_work.data(), tw_host, d_info));
      CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaStreamSynchronize(s));
      GPTQ_ASSERT(info == 0, "trtri found a zero pivot in a Cholesky factor with a positive diagonal");
      gptq_hinv_from_factor(d_a, K, d_u, s);
      return true;
    };
    quant::factor_with_damping(spec, plan.mean_diag, factor, res);
    CUDA_CHECK(cudaStreamSynchronize(s));  // before m_a is freed
  }
  res.seconds_factor = seconds_since(t0);

  // The column loop: one kernel per lazy block, then Wp[:, i2:] -= Err · U[i1:i2, i2:].
  t0 = std::chrono::steady_clock::now();
  auto m_err = device_alloc(size_t(N) * kSolverMaxBlock * sizeof(float), "the block errors");
  auto m_codes = device_alloc(nk, "the codes");
  auto m_wq = device_alloc(nk * sizeof(float), "the quantized weights");
  auto m_loss = device_alloc(size_t(N) * sizeof(double), "the row losses");
  CUDA_CHECK(cudaMemsetAsync(m_loss.get(), 0, size_t(N) * sizeof(double), s));
  ColumnBlockArgs a;
  a.N = N;
  a.K = K;
  a.G = plan.G;
  a.grid = grid;
  a.dynamic_groups = !plan.whole_row && !plan.static_groups;
  a.perm = d_perm;
  a.col_group = d_group;
  a.hperm = d_hperm;
  a.U = d_u;
  a.Wp = d_wp;
  a.err = static_cast<float*>(m_err.get());
  a.scales = d_scales;
  a.zeros = d_zeros;
  a.codes = static_cast<uint8_t*>(m_codes.get());
  a.Wq = static_cast<float*>(m_wq.get());
  a.row_loss = static_cast<double*>(m_loss.get());
  const int64_t B = spec.block_size;
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), cnt = i2 - i1;
    gptq_column_block(a, i1, int(cnt), s);
    if (i2 == K) break;
    // Column-major: Wp^T[i2:, :] (m = K-i2, n = N, ld K) -= U[i1:i2, i2:]^T (m x cnt, ld K) · Err^T
    // (cnt x N, ld 128).
    const float minus_one = -1.f, one = 1.f;
    CUBLAS_CHECK(cublasSgemm(h_->blas, CUBLAS_OP_N, CUBLAS_OP_N, int(K - i2), int(N), int(cnt), &minus_one,
                             d_u + i1 * K + i2, int(K), a.err, kSolverMaxBlock, &one, d_wp + i2, int(K)));
  }
  std::vector<double> row_loss(static_cast<size_t>(N));
  download(res.codes, m_codes.get(), s);
  download(res.Wq, m_wq.get(), s);
  download(res.scales, d_scales, s);
  download(res.zeros, d_zeros, s);
  download(row_loss, m_loss.get(), s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  for (double l : row_loss) res.loss += l / 2;  // in row order, as the CPU sums
  res.seconds_solve = seconds_since(t0);
  return res;
}

double CudaSolver::hessian_norm(const float* A, const float* H, int64_t N, int64_t K) {
  cudaStream_t s = stream_;
  const size_t nk = size_t(N * K);
  auto m_a = device_alloc(nk * sizeof(float), "a weight");
  auto m_ah = device_alloc(nk * sizeof(float), "a weight times the Hessian");
  auto m_dots = device_alloc(size_t(N) * sizeof(double), "the row norms");
  const float* d_a = static_cast<const float*>(m_a.get());
  float* d_ah = static_cast<float*>(m_ah.get());
  CUDA_CHECK(cudaMemcpyAsync(m_a.get(), A, nk * sizeof(float), cudaMemcpyHostToDevice, s));
  // Column-major: (A H)^T (K x N) = H^T A^T = H A^T (H symmetric).
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cublasSgemm(h_->blas, CUBLAS_OP_N, CUBLAS_OP_N, int(K), int(N), int(K), &one, H, int(K), d_a, int(K), &zero,
                           d_ah, int(K)));
  row_dots(d_ah, d_a, N, K, static_cast<double*>(m_dots.get()), s);
  std::vector<double> dots(static_cast<size_t>(N));
  download(dots, m_dots.get(), s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  double sum = 0;
  for (double d : dots) sum += d;
  return sum;
}

}  // namespace gptq::cuda
