#include "server/backends/cuda/cuda_completions.h"

#include <cuda_runtime.h>

#include <utility>

namespace plume::core::cuda_internal {
namespace {

// A short pause between polls that keeps the core.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  for (int i = 0; i < 16; ++i) __builtin_ia32_pause();
#elif defined(__aarch64__)
  for (int i = 0; i < 16; ++i) asm volatile("yield" ::: "memory");
#endif
}

}  // namespace

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
  in_flight_.fetch_add(1, std::memory_order_acq_rel);
  absl::MutexLock lock(&mu_);
  incoming_.push_back(std::move(call));
  incoming_count_.store(static_cast<int64_t>(incoming_.size()), std::memory_order_release);
}

void Completions::Loop() {
  // Nothing to report a failure to here: a call's own CUDA calls report theirs.
  if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
  std::vector<std::unique_ptr<Call>> active;
  for (;;) {
    if (active.empty() || incoming_count_.load(std::memory_order_acquire) > 0) {
      absl::MutexLock lock(&mu_);
      if (active.empty()) {
        // Idle: sleep until a call comes, or the end.
        mu_.Await(absl::Condition(this, &Completions::HasWorkOrStops));
        if (incoming_.empty()) return;  // stopping, and nothing in flight
      }
      for (auto& c : incoming_) active.push_back(std::move(c));
      incoming_.clear();
      incoming_count_.store(0, std::memory_order_release);
    }
    bool finished = false;
    for (size_t i = 0; i < active.size();) {
      if (!active[i]->Ready()) {
        ++i;
        continue;
      }
      std::unique_ptr<Call> c = std::move(active[i]);
      active.erase(active.begin() + static_cast<std::ptrdiff_t>(i));
      c->Finish();
      c.reset();
      in_flight_.fetch_sub(1, std::memory_order_acq_rel);
      finished = true;
    }
    // Spin, not yield: a yielding thread on a busy core (the server's
    // gRPC threads under load) waited up to a scheduler slice, about 1 ms
    // of every call (bench/RESULTS-serving.md, "Completion without a
    // blocked worker"). While calls are in flight this holds one core, as a
    // worker spinning in cudaStreamSynchronize did.
    if (!finished) CpuRelax();
  }
}

}  // namespace plume::core::cuda_internal
