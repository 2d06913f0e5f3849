// ThreadPool (src/core/thread_pool.h) against its contract: coverage and grain of parallel_for,
// run() indices, exceptions rethrown after every task finished, nesting refused (also through a
// second pool), two pools nesting the allowed way, concurrent callers, the thread-count rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "gptq/error.h"

namespace {

using gptq::ThreadPool;
using Chunk = std::pair<size_t, size_t>;

// The chunks one parallel_for call hands out, sorted by start. fn only records: ranges near
// SIZE_MAX can be checked without iterating them.
std::vector<Chunk> chunks_of(ThreadPool& pool, size_t begin, size_t end, size_t grain) {
  std::mutex mu;
  std::vector<Chunk> got;
  pool.parallel_for(begin, end, [&](size_t b, size_t e) {
    std::lock_guard<std::mutex> lock(mu);
    got.emplace_back(b, e);
  }, grain);
  std::sort(got.begin(), got.end());
  return got;
}

// [begin, end) covered exactly once by non-empty contiguous chunks, one per thread at most, each
// starting on a grain boundary and a multiple of grain long except the one that ends at `end`.
void expect_partition(const std::vector<Chunk>& got, size_t begin, size_t end, size_t grain, int pool_size,
                      const std::string& what) {
  SCOPED_TRACE(what);
  if (end <= begin) {
    EXPECT_TRUE(got.empty()) << got.size() << " chunks for an empty range";
    return;
  }
  ASSERT_FALSE(got.empty());
  EXPECT_LE(got.size(), size_t(pool_size));
  const size_t g = std::max<size_t>(grain, 1);
  const size_t n = end - begin, n_grains = n / g + (n % g != 0);
  // Work is spread: as many chunks as there are grains, up to one per thread.
  EXPECT_EQ(got.size(), std::min(n_grains, size_t(pool_size)));
  EXPECT_EQ(got.front().first, begin);
  EXPECT_EQ(got.back().second, end);
  for (size_t i = 0; i < got.size(); ++i) {
    const auto [b, e] = got[i];
    EXPECT_LT(b, e) << "chunk " << i << " is empty";
    if (i > 0) {
      EXPECT_EQ(b, got[i - 1].second) << "gap or overlap before chunk " << i;
    }
    EXPECT_EQ((b - begin) % g, 0u) << "chunk " << i << " starts off a grain boundary";
    if (e != end) {
      EXPECT_EQ((e - b) % g, 0u) << "chunk " << i << " is not a multiple of the grain";
    }
  }
}

TEST(ThreadPoolParallelFor, CoversRangeExactlyOnceWithGrain) {
  const int cap = 4 * gptq::hardware_threads();
  for (int threads = 1; threads <= 5; ++threads) {
    ThreadPool pool(threads);
    ASSERT_EQ(pool.size(), std::min(threads, cap));
    const struct {
      size_t begin, end;
    } ranges[] = {{0, 0}, {5, 5}, {7, 3}, {0, 1}, {0, 2}, {3, 6}, {0, 4}, {10, 15}, {0, 17}, {1, 100}, {0, 1000}, {123, 4567}};
    for (const auto& r : ranges)
      for (size_t grain : {size_t(0), size_t(1), size_t(2), size_t(3), size_t(7), size_t(64), size_t(5000)}) {
        const std::string what = "pool " + std::to_string(pool.size()) + " [" + std::to_string(r.begin) + ", " +
                                 std::to_string(r.end) + ") grain " + std::to_string(grain);
        expect_partition(chunks_of(pool, r.begin, r.end, grain), r.begin, r.end, grain, pool.size(), what);
      }
  }
}

// Element-wise: every index is visited once (counts, not just chunk bounds).
TEST(ThreadPoolParallelFor, EveryElementVisitedOnce) {
  for (int threads = 1; threads <= 5; ++threads) {
    ThreadPool pool(threads);
    for (size_t n : {size_t(1), size_t(2), size_t(3), size_t(4), size_t(5), size_t(6), size_t(97)})
      for (size_t grain : {size_t(1), size_t(4)}) {
        std::vector<std::atomic<int>> hits(n + 20);
        pool.parallel_for(10, 10 + n, [&](size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
        }, grain);
        for (size_t i = 0; i < hits.size(); ++i)
          EXPECT_EQ(hits[i].load(), i >= 10 && i < 10 + n ? 1 : 0)
              << "pool " << threads << " n " << n << " grain " << grain << " index " << i;
      }
  }
}

// Ranges ending near SIZE_MAX: chunk ends must not wrap (begin + grains * grain overflows there).
TEST(ThreadPoolParallelFor, RangesNearSizeMaxDoNotWrap) {
  constexpr size_t kMax = std::numeric_limits<size_t>::max();
  for (int threads : {2, 3, 5}) {
    ThreadPool pool(threads);
    const struct {
      size_t begin, end, grain;
    } cases[] = {{kMax - 98, kMax - 1, 4},  // 97 elements, last grain partial: begin + 25 * 4 wraps
                 {kMax - 10, kMax, 3},
                 {0, kMax, 1},              // n_grains * thread index would wrap
                 {0, kMax, size_t(1) << 63},
                 {1, kMax, kMax / 2}};
    for (const auto& c : cases)
      expect_partition(chunks_of(pool, c.begin, c.end, c.grain), c.begin, c.end, c.grain, pool.size(),
                       "pool " + std::to_string(pool.size()) + " begin " + std::to_string(c.begin) + " end " +
                           std::to_string(c.end) + " grain " + std::to_string(c.grain));
  }
}

TEST(ThreadPoolRun, EachIndexOnceWithPoolSize) {
  for (int threads = 1; threads <= 5; ++threads) {
    ThreadPool pool(threads);
    for (int round = 0; round < 20; ++round) {
      std::vector<std::atomic<int>> hits(size_t(pool.size()) + 1);
      std::atomic<int> bad_n{0};
      pool.run([&](int t, int nt) {
        if (nt != pool.size()) bad_n.fetch_add(1);
        hits[size_t(std::clamp(t, 0, pool.size()))].fetch_add(1);  // out-of-range t lands in the last slot
      });
      EXPECT_EQ(bad_n.load(), 0);
      for (int t = 0; t <= pool.size(); ++t)
        EXPECT_EQ(hits[size_t(t)].load(), t < pool.size() ? 1 : 0) << "pool " << threads << " index " << t;
    }
  }
}

TEST(ThreadPoolRun, CallerIsThreadZero) {
  ThreadPool pool(3);
  const auto me = std::this_thread::get_id();
  std::vector<std::thread::id> ids(3);
  pool.run([&](int t, int) { ids[size_t(t)] = std::this_thread::get_id(); });
  EXPECT_EQ(ids[0], me);
  EXPECT_NE(ids[1], me);
  EXPECT_NE(ids[2], me);
  EXPECT_NE(ids[1], ids[2]);
}

// Sum of [0, n) through parallel_for, each chunk adding into one atomic.
uint64_t pool_sum(ThreadPool& pool, size_t n, size_t grain = 1) {
  std::atomic<uint64_t> s{0};
  pool.parallel_for(0, n, [&](size_t b, size_t e) {
    uint64_t local = 0;
    for (size_t i = b; i < e; ++i) local += i;
    s.fetch_add(local);
  }, grain);
  return s.load();
}

uint64_t expected_sum(size_t n) { return uint64_t(n) * uint64_t(n - 1) / 2; }

// ---- exceptions ---------------------------------------------------------------------------------

// One task throws (from the caller thread or a worker, std::runtime_error or gptq::Error) only
// after the others started; the others wait for that and then finish their work. run() must
// rethrow that exception, and only once all of them have finished.
TEST(ThreadPoolExceptions, RethrownAfterAllTasksFinished) {
  ThreadPool pool(4);
  const int n = pool.size();
  ASSERT_GE(n, 2);
  for (int round = 0; round < 200; ++round) {
    const int thrower = round % n;  // 0: the caller thread
    const bool gptq_error = (round / n) % 2 == 1;
    const std::string msg = "task " + std::to_string(thrower) + " failed in round " + std::to_string(round);
    std::atomic<bool> thrown{false};
    std::atomic<int> finished{0};
    bool caught = false;
    try {
      pool.run([&](int t, int) {
        if (t == thrower) {
          thrown.store(true);
          if (gptq_error) gptq::fail(msg);
          throw std::runtime_error(msg);
        }
        while (!thrown.load()) std::this_thread::yield();
        volatile uint64_t work = 0;  // the others are still busy when the exception is raised
        for (int i = 0; i < 2000; ++i) work = work + uint64_t(i);
        finished.fetch_add(1);
      });
    } catch (const gptq::Error& e) {
      caught = true;
      EXPECT_TRUE(gptq_error) << "a std::runtime_error came back as gptq::Error";
      EXPECT_EQ(std::string(e.what()), msg);
    } catch (const std::runtime_error& e) {
      caught = true;
      EXPECT_FALSE(gptq_error) << "the gptq::Error lost its type";
      EXPECT_EQ(std::string(e.what()), msg);
    }
    ASSERT_TRUE(caught) << "round " << round << ": run() returned normally";
    ASSERT_EQ(finished.load(), n - 1) << "round " << round << ": run() rethrew before the other tasks finished";
    // The pool works normally afterwards.
    ASSERT_EQ(pool_sum(pool, 1000), expected_sum(1000)) << "round " << round;
    ASSERT_EQ(pool_sum(pool, 3, 1), expected_sum(3)) << "round " << round;
  }
}

TEST(ThreadPoolExceptions, SeveralThrowersOneRethrown) {
  ThreadPool pool(4);
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> finished{0};
    std::string what;
    try {
      pool.run([&](int t, int) {
        if (t % 2 == 1) throw std::runtime_error("odd " + std::to_string(t));
        finished.fetch_add(1);
      });
    } catch (const std::runtime_error& e) {
      what = e.what();
    }
    EXPECT_TRUE(what == "odd 1" || what == "odd 3") << "round " << round << ": '" << what << "'";
    EXPECT_EQ(finished.load(), 2);
    // A call without a failure does not rethrow the previous call's exception.
    EXPECT_NO_THROW(pool.run([](int, int) {}));
  }
}

