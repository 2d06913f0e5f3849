// One thread pool for the kernel-level tests (kernels take the pool they run on).
#pragma once

#include "core/thread_pool.h"

inline gptq::ThreadPool& test_pool() {
  static gptq::ThreadPool pool(0);
  return pool;
}
