// A fixed pool of worker threads with a blocking parallel_for.
// One pool per process (ThreadPool::global()), sized by set_num_threads() or the core count.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace gptq {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) on every thread (the caller is thread 0) and waits.
  void run(const std::function<void(int, int)>& fn);

  // Splits [begin, end) into contiguous chunks, at most one per thread, and calls
  // fn(chunk_begin, chunk_end) for each. Chunks are multiples of `grain` (except the last).
  void parallel_for(size_t begin, size_t end, const std::function<void(size_t, size_t)>& fn,
                    size_t grain = 1);

  static ThreadPool& global();
  // Resizes the global pool; 0 means "all hardware threads".
  static void set_num_threads(int n);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  std::atomic<const std::function<void(int, int)>*> job_{nullptr};
  std::atomic<size_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

// Shorthand for ThreadPool::global().parallel_for.
inline void parallel_for(size_t begin, size_t end, const std::function<void(size_t, size_t)>& fn,
                         size_t grain = 1) {
  ThreadPool::global().parallel_for(begin, end, fn, grain);
}

int hardware_threads();

}  // namespace gptq