TEST(ThreadPoolExceptions, ParallelForRethrowsAndRecovers) {
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 50; ++round) {
      std::atomic<size_t> done{0};
      const size_t bad = size_t(round) % 90;  // index whose chunk throws
      EXPECT_THROW(pool.parallel_for(0, 90, [&](size_t b, size_t e) {
        if (bad >= b && bad < e) throw gptq::Error("bad index");
        done.fetch_add(e - b);
      }), gptq::Error);
      // Every other chunk ran to completion: all indices but the failing chunk's.
      EXPECT_EQ(done.load(), threads == 1 ? 0u : 60u) << "pool " << threads << " round " << round;
      // Single-chunk path (runs on the caller directly).
      EXPECT_THROW(pool.parallel_for(0, 1, [](size_t, size_t) { throw std::runtime_error("one"); }),
                   std::runtime_error);
      EXPECT_EQ(pool_sum(pool, 500), expected_sum(500));
    }
  }
}

// ---- nesting --------------------------------------------------------------------------------------

// Inside a task of `pool` (on every thread), each nested call must throw std::logic_error.
void expect_nested_calls_refused(ThreadPool& pool) {
  const int n = pool.size();
  const size_t un = static_cast<size_t>(n);
  std::vector<int> refused_run(un), refused_for(un), refused_single(un), in_task(un);
  pool.run([&](int t, int) {
    in_task[size_t(t)] = pool.in_task();
    try {
      pool.run([](int, int) {});
    } catch (const std::logic_error&) {
      refused_run[size_t(t)] = 1;
    }
    try {
      pool.parallel_for(0, 1000, [](size_t, size_t) {});
    } catch (const std::logic_error&) {
      refused_for[size_t(t)] = 1;
    }
    try {
      pool.parallel_for(0, 1, [](size_t, size_t) {});  // one chunk: would not even use the workers
    } catch (const std::logic_error&) {
      refused_single[size_t(t)] = 1;
    }
  });
  for (int t = 0; t < n; ++t) {
    EXPECT_EQ(in_task[size_t(t)], 1) << "thread " << t;
    EXPECT_EQ(refused_run[size_t(t)], 1) << "nested run() on thread " << t;
    EXPECT_EQ(refused_for[size_t(t)], 1) << "nested parallel_for() on thread " << t;
    EXPECT_EQ(refused_single[size_t(t)], 1) << "nested single-chunk parallel_for() on thread " << t;
  }
  EXPECT_FALSE(pool.in_task());
}

