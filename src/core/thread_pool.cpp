#include "core/thread_pool.h"

#include <cblas.h>

#include <algorithm>
#include <memory>

namespace gptq {

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

namespace {
// Decoding one token runs ~50 short jobs back to back; waking a thread blocked on a condition
// variable costs tens of microseconds, so both sides spin this long before they block.
constexpr int kSpin = 1 << 14;
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

void ThreadPool::worker(int index) {
  size_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpin && generation_.load(std::memory_order_acquire) == seen && !stop_.load(); ++i)
      cpu_relax();
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    (*job_.load(std::memory_order_acquire))(index, n_threads_);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_.store(&fn, std::memory_order_release);
  pending_.store(n_threads_ - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);  // pairs with the workers' predicate check: no lost wake-up
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_start_.notify_all();
  fn(0, n_threads_);
  for (int i = 0; i < kSpin && pending_.load(std::memory_order_acquire) != 0; ++i) cpu_relax();
  if (pending_.load(std::memory_order_acquire) != 0) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_done_.wait(lock, [&] { return pending_.load() == 0; });
  }
}

void ThreadPool::parallel_for(size_t begin, size_t end, const std::function<void(size_t, size_t)>& fn,
                              size_t grain) {
  if (end <= begin) return;
  grain = std::max<size_t>(grain, 1);
  const size_t n = end - begin;
  const size_t n_grains = (n + grain - 1) / grain;
  const size_t n_chunks = std::min<size_t>(n_grains, size_t(n_threads_));
  if (n_chunks <= 1) {
    fn(begin, end);
    return;
  }
  run([&](int t, int) {
    if (size_t(t) >= n_chunks) return;
    const size_t g0 = n_grains * size_t(t) / n_chunks;
    const size_t g1 = n_grains * size_t(t + 1) / n_chunks;
    const size_t b = begin + g0 * grain;
    const size_t e = std::min(end, begin + g1 * grain);
    if (b < e) fn(b, e);
  });
}

namespace {
std::unique_ptr<ThreadPool>& global_slot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
}  // namespace

// The pool owns the parallelism: BLAS runs single-threaded inside its tasks (OpenBLAS's own
// threads on top of ours would oversubscribe the cores). Code that calls BLAS from one thread
// for a big factorization raises it for that call (quant/blas_threads.h).
static void single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

ThreadPool& ThreadPool::global() {
  auto& p = global_slot();
  if (!p) {
    single_threaded_blas();
    p = std::make_unique<ThreadPool>(hardware_threads());
  }
  return *p;
}

void ThreadPool::set_num_threads(int n) {
  if (n <= 0) n = hardware_threads();
  single_threaded_blas();
  auto& p = global_slot();
  if (p && p->size() == n) return;
  p = std::make_unique<ThreadPool>(n);
}

}  // namespace gptq
