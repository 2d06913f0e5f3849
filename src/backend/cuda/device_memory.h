// Device memory of the CUDA backend, counted (Backend::device_bytes_in_use) and refused with the
// sizes when it runs out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace gptq::cuda {

// Uninitialized device memory on the current device, freed with its last reference. Throws
// gptq::Error naming `what` and the free and total memory when cudaMalloc fails.
std::shared_ptr<void> device_alloc(size_t bytes, const std::string& what = "");

// Bytes this process holds through device_alloc, and the most it has held at once.
uint64_t device_bytes_allocated();
uint64_t device_bytes_peak();

}  // namespace gptq::cuda