TEST(ThreadPoolNesting, SamePoolThrowsLogicError) {
  for (int threads : {1, 2, 4}) {
    SCOPED_TRACE("pool " + std::to_string(threads));
    ThreadPool pool(threads);
    expect_nested_calls_refused(pool);
    // Escaping the task, the logic_error reaches the caller, and the pool still works.
    EXPECT_THROW(pool.run([&](int, int) { pool.run([](int, int) {}); }), std::logic_error);
    EXPECT_THROW(pool.parallel_for(0, 100, [&](size_t, size_t) { pool.parallel_for(0, 1, [](size_t, size_t) {}); }),
                 std::logic_error);
    EXPECT_EQ(pool_sum(pool, 1000), expected_sum(1000));
  }
}

// A task of pool A may use pool B; every task of A gets a correct result from B.
TEST(ThreadPoolNesting, TwoPoolsNest) {
  for (int b_threads : {1, 3}) {
    ThreadPool a(3), b(b_threads);
    for (int round = 0; round < 20; ++round) {
      std::vector<uint64_t> sums(size_t(a.size()));
      std::vector<int> b_in_task(size_t(a.size())), a_seen_from_b(size_t(b.size()));
      a.run([&](int t, int) {
        b_in_task[size_t(t)] = b.in_task();
        sums[size_t(t)] = pool_sum(b, 1000 + size_t(t), 7);
        b.run([&](int bt, int) { a_seen_from_b[size_t(bt)] = a.in_task(); });
      });
      for (int t = 0; t < a.size(); ++t) {
        EXPECT_EQ(sums[size_t(t)], expected_sum(1000 + size_t(t))) << "task " << t << " of A";
        EXPECT_EQ(b_in_task[size_t(t)], 0) << "B reports a task of A as its own";
      }
      // B's tasks, started from inside A's tasks, count as inside A (also on B's own workers).
      for (int bt = 0; bt < b.size(); ++bt) EXPECT_EQ(a_seen_from_b[size_t(bt)], 1) << "B thread " << bt;
    }
    EXPECT_FALSE(a.in_task());
    EXPECT_FALSE(b.in_task());
  }
}

