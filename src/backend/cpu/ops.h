// Element-wise and attention ops of the Llama forward pass, fp32, CPU. Plain C++ reference code,
// with the heavy parts (attention products) on OpenBLAS.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace gptq::cpu {

// y[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * w    x, y: [T, D] (may alias)
void rms_norm(ThreadPool& pool, const float* x, const float* w, int64_t T, int64_t D, float eps, float* y);

// Rotary embedding, HF rotate-half layout, in place on x: [T, n_heads, head_dim] with row stride
// `stride` floats; cos/sin: [T, head_dim/2] for each token's position.
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t stride, const float* cos, const float* sin);

// g[t, i] = silu(g[t, i]) * u[t, i]     g, u: [T, F]
void silu_mul(ThreadPool& pool, float* g, const float* u, int64_t T, int64_t F);

// Causal grouped-query attention for T new queries at positions p0..p0+T-1 against a cache
// holding positions 0..p0+T-1.
// q: [T, n_heads * hd] (row stride n_heads*hd); k_cache(kvh), v_cache(kvh): [L_max, hd];
// out: [T, n_heads * hd]. Heads h use kv head h / (n_heads / n_kv).
void attention(ThreadPool& pool, const float* q, int64_t T, int64_t p0, int64_t n_heads, int64_t n_kv, int64_t hd,
               float* const* k_cache, float* const* v_cache, float* out);

}  // namespace gptq::cpu
