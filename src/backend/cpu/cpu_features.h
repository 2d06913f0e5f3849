// Which SIMD paths the CPU kernels may use. Chosen once at run time from cpuid (the library is
// compiled for baseline x86-64; SIMD functions carry target attributes), and overridable so that
// tests can run every path against the scalar reference.
#pragma once

namespace gptq::cpu {

enum class SimdLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

SimdLevel detected_simd();  // what this CPU supports
SimdLevel active_simd();    // min(detected, forced); what kernels use
void force_simd(SimdLevel max_level);  // caps active_simd() (tests); kAvx512 restores detection
const char* simd_name(SimdLevel l);

}  // namespace gptq::cpu
