// How much memory this process may still take, for refusing up front (with the numbers) a load or a
// request that would not fit, instead of failing deep inside an allocation or swapping for minutes.
#pragma once

#include <cstdint>
#include <string>

namespace gptq {

// MemAvailable of /proc/meminfo, lowered to the cgroup's memory.max - memory.current where one is
// set; UINT64_MAX when neither can be read. The environment variable GPTQ_MEMORY_LIMIT (bytes, or
// with a KiB/MiB/GiB suffix) lowers it further (tests use it).
uint64_t available_memory();

// "12.3 GiB", "512.0 MiB": for messages.
std::string format_bytes(uint64_t bytes);

// Throws gptq::Error "<what> needs <need> of memory, but only <avail> is available" when need is
// more than `available`.
void check_memory(uint64_t need, uint64_t available, const std::string& what);

}  // namespace gptq
