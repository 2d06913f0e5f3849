#include "backend/cuda/device_memory.h"

#include <algorithm>
#include <atomic>

#include "backend/cuda/cuda_common.h"
#include "core/memory.h"

namespace gptq::cuda {

namespace {
std::atomic<uint64_t> g_device_bytes{0};
}  // namespace

std::shared_ptr<void> device_alloc(size_t bytes, const std::string& what) {
  void* p = nullptr;
  bytes = std::max<size_t>(bytes, 1);
  if (const cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total = 0;
    (void)cudaMemGetInfo(&free_b, &total);
    fail("out of GPU memory", what.empty() ? "" : cat(" for ", what), ": ", format_bytes(bytes), " needed, ",
         format_bytes(free_b), " free of ", format_bytes(total));
  }
  g_device_bytes += bytes;
  return std::shared_ptr<void>(p, [bytes](void* q) {
    cudaFree(q);
    g_device_bytes -= bytes;
  });
}

uint64_t device_bytes_allocated() { return g_device_bytes.load(); }

}  // namespace gptq::cuda
