// The CUDA backend's completion thread: it finishes the GEMVs that
// CudaBackend::GemvAsync started, so that no thread of the caller's waits
// in a stream synchronize. Each call in flight has an event recorded after
// its last copy; the thread asks every such event in turn (cudaEventQuery)
// and finishes each call whose event fired (its staged results copied out,
// its lane given back, its caller's callback run). It spins while calls are
// in flight (one core, as a worker in a spinning cudaStreamSynchronize did)
// and sleeps while none is.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace plume::core::cuda_internal {

class Completions {
 public:
  // A call in flight.
  class Call {
   public:
    virtual ~Call() = default;
    // Whether the device is done with it (an error counts as done).
    virtual bool Ready() = 0;
    // Finishes it: called once, after Ready() said so, on the thread.
    virtual void Finish() = 0;
  };

  // The thread makes `device` current before it asks any event.
  explicit Completions(int device);
  // Finishes every call in flight, then stops the thread.
  ~Completions();
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;

  void Add(std::unique_ptr<Call> call);
  // Calls added and not finished yet.
  int64_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }

 private:
  void Loop();
  bool HasWorkOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !incoming_.empty() || stopping_;
  }

  const int device_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Call>> incoming_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> incoming_count_{0};  // incoming_.size(), read without the lock
  std::atomic<int64_t> in_flight_{0};
  std::thread thread_;
};

}  // namespace plume::core::cuda_internal