// A -> B -> A would deadlock (A's caller holds A and waits for the task that waits for B): it must
// throw on every thread of B, the calling one and B's workers.
TEST(ThreadPoolNesting, BackIntoTheOuterPoolThrows) {
  ThreadPool a(2), b(3);
  std::atomic<int> refused{0}, calls{0};
  a.run([&](int t, int) {
    if (t != 0) return;  // one task of A runs B at a time (B serializes its callers anyway)
    b.run([&](int, int) {
      calls.fetch_add(1);
      try {
        a.run([](int, int) {});
      } catch (const std::logic_error&) {
        refused.fetch_add(1);
      }
      try {
        a.parallel_for(0, 1, [](size_t, size_t) {});
      } catch (const std::logic_error&) {
        refused.fetch_add(1);
      }
    });
  });
  EXPECT_EQ(calls.load(), b.size());
  EXPECT_EQ(refused.load(), 2 * b.size());
  EXPECT_EQ(pool_sum(a, 100), expected_sum(100));
  EXPECT_EQ(pool_sum(b, 100), expected_sum(100));
}

// ---- concurrent callers ---------------------------------------------------------------------------

TEST(ThreadPoolConcurrency, FourCallerThreadsGetCorrectSums) {
  ThreadPool pool(3);
  constexpr int kCallers = 4, kCalls = 200;
  std::vector<int> wrong(kCallers, 0), done(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c)
    callers.emplace_back([&, c] {
      for (int i = 0; i < kCalls; ++i) {
        const size_t n = 100 + size_t(c) * 37 + size_t(i);  // each call its own answer
        if (pool_sum(pool, n, 1 + size_t(i % 5)) != expected_sum(n)) ++wrong[size_t(c)];
        ++done[size_t(c)];
      }
    });
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) {
    EXPECT_EQ(wrong[size_t(c)], 0) << "caller " << c;
    EXPECT_EQ(done[size_t(c)], kCalls) << "caller " << c;
  }
}

// ---- thread counts --------------------------------------------------------------------------------

TEST(ThreadPoolSize, NonPositiveMeansDefaultThreads) {
  const int hw = gptq::hardware_threads();
  ASSERT_GE(hw, 1);
  EXPECT_EQ(unsigned(hw), std::max(1u, std::thread::hardware_concurrency()));
  const char* env = std::getenv("GPTQ_THREADS");
  EXPECT_EQ(gptq::default_threads(), env && *env ? std::atoi(env) : hw);
  for (int n : {0, -1, -100}) {
    ThreadPool pool(n);
    EXPECT_EQ(pool.size(), gptq::default_threads()) << "n " << n;
    EXPECT_EQ(pool_sum(pool, 1000), expected_sum(1000));
  }
}

TEST(ThreadPoolSize, HugeRequestIsCapped) {
  const int hw = gptq::hardware_threads();
  ThreadPool pool(100000);
  EXPECT_EQ(pool.size(), 4 * hw);
  std::vector<std::atomic<int>> hits(size_t(pool.size()));
  pool.run([&](int t, int nt) {
    if (nt == pool.size()) hits[size_t(t)].fetch_add(1);
  });
  for (int t = 0; t < pool.size(); ++t) EXPECT_EQ(hits[size_t(t)].load(), 1) << "thread " << t;
  EXPECT_EQ(ThreadPool(4 * hw + 1).size(), 4 * hw);
  EXPECT_EQ(ThreadPool(1).size(), 1);
}

// Pools created and destroyed right after a call: no thread is left behind or blocked.
TEST(ThreadPoolSize, CreateRunDestroyRepeatedly) {
  for (int round = 0; round < 50; ++round) {
    ThreadPool pool(1 + round % 5);
    EXPECT_EQ(pool_sum(pool, 64), expected_sum(64)) << "round " << round;
  }
}

}  // namespace
