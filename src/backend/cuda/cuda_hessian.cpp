#include "backend/cuda/cuda_hessian.h"

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/gptq_solver_kernels.h"
#include "backend/cuda/library_check.h"
#include "gptq/error.h"

namespace gptq::cuda {

CudaHessian::CudaHessian(cublasHandle_t blas, cudaStream_t stream, int64_t K) : blas_(blas), stream_(stream), K_(K) {
  GPTQ_ASSERT(K > 0);
}

void CudaHessian::allocate() {
  if (sum_) return;
  const size_t n = size_t(K_ * K_);
  sum_ = device_alloc(n * sizeof(double), cat("a ", K_, "x", K_, " Hessian"));
  work_ = device_alloc(n * sizeof(float), cat("a ", K_, "x", K_, " Hessian"));
  CUDA_CHECK(cudaMemsetAsync(sum_.get(), 0, n * sizeof(double), stream_));
}

void CudaHessian::add(const Tensor& x, int64_t samples) {
  GPTQ_ASSERT(x.device == Device::kCuda && x.dtype == DType::kF32 && x.cols == K_ && samples > 0 &&
              x.rows % samples == 0);
  allocate();
  const double beta = double(nsamples_) / double(nsamples_ + samples);
  nsamples_ += samples;
  const double alpha = 2.0 / double(nsamples_);
  float* prod = static_cast<float*>(work_.get());
  // Column-major, x is the K x rows matrix X^T (ld stride) and prod's row-major upper triangle is
  // its lower one: prod = X^T X = (X^T)(X^T)^T, lower.
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cublasSsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, int(K_), int(x.rows), &one, x.f32(), int(x.stride),
                           &zero, prod, int(K_)));
  hessian_accumulate(static_cast<double*>(sum_.get()), prod, K_, alpha, beta, stream_);
  rounded_ = host_valid_ = false;
}

const float* CudaHessian::device() {
  allocate();  // no batch yet: H = 0, as on the CPU
  if (!rounded_) {
    hessian_round(static_cast<const double*>(sum_.get()), K_, static_cast<float*>(work_.get()), stream_);
    rounded_ = true;
  }
  return static_cast<const float*>(work_.get());
}

const std::vector<float>& CudaHessian::host() {
  if (!host_valid_) {
    const float* H = device();
    host_.resize(size_t(K_ * K_));
    CUDA_CHECK(cudaMemcpyAsync(host_.data(), H, host_.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    host_valid_ = true;
  }
  return host_;
}

std::vector<float> CudaHessian::take() {
  host();
  std::vector<float> H;
  H.swap(host_);
  CUDA_CHECK(cudaStreamSynchronize(stream_));  // nothing queued reads the buffers freed here
  sum_.reset();
  work_.reset();
  nsamples_ = 0;
  rounded_ = host_valid_ = false;
  return H;
}

}  // namespace gptq::cuda
