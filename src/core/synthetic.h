// The values of synthetic weights (bench --synthetic), as a pure function of (seed, index), so a
// GPU kernel computes exactly the bits the host does: no state, integer hashing, and float
// arithmetic whose only rounding is one final multiply (nothing for a compiler to contract into
// an FMA). Backend::random_dense_weight / random_gptq_weight (backend/backend.h) define which
// index each weight element uses.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GPTQ_HD __host__ __device__
#else
#define GPTQ_HD
#endif

namespace gptq {

// SplitMix64's output function (Steele, Lea, Flood 2014): one step of the generator from state x.
GPTQ_HD inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 64 random bits for element i of the stream `seed`: element i of the SplitMix64 sequence that
// starts from state splitmix64(seed) - 0x9e3779b97f4a7c15 (consecutive i are consecutive outputs).
GPTQ_HD inline uint64_t synthetic_bits(uint64_t seed, uint64_t i) { return splitmix64(splitmix64(seed) + i); }

// Uniform in [-scale, scale): r = the top 24 bits, (r - 2^23) * 2^-23 is exact in fp32 (an integer
// below 2^24 times a power of two), so the one rounding is the multiply by scale (round to nearest
// even, as on any IEEE fp32 unit).
GPTQ_HD inline float synthetic_uniform(uint64_t seed, uint64_t i, float scale) {
  const int32_t r = int32_t(synthetic_bits(seed, i) >> 40);
  return (float(r - (1 << 23)) * (1.0f / 8388608.0f)) * scale;
}

// A `bits`-bit GPTQ code (the top bits of the element's random bits), in [0, 2^bits).
GPTQ_HD inline uint32_t synthetic_code(uint64_t seed, uint64_t i, int bits) {
  return uint32_t(synthetic_bits(seed, i) >> (64 - bits));
}

// A GPTQ group scale: scale / 2^(bits-1) times a factor in [0.75, 1.25) (the top 22 bits r give
// (3 * 2^21 + r) * 2^-23, exact in fp32). Both products by powers of two are exact; the one
// rounding is the product of the two (then rounded to fp16 by the caller, to nearest even).
GPTQ_HD inline float synthetic_scale(uint64_t seed, uint64_t i, float scale, int bits) {
  const int32_t r = int32_t(synthetic_bits(seed, i) >> 42);
  const float factor = float(3 * (1 << 21) + r) * (1.0f / 8388608.0f);
  const float step = scale * (1.0f / float(1 << (bits - 1)));
  return step * factor;
}

}  // namespace gptq
