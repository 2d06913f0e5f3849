#include "backend/cpu/cpu_features.h"

#include <atomic>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace gptq::cpu {

namespace {
#if defined(__x86_64__) || defined(__i386__)
// CPUID.1:ECX bit 29 (clang 14's __builtin_cpu_supports does not know "f16c").
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

SimdLevel detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma") && has_f16c())
    return SimdLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
    return SimdLevel::kAvx2;
#endif
  return SimdLevel::kScalar;
}
std::atomic<int> g_cap{int(SimdLevel::kAvx512)};
}  // namespace

SimdLevel detected_simd() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel active_simd() {
  const int d = int(detected_simd());
  const int c = g_cap.load(std::memory_order_relaxed);
  return SimdLevel(d < c ? d : c);
}

void force_simd(SimdLevel max_level) { g_cap.store(int(max_level), std::memory_order_relaxed); }

const char* simd_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::kAvx512: return "avx512";
    case SimdLevel::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace gptq::cpu
