// Random GPTQ problems for the solver tests (CPU and CUDA): weights, correlated inputs like a
// linear layer's activations, and their Hessian.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/cpu/hessian.h"
#include "test_pool.h"

namespace gptq_test {

inline std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Gaussian weights with 1 % outliers 8x larger (what makes the grid search matter).
inline std::vector<float> weights_with_outliers(size_t n, uint32_t seed) {
  auto w = randn(n, seed, 0.02f);
  std::mt19937 rng(seed + 7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (auto& x : w)
    if (u(rng) < 0.01f) x *= 8.f;
  return w;
}

// X: [n, K] with correlated columns (a random mixing of i.i.d. noise plus per-column scales),
// like activations feeding a linear layer.
inline std::vector<float> correlated_inputs(int64_t n, int64_t K, uint32_t seed) {
  const auto Z = randn(size_t(n * K), seed);
  const auto A = randn(size_t(K * K), seed + 1, 1.f / std::sqrt(float(K)));
  std::vector<float> X(size_t(n * K), 0.f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < K; ++j) {
      float s = Z[size_t(t * K + j)];
      for (int64_t i = 0; i < K; ++i) s += 2.f * Z[size_t(t * K + i)] * A[size_t(i * K + j)];
      X[size_t(t * K + j)] = s * (0.5f + float(j % 7) / 4.f);
    }
  return X;
}

// H: [K, K] of X: [n, K] as n one-token samples (the CPU accumulator).
inline std::vector<float> hessian_of(const std::vector<float>& X, int64_t n, int64_t K) {
  gptq::cpu::HessianAccumulator acc(test_pool(), K);
  acc.add_batch(X.data(), n, 1);
  return acc.take();
}

// ||(W - Q) X^T||^2 in double, the layer's output error on the inputs X: [n, K]. W, Q: [N, K].
inline double layer_error(const std::vector<float>& W, const std::vector<float>& Q, const std::vector<float>& X,
                          int64_t N, int64_t K, int64_t n) {
  double e = 0;
  for (int64_t r = 0; r < N; ++r)
    for (int64_t t = 0; t < n; ++t) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += (double(W[size_t(r * K + k)]) - Q[size_t(r * K + k)]) * X[size_t(t * K + k)];
      e += s * s;
    }
  return e;
}

}  // namespace gptq_test
