// Internal interface between the qgemm dispatcher (qgemm.cpp) and its per-ISA kernel files.
#pragma once

#include <cstdint>

#include "backend/cpu/qgemm.h"
#include "core/thread_pool.h"

namespace gptq::cpu::detail {

// One qgemm call after the dispatcher's per-call preprocessing.
struct QgemmCall {
  const PreparedQuantMatrix* w = nullptr;
  const float* xp = nullptr;    // [T, K] x with columns in the prepared (group-sorted) order
  const float* xsum = nullptr;  // [T, n_groups] sum of xp over each group's columns
  int64_t T = 0;
  float* y = nullptr;           // [T, N], overwritten (bias is added by the dispatcher)
  int64_t max_direct_t = 64;
  ThreadPool* pool = nullptr;
};

// Every path fills c.y completely; the SIMD ones require c.w->unit_aligned.
void qgemm_scalar(const QgemmCall& c);
void qgemm_avx2(const QgemmCall& c);
void qgemm_avx512(const QgemmCall& c);

}  // namespace gptq::cpu::detail
