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
  const int64_t rows = x.rows;
  if (rows == 0) {  // no products: H only rescaled
    CUDA_CHECK(cudaMemsetAsync(prod, 0, size_t(K_ * K_) * sizeof(float), stream_));
    hessian_accumulate(static_cast<double*>(sum_.get()), prod, K_, alpha, beta, nullptr, stream_);
    rounded_ = host_valid_ = false;
    return;
  }
  // The split (cuda_hessian.h): c x = hi + lo / 2048 in fp16, written once into [hi; lo].
  if (!amax_) amax_ = device_alloc(sizeof(uint32_t), "the Hessian's input range");
  uint32_t* amax = static_cast<uint32_t*>(amax_.get());
  const size_t split_bytes = size_t(2 * rows * K_) * 2;
  if (split_bytes > split_bytes_) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // nothing queued still reads the old buffer
    split_.reset();
    split_ = device_alloc(split_bytes, cat("a ", rows, "x", K_, " Hessian input in fp16"));
    split_bytes_ = split_bytes;
  }
  CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(uint32_t), stream_));
  hessian_absmax(x.f32(), rows, K_, x.stride, amax, stream_);
  hessian_split(x.f32(), rows, K_, x.stride, amax, split_.get(), stream_);
  const char* hi = static_cast<const char*>(split_.get());
  const char* lo = hi + size_t(rows * K_) * 2;
  // Column-major, hi and lo are K x rows matrices (ld K): prod = hi·hiᵀ + hi·loᵀ / 1024, on tensor
  // cores with fp32 accumulation; the fp64 pass symmetrizes, (prod + prodᵀ) / 2 = hi·hiᵀ + (hi·loᵀ
  // + lo·hiᵀ) / 2048 = c² XᵀX but for lo·loᵀ / 2048², ~2^-22 of the whole: fp32-level accuracy,
  // as the fp32 SYRK this replaces (each fp16 x fp16 product is exact in fp32). Two GEMMs of the
  // SYRK's size: 2x its flops at ~15x the fp32 SIMT rate.
  const float one = 1.f, zero = 0.f, cross = 1.f / 1024.f;
  CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_T, int(K_), int(K_), int(rows), &one, hi, CUDA_R_16F,
                            int(K_), hi, CUDA_R_16F, int(K_), &zero, prod, CUDA_R_32F, int(K_), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_T, int(K_), int(K_), int(rows), &cross, hi, CUDA_R_16F,
                            int(K_), lo, CUDA_R_16F, int(K_), &one, prod, CUDA_R_32F, int(K_), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
  hessian_accumulate(static_cast<double*>(sum_.get()), prod, K_, alpha, beta, amax, stream_);
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
  split_.reset();
  split_bytes_ = 0;
  nsamples_ = 0;
  rounded_ = host_valid_ = false;
  return H;
}

}  // namespace gptq::cuda
