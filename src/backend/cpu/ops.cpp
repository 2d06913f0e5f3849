#include "backend/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace gptq::cpu {

void rms_norm(ThreadPool& pool, const float* x, const float* w, int64_t T, int64_t D, float eps, float* y) {
  pool.parallel_for(0, size_t(T), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      const float* xr = x + t * D;
      float* yr = y + t * D;
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
      const float inv = 1.f / std::sqrt(float(ss / double(D)) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  }, 8);
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t hd, int64_t stride, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + t * stride + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void silu_mul(ThreadPool& pool, float* g, const float* u, int64_t T, int64_t F) {
  pool.parallel_for(0, size_t(T * F), [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) {
      const float v = g[i];
      g[i] = v / (1.f + std::exp(-v)) * u[i];
    }
  }, 4096);
}

void attention(ThreadPool& pool, const float* q, int64_t T, int64_t p0, int64_t n_heads, int64_t n_kv, int64_t hd,
               float* const* k_cache, float* const* v_cache, float* out) {
  const int64_t group = n_heads / n_kv;
  const int64_t ld = n_heads * hd;
  const float scale = 1.f / std::sqrt(float(hd));
  constexpr int64_t kRows = 256;  // query rows per score block: bounds the scratch to kRows x L
  const int64_t n_blocks = (T + kRows - 1) / kRows;
  // One task per (head, block of query rows).
  pool.parallel_for(0, size_t(n_heads * n_blocks), [&](size_t i0, size_t i1) {
    std::vector<float> s;
    for (size_t i = i0; i < i1; ++i) {
      const int64_t h = int64_t(i) / n_blocks;
      const int64_t r0 = (int64_t(i) % n_blocks) * kRows;
      const int64_t nr = std::min(kRows, T - r0);
      const int64_t lk = p0 + r0 + nr;  // keys needed by this block
      const float* K = k_cache[h / group];
      const float* V = v_cache[h / group];
      s.resize(static_cast<size_t>(nr * lk));
      // s[nr, lk] = scale * q_h[r0:r0+nr] · K[0:lk]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(nr), int(lk), int(hd), scale, q + r0 * ld + h * hd,
                  int(ld), K, int(hd), 0.f, s.data(), int(lk));
      for (int64_t r = 0; r < nr; ++r) {
        float* row = s.data() + r * lk;
        const int64_t visible = p0 + r0 + r + 1;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
        double sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
        for (int64_t j = visible; j < lk; ++j) row[j] = 0.f;
      }
      // out_h[r0:r0+nr] = s[nr, lk] · V[0:lk]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(nr), int(hd), int(lk), 1.f, s.data(), int(lk), V,
                  int(hd), 0.f, out + r0 * ld + h * hd, int(ld));
    }
  });
}

}  // namespace gptq::cpu
