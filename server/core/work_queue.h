// A fixed set of threads running submitted tasks in FIFO order, with a
// bounded queue: Submit refuses work when it is full instead of growing
// without limit. The gRPC layer runs GEMV here so that it never blocks a
// gRPC callback thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace plume::core {

class WorkQueue {
 public:
  WorkQueue(int threads, int64_t max_queued);
  ~WorkQueue();  // runs what is queued, then joins

  // False when the queue is full or shutting down; the task is not run.
  bool Submit(std::function<void()> task);
  int64_t queued() const;

 private:
  void Loop();

  const int64_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace plume::core
