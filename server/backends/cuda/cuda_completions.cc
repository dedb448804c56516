#include "server/backends/cuda/cuda_completions.h"

#include <cuda_runtime.h>

#include <utility>

namespace plume::core::cuda_internal {

Completions::Completions(int device, std::chrono::microseconds spin) : device_(device), spin_(spin) {
  thread_ = std::thread([this] { Loop(); });
}

Completions::~Completions() {
  stop_.store(true, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void Completions::Add(std::unique_ptr<Call> call) {
  absl::MutexLock lock(&mu_);
  calls_.push_back(std::move(call));
  queued_.fetch_add(1, std::memory_order_release);
}

void Completions::SpinForWork() const {
  if (spin_.count() <= 0) return;
  const auto until = std::chrono::steady_clock::now() + spin_;
  // Polls with pauses, and every 64 polls gives the core to any other
  // thread that wants it (the gRPC threads under load).
  for (int i = 0;; ++i) {
    if (queued_.load(std::memory_order_acquire) > 0 || stop_.load(std::memory_order_relaxed)) return;
    if ((i & 63) == 63) {
      if (std::chrono::steady_clock::now() >= until) return;
      std::this_thread::yield();
    }
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

void Completions::Loop() {
  // Nothing to report a failure to here: a call's own CUDA calls report theirs.
  if (device_ >= 0 && cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
  for (;;) {
    std::unique_ptr<Call> call;
    {
      absl::MutexLock lock(&mu_);
      if (!HasWorkOrStops()) sleeps_.fetch_add(1, std::memory_order_relaxed);
      mu_.Await(absl::Condition(this, &Completions::HasWorkOrStops));
      if (calls_.empty()) return;  // stopping, and nothing in flight
      call = std::move(calls_.front());
      calls_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    call->Finish();
    SpinForWork();  // the next call may come soon
  }
}

}  // namespace plume::core::cuda_internal
