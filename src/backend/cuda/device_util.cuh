// Device helpers shared by the CUDA kernels (.cu files only): fp16 pairs as 32-bit words, the
// mma.sync m16n8k16 fp16 -> fp32 tensor-core step, and where a head's rows lie in the paged KV cache.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "backend/cuda/cuda_common.h"

#include "backend/cuda/ops.h"

namespace gptq::cuda {

__device__ __forceinline__ __half2 u32_as_h2(uint32_t u) {
  __half2 h;
  memcpy(&h, &u, 4);
  return h;
}
__device__ __forceinline__ uint32_t h2_as_u32(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

// Programmatic dependent launch (sm_90+; no-ops below and when the launch did not ask for it):
// a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start once every
// block of the kernel before it has called allow_dependents() (or exited); it must call
// wait_for_inputs() before it reads anything that kernel (or one before it) wrote, or writes
// anything they read. Loads of data no kernel writes (weights) may go before the wait.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when pdl
// (the caller's choice: only on devices of compute capability 9.0 or more).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// d += a · b: A 16x16 row-major, B 16x8 column-major, fp16 operands, fp32 accumulation.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 fp16 matrices from shared memory (lane l gives the address of row l % 8 of matrix
// l / 8); lane (g, c) receives row g, columns 2c and 2c + 1 of each, or of its transpose (_trans).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The keys (which 0) or values (1) of kv head kvh of `layer` in cache block `block`: block_size
// rows of head_dim elements.
__device__ __forceinline__ const char* kv_head_base(const PagedKV& kv, int64_t layer, int32_t block, int which,
                                                    int64_t kvh) {
  return static_cast<const char*>(kv.blocks[block]) + size_t(layer) * kv.layer_bytes +
         size_t(which * kv.n_kv_heads + kvh) * kv.head_bytes;
}

}  // namespace gptq::cuda
