// A fixed pool of worker threads for data-parallel loops. ParallelFor may be
// called from several threads at once; the caller works on its own loop too.
#pragma once

#include <cstdint>
#include <functional>

namespace plume {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;

  // Runs fn(begin, end) over [0, n) split into chunks of at least `grain`
  // items, and returns when all of them are done.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // A process-wide pool sized to the hardware.
  static ThreadPool& Default();

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace plume
