// The GPTQ solver on one GPU (quant::gptq_quantize's semantics, quant/gptq.h) with the
// factorization in cuSOLVER (fp64), the column loop in our kernels (backend/cuda/gptq_solver.cu)
// and the lazy updates in cuBLAS (fp32). It reads the Hessian where the CUDA backend accumulated
// it (backend/cuda/cuda_hessian.h); quant/solver.h puts it behind the solver interface.
//
// The solver, step by step (the CPU's, gptq.cpp, with the same quant::ColumnPlan):
//   diag(H) downloaded → plan_columns (dead inputs, order, g_idx, grids per column) on the host;
//   W uploaded; whole-row or static grids (gptq_group_grids); Wp = W permuted, dead zeroed;
//   per damping attempt: a = J Hp J + damp I (fp64), potrf (lower), the factor's diagonal checked
//   (> 0 and finite: the CPU's test, which also catches a NaN cuSOLVER does not report), trtri,
//   U = J L^-1 J in fp32; then per lazy block of spec.block_size (<= 128) columns the column
//   kernel and Wp[:, i2:] -= Err · U[i1:i2, i2:] (cublasSgemm, fp32 as on the CPU); codes,
//   (Wq when asked), scales, zeros and per-row losses downloaded through one pinned buffer.
//   Device buffers and the pinned staging are kept across calls (grown as needed): a module costs
//   no cudaMalloc/cudaFree (each an implicit device synchronization) once the largest was seen. Deterministic: no atomics in our kernels, cuSOLVER
//   in its deterministic mode, cuBLAS on one stream with its default (non-atomic) algorithms.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "core/thread_pool.h"
#include "io/gptq_format.h"
#include "quant/gptq.h"

namespace gptq::cuda {

class CudaSolver {
 public:
  // On the current device. pool: host copies into and out of the pinned staging run on it (may be
  // null: on the calling thread).
  explicit CudaSolver(cudaStream_t stream, ThreadPool* pool = nullptr);
  ~CudaSolver();
  CudaSolver(const CudaSolver&) = delete;
  CudaSolver& operator=(const CudaSolver&) = delete;

  cudaStream_t stream() const { return stream_; }

  // quant::gptq_quantize(W, H, N, K, spec) on the GPU. W: [N, K] fp32 on the host; H: [K, K] fp32
  // in device memory (only its upper triangle is read; not modified). spec.block_size must be at
  // most 128 (the column kernel's width); gptq::Error for that and what gptq_quantize refuses.
  // with_wq false: the result's Wq is left empty (not downloaded). Synchronizes the stream.
  quant::QuantResult gptq_solve(const float* W, const float* H, int64_t N, int64_t K, const quant::QuantSpec& spec,
                                bool with_wq = true);

  // quant::Solver::module_error: W: [q.N, q.K] fp32 on the host, q a packed matrix on the host, H:
  // [K, K] symmetric (both triangles) in device memory. On the device: D = W - dequantize(q) (the
  // reference's arithmetic), one fp32 GEMM [W; D]·H, each row's dot with its own in double; the
  // row dots are summed in row order on the host. Synchronizes the stream.
  double module_error(const float* W, const quant::QuantMatrix& q, const float* H);

 private:
  struct Handles;
  struct Buffers;
  cudaStream_t stream_;
  ThreadPool* pool_;
  std::unique_ptr<Handles> h_;
  std::unique_ptr<Buffers> b_;
};

}  // namespace gptq::cuda
