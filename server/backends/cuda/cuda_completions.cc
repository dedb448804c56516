#include "server/backends/cuda/cuda_completions.h"

#include <cuda_runtime.h>

#include <utility>

namespace plume::core::cuda_internal {

Completions::Completions(int device) : device_(device) {
  thread_ = std::thread([this] { Loop(); });
}

Completions::~Completions() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void Completions::Add(std::unique_ptr<Call> call) {
  absl::MutexLock lock(&mu_);
  calls_.push_back(std::move(call));
}

void Completions::Loop() {
  // Nothing to report a failure to here: a call's own CUDA calls report theirs.
  if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
  for (;;) {
    std::unique_ptr<Call> call;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Completions::HasWorkOrStops));
      if (calls_.empty()) return;  // stopping, and nothing in flight
      call = std::move(calls_.front());
      calls_.pop_front();
    }
    call->Finish();
  }
}

}  // namespace plume::core::cuda_internal
