#include "core/memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "gptq/error.h"

namespace gptq {

namespace {

uint64_t read_u64_file(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return UINT64_MAX;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  return end && *end == 0 ? uint64_t(v) : UINT64_MAX;
}

uint64_t parse_limit(const char* s) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (!end || end == s || !(v >= 0)) return UINT64_MAX;
  const std::string unit = end;
  const double mul = unit == "KiB" ? 1024.0 : unit == "MiB" ? 1048576.0 : unit == "GiB" ? 1073741824.0 : 1.0;
  return v * mul >= 1.8e19 ? UINT64_MAX : uint64_t(v * mul);
}

}  // namespace

uint64_t available_memory() {
  uint64_t avail = UINT64_MAX;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (mi >> key >> kib >> unit)
    if (key == "MemAvailable:") {
      avail = kib * 1024;
      break;
    }
  const uint64_t max = read_u64_file("/sys/fs/cgroup/memory.max");
  const uint64_t cur = read_u64_file("/sys/fs/cgroup/memory.current");
  if (max != UINT64_MAX && cur != UINT64_MAX) avail = std::min(avail, max > cur ? max - cur : 0);
  if (const char* e = std::getenv("GPTQ_MEMORY_LIMIT")) avail = std::min(avail, parse_limit(e));
  return avail;
}

std::string format_bytes(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t(1) << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(b) / 1073741824.0);
  else if (b >= (uint64_t(1) << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / 1048576.0);
  else std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}

void check_memory(uint64_t need, uint64_t available, const std::string& what) {
  if (need > available)
    fail(what, " needs ", format_bytes(need), " of memory, but only ", format_bytes(available), " is available");
}

}  // namespace gptq
