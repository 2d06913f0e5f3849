// GPTQ's Hessian on the GPU: the semantics of backend/cpu/hessian.h (before each batch
// H *= n/(n + samples), n += samples, H += 2/n X^T X, samples counting sequences), accumulated
// where the calibration inputs are, so that nothing is downloaded per batch.
//
// Precision: each batch's X^T X is summed in fp32 (one calibration window: the products of up to
// seqlen tokens, summed in fp32 as the CPU's and the reference's are), and the running, rescaled
// sum across batches is kept in fp64, where an fp32 accumulator would round at every one of the
// nsamples updates (issue 13's wish); H is rounded to fp32 once, when it is read.
// The batch's product runs on tensor cores at fp32 accuracy (split fp16, as in the "fp16x2"
// GEMM-emulation literature): X is scaled by a power of two c (from max|X|, so that fp16 cannot
// overflow) and cut into hi = fp16(cX) and lo = fp16((cX - hi) 2048), cX = hi + lo/2048 to ~2^-22;
// c²XᵀX = hiᵀhi + (hiᵀlo + loᵀhi)/2048 (+ loᵀlo/2048², ~2^-22 relative, dropped): two fp16 GEMMs
// with fp32 accumulation, P = hiᵀhi + hiᵀlo/1024 (2x the flops of one SYRK at ~15x the fp32
// SIMT rate), then the fp64 pass adds (P + Pᵀ)/2 with c² divided out exactly. Inputs below ~2^-28 max|X| lose relative precision (fp16
// subnormals) and below ~2^-39 max|X| flush to 0: contributions far below fp32's rounding of H. Memory: K^2 x (4 + 8) bytes while
// accumulating, plus 4 x rows x K bytes for the split batch.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/backend.h"

namespace gptq::cuda {

class CudaHessian final : public HessianAccumulator {
 public:
  // blas: a handle on `stream` in plain fp32 (no TF32: the products round as the CPU's do), owned
  // by the caller and outliving this.
  CudaHessian(cublasHandle_t blas, cudaStream_t stream, int64_t K);
  void add(const Tensor& x, int64_t samples) override;
  const std::vector<float>& host() override;
  std::vector<float> take() override;
  int64_t K() const { return K_; }
  cudaStream_t stream() const { return stream_; }
  // H: [K, K] fp32 symmetric in device memory, valid until the next add() or take().
  const float* device();

 private:
  void allocate();
  cublasHandle_t blas_;
  cudaStream_t stream_;
  int64_t K_;
  int64_t nsamples_ = 0;
  std::shared_ptr<void> sum_;   // [K, K] fp64, upper triangle: the running H
  std::shared_ptr<void> work_;  // [K, K] fp32: a batch's product (add()), then the rounded H
  std::shared_ptr<void> split_; // [2 rows, K] fp16: the batch split (hessian_split), grown as needed
  size_t split_bytes_ = 0;
  std::shared_ptr<void> amax_;  // uint32: the bits of the batch's max |x|
  bool rounded_ = false;        // work_ holds H (no add since it was rounded)
  bool host_valid_ = false;     // host_ holds H
  std::vector<float> host_;
};

}  // namespace gptq::cuda
