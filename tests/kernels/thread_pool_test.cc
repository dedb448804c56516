#include "plume/reference/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace {

TEST(ThreadPool, CoversRangeExactlyOnce) {
  plume::ThreadPool pool(3);
  EXPECT_EQ(pool.size(), 3);
  for (int64_t n : {0, 1, 7, 100, 12345}) {
    for (int64_t grain : {1, 3, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
        ASSERT_LE(0, b);
        ASSERT_LT(b, e);
        ASSERT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << grain << " " << i;
    }
  }
}

TEST(ThreadPool, ConcurrentCallersAndNesting) {
  plume::ThreadPool pool(2);
  constexpr int kCallers = 6, kRounds = 200;
  std::vector<std::thread> callers;
  std::atomic<int64_t> bad{0};
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        const int64_t n = 50 + (t * 37 + round * 11) % 400;
        std::vector<int64_t> out(static_cast<size_t>(n), -1);
        pool.ParallelFor(n, 4, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) out[i] = i * t;
        });
        for (int64_t i = 0; i < n; ++i)
          if (out[i] != i * t) bad.fetch_add(1);
        if (round % 50 == 0) {  // a nested loop inside a chunk must not deadlock
          std::atomic<int64_t> sum{0};
          pool.ParallelFor(8, 1, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i)
              pool.ParallelFor(10, 1, [&](int64_t bb, int64_t ee) { sum.fetch_add(ee - bb); });
          });
          if (sum.load() != 80) bad.fetch_add(1);
        }
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, DefaultAndSingleThread) {
  EXPECT_GE(plume::ThreadPool::Default().size(), 1);
  plume::ThreadPool one(1);
  int64_t total = 0;  // runs inline on the caller: no data race
  one.ParallelFor(1000, 1, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total, 1000);
}

}  // namespace
