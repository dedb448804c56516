// What the CUDA backend's files share (cuda_backend.cc: matrices and GEMV;
// cuda_upload.cc: streamed uploads; cuda_kv_cache.cc: K/V caches and
// attention): CUDA errors as statuses, device allocations, the resident
// matrix, the lanes (a stream with its staging) and the registry of pinned
// host buffers. Internal to server/backends/cuda.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/backends/cuda/cuda_backend.h"

namespace plume::core {
namespace cuda_internal {

inline absl::Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: ", std::string(what), ": out of device memory"));
  }
  return absl::InternalError(absl::StrCat("cuda backend: ", std::string(what), ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

// `st`, once the copies already enqueued on `stream` are done: a call that
// fails part way waits for them, so that its caller may free their source
// or destination and the lane goes back idle.
inline absl::Status CopiesDrained(cudaStream_t stream, absl::Status st) {
  if (cudaStreamSynchronize(stream) != cudaSuccess) cudaGetLastError();
  return st;
}

#define PLUME_RETURN_IF_CUDA(expr, what)                     \
  do {                                                       \
    const cudaError_t plume_e_ = (expr);                     \
    if (plume_e_ != cudaSuccess) return ::plume::core::cuda_internal::CudaStatus(plume_e_, what); \
  } while (0)

inline int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// The most result bytes plume's kernels store straight into a pinned buffer
// (CudaBackendOptions::kernels_write_pinned_results); larger results are
// copied out. On an H200, 2 MiB (8192^2 GEMV, batch 64) stored by the kernel
// took 0.87-0.90x the device time of the copy-out, 4 MiB (16384^2 batch 64)
// 1.2x (bench/RESULTS-serving.md, "Results stored by the kernel").
inline constexpr int64_t kKernelWrittenResultBytes = int64_t{2} << 20;

// Device memory that frees itself.
struct DeviceAlloc {
  void* p = nullptr;
  DeviceAlloc() = default;
  DeviceAlloc(const DeviceAlloc&) = delete;
  DeviceAlloc& operator=(const DeviceAlloc&) = delete;
  ~DeviceAlloc() {
    if (p != nullptr) cudaFree(p);
  }
  cudaError_t Allocate(int64_t bytes) {
    const cudaError_t e = cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 1)));
    if (e != cudaSuccess) {
      p = nullptr;
      cudaGetLastError();  // a failed allocation must not surface at the next launch
    }
    return e;
  }
};

// A binary semaphore that any thread may release. (Not std::binary_semaphore:
// GCC 12's libstdc++, Debian bookworm's, can miss a wake-up in it, PR 104928.)
class LaneClaim {
 public:
  bool try_acquire() {
    absl::MutexLock lock(&mu_);
    if (taken_) return false;
    taken_ = true;
    return true;
  }
  void acquire() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](bool* taken) { return !*taken; }, &taken_));
    taken_ = true;
  }
  void release() {
    absl::MutexLock lock(&mu_);
    taken_ = false;
  }

 private:
  absl::Mutex mu_;
  bool taken_ ABSL_GUARDED_BY(mu_) = false;
};

// Packed words, scales and (E4M3 only) the NaN-row flags in one device
// allocation.
class CudaMatrix final : public BackendMatrix {
 public:
  static absl::StatusOr<std::unique_ptr<CudaMatrix>> Allocate(const MatrixShape& shape) {
    auto m = std::unique_ptr<CudaMatrix>(new CudaMatrix(shape));
    const int64_t word_bytes = AlignUp(shape.layout().total_words() * 4, 256);
    const int64_t scale_bytes = AlignUp(std::max<int64_t>(shape.num_scales(), 1) * 4, 256);
    const int64_t flag_bytes = shape.format == Fp8Format::kE4M3 ? shape.rows : 0;
    PLUME_RETURN_IF_CUDA(m->mem_.Allocate(word_bytes + scale_bytes + flag_bytes),
                         absl::StrCat("allocating a ", shape.rows, "x", shape.cols, " matrix"));
    char* base = static_cast<char*>(m->mem_.p);
    m->words_ = reinterpret_cast<uint32_t*>(base);
    m->scales_ = reinterpret_cast<float*>(base + word_bytes);
    m->flags_ = flag_bytes > 0 ? reinterpret_cast<uint8_t*>(base + word_bytes + scale_bytes) : nullptr;
    return m;
  }

  uint32_t* words() const { return words_; }
  float* scales() const { return scales_; }
  uint8_t* flags() const { return flags_; }
  // Rows with an E4M3 NaN code, or null when there are none.
  const uint8_t* nan_rows() const { return has_nan_ ? flags_ : nullptr; }
  void set_has_nan(bool v) { has_nan_ = v; }

 private:
  explicit CudaMatrix(const MatrixShape& shape) : BackendMatrix(shape) {}

  DeviceAlloc mem_;
  uint32_t* words_ = nullptr;
  float* scales_ = nullptr;
  uint8_t* flags_ = nullptr;
  bool has_nan_ = false;
};

}  // namespace cuda_internal

