#include "core/thread_pool.h"

#include <algorithm>
#include <stdexcept>
#include <system_error>

#include "gptq/error.h"

namespace gptq {

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

namespace {
// The pool whose task the calling thread is running (for the nesting check).
thread_local const ThreadPool* t_current = nullptr;

struct CurrentScope {
  const ThreadPool* saved;
  explicit CurrentScope(const ThreadPool* p) : saved(t_current) { t_current = p; }
  ~CurrentScope() { t_current = saved; }
};

// Decoding one token runs ~50 short jobs back to back; waking a thread blocked on a condition
// variable costs tens of microseconds, so both sides spin this long before they block.
constexpr int kSpin = 1 << 14;
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  const int hw = hardware_threads();
  if (n_threads <= 0) n_threads = hw;
  n_threads_ = std::clamp(n_threads, 1, 4 * hw);
  try {
    threads_.reserve(size_t(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    stop_workers();
    fail("cannot start ", n_threads_, " threads (", threads_.size() + 1, " started): ", e.what());
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

bool ThreadPool::in_task() const { return t_current == this; }

void ThreadPool::run_task(const std::function<void(int, int)>& fn, int index) {
  CurrentScope scope(this);
  try {
    fn(index, n_threads_);
  } catch (...) {
    std::lock_guard<std::mutex> lock(err_mu_);
    if (!error_) error_ = std::current_exception();
  }
}

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
    run_task(*job_.load(std::memory_order_acquire), index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (in_task()) throw std::logic_error("ThreadPool::run called from inside one of its own tasks (pools do not nest)");
  std::lock_guard<std::mutex> call(call_mu_);
  error_ = nullptr;
  if (n_threads_ == 1) {
    run_task(fn, 0);
  } else {
    job_.store(&fn, std::memory_order_release);
    pending_.store(n_threads_ - 1, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the workers' predicate check: no lost wake-up
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    cv_start_.notify_all();
    run_task(fn, 0);
    for (int i = 0; i < kSpin && pending_.load(std::memory_order_acquire) != 0; ++i) cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_done_.wait(lock, [&] { return pending_.load() == 0; });
    }
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
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
    if (in_task()) throw std::logic_error("ThreadPool::parallel_for called from inside one of its own tasks");
    CurrentScope scope(this);
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

}  // namespace gptq
