#include "server/core/work_queue.h"

#include "server/core/metrics.h"

namespace plume::core {

WorkQueue::WorkQueue(int threads, int64_t max_queued, Metrics* metrics)
    : max_queued_(max_queued), metrics_(metrics) {
  if (threads < 1) threads = 1;
  threads_.reserve(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : threads_) t.join();
}

bool WorkQueue::Submit(std::function<void()> task, Priority priority) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || static_cast<int64_t>(tasks_.size()) >= max_queued_) return false;
  Task t{std::move(task)};
  if (priority == Priority::kFirst) {
    tasks_.insert(tasks_.begin() + first_, std::move(t));
    ++first_;
  } else {
    tasks_.push_back(std::move(t));
  }
  if (metrics_ != nullptr) metrics_->SetQueueDepth(static_cast<int64_t>(tasks_.size()));
  return true;
}

int64_t WorkQueue::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(tasks_.size());
}

void WorkQueue::Loop() {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->stopping_ || !q->tasks_.empty(); },
          this));
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
      if (first_ > 0) --first_;
      ++running_;
      if (metrics_ != nullptr) metrics_->SetQueueDepth(static_cast<int64_t>(tasks_.size()));
    }
    task.fn();
    task.fn = nullptr;  // what it captured goes before the queue counts it done
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

void WorkQueue::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](WorkQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return q->tasks_.empty() && q->running_ == 0;
      },
      this));
}

}  // namespace plume::core
