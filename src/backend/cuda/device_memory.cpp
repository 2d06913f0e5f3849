#include "backend/cuda/device_memory.h"

#include <algorithm>
#include <atomic>

#include "backend/cuda/cuda_common.h"
#include "core/memory.h"

namespace gptq::cuda {

namespace {
std::atomic<uint64_t> g_device_bytes{0}, g_device_peak{0};
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
  const uint64_t now = g_device_bytes += bytes;
  for (uint64_t peak = g_device_peak.load(); now > peak && !g_device_peak.compare_exchange_weak(peak, now);) {
  }
  return std::shared_ptr<void>(p, [bytes](void* q) {
    cudaFree(q);
    g_device_bytes -= bytes;
  });
}

uint64_t device_bytes_allocated() { return g_device_bytes.load(); }
uint64_t device_bytes_peak() { return g_device_peak.load(); }

}  // namespace gptq::cuda
