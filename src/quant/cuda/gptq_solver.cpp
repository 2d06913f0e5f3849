#include "quant/cuda/gptq_solver.h"

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
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

namespace {

// Device memory kept across calls, grown (never shrunk) to the largest request. Every call ends
// with a stream synchronization, so nothing queued reads a buffer freed when one grows.
struct DeviceBuffer {
  std::shared_ptr<void> mem;
  size_t bytes = 0;
  template <class T>
  T* get(size_t count, const char* what) {
    const size_t need = std::max<size_t>(count * sizeof(T), 1);
    if (need > bytes) {
      mem.reset();
      mem = device_alloc(need, what);
      bytes = need;
    }
    return static_cast<T*>(mem.get());
  }
};

// Page-locked host memory for the large transfers (the weights up, the codes down), grown as needed.
struct PinnedBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~PinnedBuffer() {
    if (ptr) cudaFreeHost(ptr);
  }
  char* get(size_t need) {
    if (need > bytes) {
      if (ptr) CUDA_CHECK(cudaFreeHost(ptr));
      ptr = nullptr;
      CUDA_CHECK(cudaHostAlloc(&ptr, need, cudaHostAllocDefault));
      bytes = need;
    }
    return static_cast<char*>(ptr);
  }
};

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

struct CudaSolver::Buffers {
  DeviceBuffer perm, dead, hdiag, hperm, group, diag;  // the column plan, [K] each
  DeviceBuffer w, wp, wq, scales, zeros, codes, err, loss, u, a, work;
  DeviceBuffer qweight, qzeros, qscales, qgidx;  // module_error's packed matrix
  PinnedBuffer staging;
};

