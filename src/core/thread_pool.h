// A fixed pool of worker threads with a blocking parallel_for. An instance, never a global: each
// CPU backend owns one (DESIGN.md), and kernels receive the pool they run on.
//
// Contract:
//  - run()/parallel_for() block until every task finished. A task that throws does not leave the
//    others running a destroyed job: all tasks of the call finish, then the first exception is
//    rethrown in the caller.
//  - Callers on different threads are served one call at a time (a mutex), never interleaved.
//  - Calling run() from inside one of the same pool's tasks would deadlock; it throws
//    std::logic_error instead (a programmer error: kernels must not nest). This includes calls
//    through another pool (a task of A runs pool B, whose task calls A), on any of B's threads.
//  - If creating a thread fails part-way, the constructor stops the ones it started and
//    rethrows as gptq::Error (no thread is left blocked).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gptq {

class ThreadPool {
 public:
  // n_threads <= 0: default_threads(); capped at 4x the hardware threads (more only thrash).
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) on every thread (the caller is thread 0) and waits.
  void run(const std::function<void(int, int)>& fn);

  // Splits [begin, end) into contiguous chunks, at most one per thread, and calls
  // fn(chunk_begin, chunk_end) for each. Chunks are multiples of `grain` (except the last).
  void parallel_for(size_t begin, size_t end, const std::function<void(size_t, size_t)>& fn, size_t grain = 1);

  // Whether the calling thread is running one of this pool's tasks, directly or through tasks of
  // other pools that such a task started.
  bool in_task() const;

 private:
  void worker(int index);
  void stop_workers();
  // caller_scope: the nesting chain the task runs inside (the caller's, see thread_pool.cpp).
  void run_task(const std::function<void(int, int)>& fn, int index, const void* caller_scope);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex call_mu_;  // one run() at a time
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  std::atomic<const std::function<void(int, int)>*> job_{nullptr};
  const void* caller_scope_ = nullptr;  // the caller's nesting chain for the current job
  std::atomic<size_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex err_mu_;
  std::exception_ptr error_;
};

int hardware_threads();
// What a pool of n <= 0 gets: GPTQ_THREADS from the environment when it is a valid count (1 .. 4x
// the hardware threads), else hardware_threads(). Lets a test runner or a shared machine cap every
// pool of a process, as OMP_NUM_THREADS does.
int default_threads();

}  // namespace gptq
