// A completion thread of the CUDA backend, one per lane: it finishes the
// GEMVs that CudaBackend::GemvAsync started on its lane, so that the
// caller's thread (a batcher worker) never waits for the device. It waits
// for each call's stream (the driver's own wait, spinning by default) and
// then finishes the call there: staged results copied out, the lane given
// back, the caller's callback run (for a batch: its callers told while the
// next batch computes on another lane).
//
// Once its queue is empty the thread keeps polling it for `spin` before it
// sleeps, so that a call added soon after (a lone client's next request)
// finds it awake: a sleeping thread's wake-up is on that call's path
// whenever it takes longer than the device does.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace plume::core::cuda_internal {

class Completions {
 public:
  // A call in flight.
  class Call {
   public:
    virtual ~Call() = default;
    // Waits for the device and finishes the call; once, on the thread.
    virtual void Finish() = 0;
  };

  // The thread makes `device` current first (none when it is negative).
  explicit Completions(int device, std::chrono::microseconds spin = std::chrono::microseconds(0));
  // Finishes every call in flight, then stops the thread.
  ~Completions();
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;

  void Add(std::unique_ptr<Call> call);

  // Times the thread went to sleep on an empty queue (tests).
  int64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }

 private:
  void Loop();
  bool HasWorkOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !calls_.empty() || stopping_;
  }
  // Polls `queued_` until it is non-zero or `spin_` has passed.
  void SpinForWork() const;

  const int device_;
  const std::chrono::microseconds spin_;
  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> stop_{false};   // stopping_, for the polling loop
  std::atomic<int64_t> queued_{0};  // calls_.size(), readable without mu_
  std::atomic<int64_t> sleeps_{0};
  std::thread thread_;
};

}  // namespace plume::core::cuda_internal