CudaSolver::CudaSolver(cudaStream_t stream, ThreadPool* pool)
    : stream_(stream), pool_(pool), h_(std::make_unique<Handles>()), b_(std::make_unique<Buffers>()) {
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

// A small host vector into a kept device buffer (pageable: the driver stages it before returning).
template <class T>
T* upload(const std::vector<T>& v, DeviceBuffer& buf, const char* what, cudaStream_t s) {
  T* d = buf.get<T>(v.size(), what);
  if (!v.empty()) CUDA_CHECK(cudaMemcpyAsync(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  return d;
}

// memcpy in 4 MiB pieces on the pool (the pinned staging's host side).
void host_copy(ThreadPool* pool, void* dst, const void* src, size_t bytes) {
  constexpr size_t kPiece = size_t(4) << 20;
  if (!pool || pool->size() <= 1 || pool->in_task() || bytes <= kPiece) {
    if (bytes) std::memcpy(dst, src, bytes);
    return;
  }
  pool->parallel_for(0, (bytes + kPiece - 1) / kPiece, [&](size_t b, size_t e) {
    const size_t lo = b * kPiece, hi = std::min(bytes, e * kPiece);
    std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo, hi - lo);
  });
}

}  // namespace

quant::QuantResult CudaSolver::gptq_solve(const float* W, const float* H, int64_t N, int64_t K,
                                            const quant::QuantSpec& spec, bool with_wq) {
  quant::check_spec(spec, K);
  if (N <= 0) fail("cannot quantize a layer with ", N, " output features");
  if (spec.block_size > kSolverMaxBlock)
    fail("the CUDA GPTQ solver takes block_size up to ", kSolverMaxBlock, ", got ", spec.block_size);
  if (K > INT32_MAX) fail("the CUDA GPTQ solver takes at most ", INT32_MAX, " inputs, got ", K);
  cudaStream_t s = stream_;
  Buffers& b = *b_;

  // diag(H): the column plan is the CPU's, made on the host from it.
  std::vector<float> h_diag(static_cast<size_t>(K));
  CUDA_CHECK(cudaMemcpy2DAsync(h_diag.data(), sizeof(float), H, size_t(K + 1) * sizeof(float), sizeof(float),
                               size_t(K), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  const quant::ColumnPlan plan = quant::plan_columns(h_diag.data(), K, spec);
  quant::QuantResult res = quant::empty_result(N, K, spec, with_wq);
  res.dead_columns = plan.dead_columns;
  res.g_idx = plan.g_idx;

  const std::vector<int32_t> perm32(plan.perm.begin(), plan.perm.end());
  const int32_t* d_perm = upload(perm32, b.perm, "the column order", s);
  const uint8_t* d_dead = upload(plan.dead, b.dead, "the dead inputs", s);
  const float* d_hdiag = upload(plan.hdiag, b.hdiag, "diag(H)", s);
  const float* d_hperm = upload(plan.hperm, b.hperm, "diag(H)", s);
  const int32_t* d_group = upload(plan.col_group, b.group, "the column groups", s);
  const float* d_diag = upload(plan.diag, b.diag, "diag(H)", s);

  const size_t nk = size_t(N * K);
  float* d_w = b.w.get<float>(nk, "the weights");
  float* d_wp = b.wp.get<float>(nk, "the solver's weights");
  float* d_scales = b.scales.get<float>(res.scales.size(), "the scales");
  int32_t* d_zeros = b.zeros.get<int32_t>(res.zeros.size(), "the zeros");
  // W through the pinned staging (the host copy on the pool, then one DMA).
  char* staging = b.staging.get(std::max(nk * sizeof(float), align_up(nk) + (with_wq ? align_up(nk * 4) : 0) +
                                                                   align_up(res.scales.size() * 4) +
                                                                   align_up(res.zeros.size() * 4) + size_t(N) * 8));
  host_copy(pool_, staging, W, nk * sizeof(float));
  CUDA_CHECK(cudaMemcpyAsync(d_w, staging, nk * sizeof(float), cudaMemcpyHostToDevice, s));

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
  float* d_u = b.u.get<float>(size_t(K * K), "the inverse Hessian factor");
  {
    double* d_a = b.a.get<double>(size_t(K * K), "the Cholesky factorization");
    size_t pw_dev = 0, pw_host = 0, tw_dev = 0, tw_host = 0;
    CUSOLVER_CHECK(cusolverDnXpotrf_bufferSize(h_->solver, h_->params, CUBLAS_FILL_MODE_LOWER, K, CUDA_R_64F, d_a, K,
                                               CUDA_R_64F, &pw_dev, &pw_host));
    CUSOLVER_CHECK(cusolverDnXtrtri_bufferSize(h_->solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F,
                                               d_a, K, &tw_dev, &tw_host));
    const size_t info_at = align_up(std::max(pw_dev, tw_dev));  // the status after the workspace, aligned
    char* d_work = b.work.get<char>(info_at + sizeof(int), "the Cholesky workspace");
    std::vector<char> host_work(std::max(pw_host, tw_host));
    int* d_info = reinterpret_cast<int*>(d_work + info_at);
    std::vector<double> l_diag(static_cast<size_t>(K));
    auto factor = [&](double damp) {
      gptq_factor_input(H, d_perm, d_diag, K, damp, d_a, s);
      CUSOLVER_CHECK(cusolverDnXpotrf(h_->solver, h_->params, CUBLAS_FILL_MODE_LOWER, K, CUDA_R_64F, d_a, K, CUDA_R_64F,
                                      d_work, pw_dev, host_work.data(), pw_host, d_info));
      int info = 0;
      CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaMemcpy2DAsync(l_diag.data(), sizeof(double), d_a, size_t(K + 1) * sizeof(double), sizeof(double),
                                   size_t(K), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaStreamSynchronize(s));
      if (info != 0) return false;
      for (double d : l_diag)
        if (!(d > 0.0) || !std::isfinite(d)) return false;
      CUSOLVER_CHECK(cusolverDnXtrtri(h_->solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F, d_a, K,
                                      d_work, tw_dev, host_work.data(), tw_host, d_info));
      CUDA_CHECK(cudaMemcpyAsync(&info, d_info, sizeof(int), cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaStreamSynchronize(s));
      GPTQ_ASSERT(info == 0, "trtri found a zero pivot in a Cholesky factor with a positive diagonal");
      gptq_hinv_from_factor(d_a, K, d_u, s);
      return true;
    };
    quant::factor_with_damping(spec, plan.mean_diag, factor, res);
  }
  res.seconds_factor = seconds_since(t0);

  // The column loop: one kernel per lazy block, then Wp[:, i2:] -= Err · U[i1:i2, i2:].
  t0 = std::chrono::steady_clock::now();
  double* d_loss = b.loss.get<double>(size_t(N), "the row losses");
  CUDA_CHECK(cudaMemsetAsync(d_loss, 0, size_t(N) * sizeof(double), s));
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
  a.err = b.err.get<float>(size_t(N) * kSolverMaxBlock, "the block errors");
  a.scales = d_scales;
  a.zeros = d_zeros;
  a.codes = b.codes.get<uint8_t>(nk, "the codes");
  a.Wq = with_wq ? b.wq.get<float>(nk, "the quantized weights") : nullptr;
  a.row_loss = d_loss;
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
  // Everything down through the pinned staging (after W's upload on the same stream), one sync.
  size_t at = 0;
  auto down = [&](const void* src, size_t bytes) {
    char* p = staging + at;
    CUDA_CHECK(cudaMemcpyAsync(p, src, bytes, cudaMemcpyDeviceToHost, s));
    at += align_up(bytes);
    return p;
  };
  const char* h_codes = down(a.codes, nk);
  const char* h_wq = with_wq ? down(a.Wq, nk * sizeof(float)) : nullptr;
  const char* h_scales = down(d_scales, res.scales.size() * sizeof(float));
  const char* h_zeros = down(d_zeros, res.zeros.size() * sizeof(int32_t));
  const char* h_loss = down(d_loss, size_t(N) * sizeof(double));
  CUDA_CHECK(cudaStreamSynchronize(s));
  host_copy(pool_, res.codes.data(), h_codes, nk);
  if (with_wq) host_copy(pool_, res.Wq.data(), h_wq, nk * sizeof(float));
  std::memcpy(res.scales.data(), h_scales, res.scales.size() * sizeof(float));
  std::memcpy(res.zeros.data(), h_zeros, res.zeros.size() * sizeof(int32_t));
  const double* row_loss = reinterpret_cast<const double*>(h_loss);
  res.row_loss.assign(row_loss, row_loss + N);
  for (int64_t n = 0; n < N; ++n) res.loss += row_loss[n] / 2;  // in row order, as the CPU sums
  res.seconds_solve = seconds_since(t0);
  return res;
}

double CudaSolver::module_error(const float* W, const quant::QuantMatrix& q, const float* H) {
  quant::validate(q);
  cudaStream_t s = stream_;
  Buffers& b = *b_;
  const int64_t N = q.N, K = q.K, n_groups = q.n_groups();
  const size_t nk = size_t(N * K);
  // AB: [2N, K] = [W; D] with D = W - Q, so that one GEMM gives both norms.
  float* d_ab = b.w.get<float>(2 * nk, "the weights and their errors");
  float* d_prod = b.wp.get<float>(2 * nk, "the weights and errors times the Hessian");
  double* d_dots = b.loss.get<double>(size_t(2 * N), "the row norms");
  const size_t qw = size_t(quant::qweight_rows(K, q.bits) * N), qz = size_t(n_groups * quant::qzeros_cols(N, q.bits));
  int32_t* d_qweight = b.qweight.get<int32_t>(qw, "GPTQ codes");
  int32_t* d_qzeros = b.qzeros.get<int32_t>(qz, "GPTQ zeros");
  uint16_t* d_qscales = b.qscales.get<uint16_t>(size_t(n_groups * N), "GPTQ scales");
  int32_t* d_gidx = q.g_idx ? b.qgidx.get<int32_t>(size_t(K), "g_idx") : nullptr;
  char* staging = b.staging.get(std::max(nk * 4 + qw * 4, size_t(2 * N) * 8));
  host_copy(pool_, staging, W, nk * 4);
  host_copy(pool_, staging + nk * 4, q.qweight, qw * 4);
  CUDA_CHECK(cudaMemcpyAsync(d_ab, staging, nk * 4, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d_qweight, staging + nk * 4, qw * 4, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d_qzeros, q.qzeros, qz * 4, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d_qscales, q.scales, size_t(n_groups * N) * 2, cudaMemcpyHostToDevice, s));
  if (d_gidx) CUDA_CHECK(cudaMemcpyAsync(d_gidx, q.g_idx, size_t(K) * 4, cudaMemcpyHostToDevice, s));
  GptqPacked p;
  p.qweight = d_qweight;
  p.qzeros = d_qzeros;
  p.scales = d_qscales;
  p.g_idx = d_gidx;
  p.bits = q.bits;
  p.G = quant::resolve_group_size(K, q.group_size);
  p.v1 = q.format == quant::QuantFormat::kGptqV1;
  gptq_dequant_diff(d_ab, p, N, K, d_ab + nk, s);
  // Column-major: (AB H)^T (K x 2N) = H^T AB^T = H AB^T (H symmetric).
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cublasSgemm(h_->blas, CUBLAS_OP_N, CUBLAS_OP_N, int(K), int(2 * N), int(K), &one, H, int(K), d_ab, int(K),
                           &zero, d_prod, int(K)));
  row_dots(d_prod, d_ab, 2 * N, K, d_dots, s);
  CUDA_CHECK(cudaMemcpyAsync(staging, d_dots, size_t(2 * N) * 8, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  const double* dots = reinterpret_cast<const double*>(staging);
  double den = 0, num = 0;  // each in row order
  for (int64_t n = 0; n < N; ++n) den += dots[n];
  for (int64_t n = 0; n < N; ++n) num += dots[N + n];
  return den > 0 ? num / den : 0;
}

}  // namespace gptq::cuda
