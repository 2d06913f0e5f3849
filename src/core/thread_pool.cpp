#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <system_error>

#include "gptq/error.h"

namespace gptq {

int hardware_threads() {
  // The CPUs this process may run on (taskset, cgroup cpusets), not all the machine has.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

namespace {
// The pools whose tasks the calling thread's work is inside, innermost first (for the nesting
// check). A chain, not just the innermost pool: a task of A may run pool B, and a task of B calling
// A again would deadlock on A just the same (A's caller holds call_mu_ and waits for that task).
// A worker's chain continues with its caller's chain (the caller is blocked in run(), so those
// scopes outlive the task), which catches A -> B -> A when B's task runs on one of B's workers.
struct CurrentScope;
thread_local const CurrentScope* t_scope = nullptr;

struct CurrentScope {
  const ThreadPool* pool;
  const CurrentScope* outer;  // the enclosing scopes (the caller's, for a worker)
  const CurrentScope* saved;  // what t_scope was on this thread
  CurrentScope(const ThreadPool* p, const CurrentScope* o) : pool(p), outer(o), saved(t_scope) { t_scope = this; }
  explicit CurrentScope(const ThreadPool* p) : CurrentScope(p, t_scope) {}
  ~CurrentScope() { t_scope = saved; }
  CurrentScope(const CurrentScope&) = delete;
  CurrentScope& operator=(const CurrentScope&) = delete;
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

int default_threads() {
  if (const char* e = std::getenv("GPTQ_THREADS"); e && *e) {
    char* end = nullptr;
    const long n = std::strtol(e, &end, 10);
    if (*end == '\0' && n > 0 && n <= 4L * hardware_threads()) return int(n);
  }
  return hardware_threads();
}

ThreadPool::ThreadPool(int n_threads) {
  const int hw = hardware_threads();
  if (n_threads <= 0) n_threads = default_threads();
  n_threads_ = std::clamp(n_threads, 1, 4 * hw);
  try {
    threads_.reserve(size_t(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    const size_t started = threads_.size() + 1;  // counted before stop_workers() clears the list
    stop_workers();
    fail("cannot start ", n_threads_, " threads (", started, " started): ", e.what());
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

bool ThreadPool::in_task() const {
  for (const CurrentScope* s = t_scope; s; s = s->outer)
    if (s->pool == this) return true;
  return false;
}

void ThreadPool::run_task(const std::function<void(int, int)>& fn, int index, const void* caller_scope) {
  CurrentScope scope(this, static_cast<const CurrentScope*>(caller_scope));
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
    run_task(*job_.load(std::memory_order_acquire), index, caller_scope_);
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
    run_task(fn, 0, t_scope);
  } else {
    caller_scope_ = t_scope;  // published to the workers by the generation increment below
    job_.store(&fn, std::memory_order_release);
    pending_.store(n_threads_ - 1, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the workers' predicate check: no lost wake-up
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    cv_start_.notify_all();
    run_task(fn, 0, t_scope);
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
  const size_t n_grains = n / grain + (n % grain != 0);  // not (n + grain - 1) / grain: no overflow
  const size_t n_chunks = std::min<size_t>(n_grains, size_t(n_threads_));
  if (n_chunks <= 1) {
    if (in_task()) throw std::logic_error("ThreadPool::parallel_for called from inside one of its own tasks");
    CurrentScope scope(this);
    fn(begin, end);
    return;
  }
  run([&](int t, int) {
    if (size_t(t) >= n_chunks) return;
    // Grains [g0, g1): the first n_grains % n_chunks chunks get one more. Written so that nothing
    // wraps for ranges near SIZE_MAX (n_grains * t or begin + n_grains * grain would).
    const size_t base = n_grains / n_chunks, extra = n_grains % n_chunks, ti = size_t(t);
    const size_t g0 = ti * base + std::min(ti, extra);
    const size_t g1 = g0 + base + (ti < extra);
    const size_t b = begin + g0 * grain;
    const size_t e = g1 == n_grains ? end : begin + g1 * grain;
    fn(b, e);
  });
}

}  // namespace gptq
