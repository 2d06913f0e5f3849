// Decoding one chunk of the GPTQ device layout (gptq_kernels.h): `bits` words -> 32 values
// q - zero, exact in fp32. Shared by the CUDA kernels and the host test that checks the layout
// (tests/test_cuda_layout.cpp), so the test runs the very arithmetic the kernels run.
//
// The trick (no shifts per code, no int->float conversion): the chunk's bit stream is viewed
// through 16-bit-spaced 32-bit windows, window m = stream bits [16m, 16m+32) (even m: word m/2;
// odd m: the funnel shift of words m/2 and m/2+1 by 16). Code i (stream bits [p, p+b), p = i*b)
// sits in window p/16 at offset o = p%16 <= 15, so its bits are at most bit 22 of the window:
// OR-ing them into the mantissa of 2^23 gives the float 2^23 + q*2^o exactly, and
//   fma(2^23 + q*2^o, 2^-o, -(2^(23-o) + zero)) = q - zero
// exactly (the product is exact, the sum is an integer below 2^24). All offsets are compile-time
// constants once the loops are unrolled: one LOP3 and one FFMA per code, plus one SHF per window.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define GPTQ_HD __host__ __device__ __forceinline__
#else
#define GPTQ_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define GPTQ_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define GPTQ_UNROLL  // nvcc's host pass: host code does not run this hot
#else
#define GPTQ_UNROLL _Pragma("GCC unroll 16")
#endif

namespace gptq::cuda {

GPTQ_HD float gptq_bits_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

GPTQ_HD float gptq_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Window m of the chunk's stream (see above); words past the chunk read as 0.
template <int BITS>
GPTQ_HD uint32_t gptq_window(const uint32_t (&w)[BITS], int m) {
  const int j = m >> 1;
  if ((m & 1) == 0) return w[j];
  const uint32_t hi = j + 1 < BITS ? w[j + 1] : 0u;
  // Plain shifts, not __funnelshift_r: its inline asm is not merged across the codes that share
  // a window; ptxas makes one SHF of this anyway, and drops `hi` where the mask never reaches it.
  return (w[j] >> 16) | (hi << 16);
}

// The per-chunk constants: zc[o] = -(2^(23-o) + zero) for the 16 possible offsets (only those
// a bit width uses are read; the compiler drops the rest).
struct GptqZeroConsts {
  float zc[16];
};
GPTQ_HD GptqZeroConsts gptq_zero_consts(float zero) {
  GptqZeroConsts z;
GPTQ_UNROLL
  for (int o = 0; o < 16; ++o) z.zc[o] = -(float(1 << (23 - o)) + zero);
  return z;
}

// Code i of the chunk as q - zero. i must be a compile-time constant after unrolling.
template <int BITS>
GPTQ_HD float gptq_code_minus_zero(const uint32_t (&w)[BITS], const GptqZeroConsts& z, int i) {
  const int p = i * BITS, m = p >> 4, o = p & 15;
  const uint32_t mask = ((1u << BITS) - 1u) << o;
  const float f = gptq_bits_as_float((gptq_window<BITS>(w, m) & mask) | 0x4B000000u);
  return gptq_fma(f, 1.0f / float(1 << o), z.zc[o]);
}

}  // namespace gptq::cuda
