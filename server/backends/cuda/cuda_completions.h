// A completion thread of the CUDA backend, one per lane: it finishes the
// GEMVs that CudaBackend::GemvAsync started on its lane, so that the
// caller's thread (a batcher worker) never waits for the device. It waits
// for each call's stream (the driver's own wait, spinning by default) and
// then finishes the call there: staged results copied out, the lane given
// back, the caller's callback run (for a batch: its callers told while the
// next batch computes on another lane). It sleeps while no call is in
// flight.
#pragma once

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

  // The thread makes `device` current first.
  explicit Completions(int device);
  // Finishes every call in flight, then stops the thread.
  ~Completions();
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;

  void Add(std::unique_ptr<Call> call);

 private:
  void Loop();
  bool HasWorkOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !calls_.empty() || stopping_;
  }

  const int device_;
  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace plume::core::cuda_internal
