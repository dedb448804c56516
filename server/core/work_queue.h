// A fixed set of threads running submitted tasks in FIFO order, with a
// bounded queue: Submit refuses work when it is full instead of growing
// without limit. The gRPC layer runs GEMV here so that it never blocks a
// gRPC callback thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace plume::core {

class Metrics;

class WorkQueue {
 public:
  // With `metrics`, the queue's depth is recorded as plume_queue_depth (the
  // Engine's queue has none: its batcher records depth and queue time).
  WorkQueue(int threads, int64_t max_queued, Metrics* metrics = nullptr);
  ~WorkQueue();  // runs what is queued, then joins

  enum class Priority {
    kNormal,  // FIFO: batches, upload ends, appends, echoes
    // Ahead of every normal task still queued (FIFO among themselves): short
    // control work, such as a delete, that must not wait behind a backlog of
    // batches.
    kFirst,
  };

  // False when the queue is full or shutting down; the task is not run.
  bool Submit(std::function<void()> task, Priority priority = Priority::kNormal);
  int64_t queued() const;
  // Waits until no task is queued or running.
  void WaitIdle();

 private:
  void Loop();

  struct Task {
    std::function<void()> fn;
  };

  const int64_t max_queued_;
  Metrics* const metrics_;
  mutable absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  int64_t first_ ABSL_GUARDED_BY(mu_) = 0;  // kFirst tasks at the front of tasks_
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace plume::core