// A CUDA stream with its own staging: pinned host memory for the activations
// and results, device memory for the same, and the GEMV workspace.
struct CudaBackend::Lane {
  // Held by one call at a time. Not a mutex: StartGemv takes the lane on one
  // thread and its PendingGemv may give it back on another.
  cuda_internal::LaneClaim busy;
  int index = 0;  // in CudaBackend::lanes_
  cudaStream_t stream = nullptr;
  void* pinned = nullptr;
  int64_t pinned_bytes = 0;
  cuda_internal::DeviceAlloc dev;
  int64_t dev_bytes = 0;
  cuda_internal::DeviceAlloc ws;
  int64_t ws_bytes = 0;
  // Attention's workspace, apart from the GEMV's: each begins with counters
  // that must stay zero, at offsets of their own.
  cuda_internal::DeviceAlloc att_ws;
  int64_t att_ws_bytes = 0;
  // Around a GEMV's copy-in, kernels and copy-out: its device time.
  cudaEvent_t started = nullptr, finished = nullptr;

  ~Lane() {
    if (pinned != nullptr) cudaFreeHost(pinned);
    if (started != nullptr) cudaEventDestroy(started);
    if (finished != nullptr) cudaEventDestroy(finished);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  absl::Status EnsureEvents() {
    if (started == nullptr) PLUME_RETURN_IF_CUDA(cudaEventCreate(&started), "creating an event");
    if (finished == nullptr) PLUME_RETURN_IF_CUDA(cudaEventCreate(&finished), "creating an event");
    return absl::OkStatus();
  }

  absl::Status EnsurePinned(int64_t bytes) {
    if (bytes <= pinned_bytes) return absl::OkStatus();
    // Grows by half at least, so that a slowly growing batch reallocates a
    // few times, not once per call.
    const int64_t want = std::max(bytes, pinned_bytes * 3 / 2);
    if (pinned != nullptr) cudaFreeHost(pinned);
    pinned = nullptr;
    pinned_bytes = 0;
    if (const cudaError_t e = cudaHostAlloc(&pinned, static_cast<size_t>(want), cudaHostAllocDefault);
        e != cudaSuccess) {
      pinned = nullptr;
      cudaGetLastError();
      return cuda_internal::CudaStatus(e, "allocating pinned staging");
    }
    pinned_bytes = want;
    return absl::OkStatus();
  }

  static absl::Status Ensure(cuda_internal::DeviceAlloc& a, int64_t& have, int64_t bytes, bool zero,
                             cudaStream_t stream) {
    if (bytes <= have) return absl::OkStatus();
    const int64_t want = std::max(bytes, have * 3 / 2);  // as EnsurePinned
    if (a.p != nullptr) {
      PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "growing device staging");
      cudaFree(a.p);
      a.p = nullptr;
      have = 0;
    }
    PLUME_RETURN_IF_CUDA(a.Allocate(want), "allocating device staging");
    if (zero) PLUME_RETURN_IF_CUDA(cudaMemsetAsync(a.p, 0, static_cast<size_t>(want), stream), "zeroing workspace");
    have = want;
    return absl::OkStatus();
  }
};

namespace cuda_internal {

// Releases a lane that AcquireLane returned locked.
class LaneGuard {
 public:
  explicit LaneGuard(CudaBackend::Lane& l) : lane_(&l) {}
  ~LaneGuard() {
    if (lane_ != nullptr) lane_->busy.release();
  }
  LaneGuard(const LaneGuard&) = delete;
  LaneGuard& operator=(const LaneGuard&) = delete;
  // Hands the locked lane on (to a call in flight).
  CudaBackend::Lane* release() { return std::exchange(lane_, nullptr); }

 private:
  CudaBackend::Lane* lane_;
};

// The pinned host buffers AllocateHostBuffer handed out, in every
// CudaBackend of the process (they are portable: pinned for every device).
// A GEMV whose activations or results lie inside one is copied straight
// between it and the device.
class PinnedRegistry {
 public:
  static PinnedRegistry& Get() {
    static PinnedRegistry* r = new PinnedRegistry();  // never destroyed: buffers may outlive statics
    return *r;
  }
  void Add(const void* p, size_t n) {
    absl::MutexLock lock(&mu_);
    ranges_[reinterpret_cast<uintptr_t>(p)] = n;
  }
  void Remove(const void* p) {
    absl::MutexLock lock(&mu_);
    ranges_.erase(reinterpret_cast<uintptr_t>(p));
  }
  // Whether [p, p + n) lies inside one registered buffer.
  bool Contains(const void* p, size_t n) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    absl::ReaderMutexLock lock(&mu_);
    auto it = ranges_.upper_bound(a);
    if (it == ranges_.begin()) return false;
    --it;
    return a - it->first <= it->second && n <= it->second - (a - it->first);
  }

 private:
  mutable absl::Mutex mu_;
  std::map<uintptr_t, size_t> ranges_ ABSL_GUARDED_BY(mu_);
};

class PinnedHostBuffer final : public HostBuffer {
 public:
  PinnedHostBuffer(void* data, size_t size) : HostBuffer(data, size) {
    PinnedRegistry::Get().Add(data, size);
  }
  ~PinnedHostBuffer() override {
    PinnedRegistry::Get().Remove(data());
    // Nobody to report a failure to here; clear it so that it cannot surface
    // at an unrelated call.
    if (cudaFreeHost(data()) != cudaSuccess) cudaGetLastError();
  }
};
}  // namespace cuda_internal
}  // namespace plume::core
