#include "server/core/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "plume/cuda/fp8_codec.h"
#include "plume/cuda/attention.h"
#include "plume/cuda/gemv.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"

namespace plume::core {
namespace {

absl::Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: ", std::string(what), ": out of device memory"));
  }
  return absl::InternalError(absl::StrCat("cuda backend: ", std::string(what), ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

#define PLUME_RETURN_IF_CUDA(expr, what)                     \
  do {                                                       \
    const cudaError_t plume_e_ = (expr);                     \
    if (plume_e_ != cudaSuccess) return CudaStatus(plume_e_, what); \
  } while (0)

int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

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

// A K/V cache in device pages: slabs of whole pages (one per append that
// needs new pages), the device page table (capacity grows geometrically) and
// the cache-wide scales, on the device and mirrored on the host.
class CudaKvCache final : public BackendKvCache {
 public:
  explicit CudaKvCache(const KvShape& shape)
      : BackendKvCache(shape),
        k_scales_(static_cast<size_t>(shape.layout().global_scales()), 1.0f),
        v_scales_(k_scales_.size(), 1.0f) {}

  absl::Status Init() {
    const int64_t n = std::max<int64_t>(shape().layout().global_scales(), 1);
    PLUME_RETURN_IF_CUDA(scales_.Allocate(2 * n * 4), "allocating K/V scales");
    return absl::OkStatus();
  }

  int64_t seq() const override { return seq_; }
  const uint8_t* const* table() const { return static_cast<const uint8_t* const*>(table_.p); }
  const float* k_scales_dev() const { return static_cast<const float*>(scales_.p); }
  const float* v_scales_dev() const {
    return k_scales_dev() + std::max<int64_t>(shape().layout().global_scales(), 1);
  }

  // Quantizes `tokens` tokens (k, v: [kv_heads][tokens][head_dim] floats) onto
  // the end of the cache, on `stream`; returns when they are on the device.
  absl::Status Append(const float* k, const float* v, int64_t tokens, cudaStream_t stream) {
    const KvLayout l = shape().layout();
    const int64_t page_bytes = l.page_bytes();
    const int64_t total_pages = KvLayout::pages_for(seq_ + tokens);
    const int64_t have = static_cast<int64_t>(pages_.size());
    const int64_t first = seq_ / kKvPageTokens;  // the first page written
    const int64_t touched = total_pages - first;
    const bool partial = seq_ % kKvPageTokens != 0;

    // Host copies of the touched pages: the partly filled one from the
    // device, new ones zero.
    std::vector<uint8_t> host;
    try {
      host.assign(static_cast<size_t>(touched * page_bytes), 0);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("cuda backend: cannot stage the appended K/V pages");
    }
    if (partial) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(host.data(), pages_[first], static_cast<size_t>(page_bytes),
                                           cudaMemcpyDeviceToHost, stream),
                           "reading the last K/V page");
      PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "reading the last K/V page");
    }
    std::vector<uint8_t*> host_pages(static_cast<size_t>(total_pages), nullptr);
    for (int64_t i = 0; i < touched; ++i) host_pages[first + i] = host.data() + i * page_bytes;
    ref::KvAppend({l, shape().format, shape().saturate, host_pages.data(), k_scales_.data(),
                   v_scales_.data(), seq_},
                  k, v, tokens);

    // New pages: one slab, written whole from the host pages; the partly
    // filled page goes back where it was.
    const int64_t fresh = total_pages - have;
    auto slab = std::make_unique<DeviceAlloc>();
    std::vector<uint8_t*> new_pages;
    if (fresh > 0) {
      PLUME_RETURN_IF_CUDA(slab->Allocate(fresh * page_bytes), absl::StrCat("allocating ", fresh, " K/V pages"));
      for (int64_t i = 0; i < fresh; ++i) new_pages.push_back(static_cast<uint8_t*>(slab->p) + i * page_bytes);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(slab->p, host_pages[have], static_cast<size_t>(fresh * page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
    }
    if (partial) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(pages_[first], host_pages[first], static_cast<size_t>(page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
    }
    if (seq_ == 0 && l.global_scales() > 0) {
      const size_t n = static_cast<size_t>(l.global_scales()) * 4;
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(scales_.p, k_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
      float* v_dev = static_cast<float*>(scales_.p) + std::max<int64_t>(l.global_scales(), 1);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(v_dev, v_scales_.data(), n,
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
    }
    // The page table, grown geometrically (rewritten whole when it moves).
    std::vector<uint8_t*> all = pages_;
    all.insert(all.end(), new_pages.begin(), new_pages.end());
    DeviceAlloc grown;
    int64_t from = have;
    if (total_pages > table_cap_) {
      const int64_t cap = std::max<int64_t>(total_pages, std::max<int64_t>(16, table_cap_ * 2));
      PLUME_RETURN_IF_CUDA(grown.Allocate(cap * int64_t{sizeof(uint8_t*)}), "allocating the K/V page table");
      from = 0;
    }
    void* table = grown.p != nullptr ? grown.p : table_.p;
    if (total_pages > from) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(static_cast<uint8_t**>(table) + from, all.data() + from,
                                           static_cast<size_t>(total_pages - from) * sizeof(uint8_t*),
                                           cudaMemcpyHostToDevice, stream),
                           "copying the K/V page table");
    }
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "appending K/V");
    if (grown.p != nullptr) {
      std::swap(table_.p, grown.p);
      table_cap_ = std::max<int64_t>(total_pages, std::max<int64_t>(16, table_cap_ * 2));
    }
    if (slab->p != nullptr) slabs_.push_back(std::move(slab));
    pages_ = std::move(all);
    seq_ += tokens;
    return absl::OkStatus();
  }

  // Pages [first, first + num) to host memory, and the cache-wide scales.
  absl::Status Read(int64_t first, int64_t num, uint8_t* pages, float* k_scales, float* v_scales,
                    cudaStream_t stream) const {
    const int64_t page_bytes = shape().layout().page_bytes();
    if (first < 0 || num < 0 || first + num > static_cast<int64_t>(pages_.size())) {
      return absl::OutOfRangeError(absl::StrCat("cuda backend: pages [", first, ", ", first + num,
                                                ") of a cache of ", pages_.size(), " pages"));
    }
    for (int64_t i = 0; i < num; ++i) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(pages + i * page_bytes, pages_[first + i],
                                           static_cast<size_t>(page_bytes), cudaMemcpyDeviceToHost,
                                           stream),
                           "reading K/V pages");
    }
    if (k_scales != nullptr) std::copy(k_scales_.begin(), k_scales_.end(), k_scales);
    if (v_scales != nullptr) std::copy(v_scales_.begin(), v_scales_.end(), v_scales);
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "reading K/V pages");
    return absl::OkStatus();
  }

  // A fresh cache takes `seq` tokens of stored pages (Read's layout) and the
  // cache-wide scales.
  absl::Status Restore(int64_t seq, const uint8_t* pages, const float* k_scales,
                       const float* v_scales, cudaStream_t stream) {
    const KvLayout l = shape().layout();
    const int64_t n_pages = KvLayout::pages_for(seq);
    const int64_t page_bytes = l.page_bytes();
    if (l.global_scales() > 0) {
      std::copy(k_scales, k_scales + l.global_scales(), k_scales_.begin());
      std::copy(v_scales, v_scales + l.global_scales(), v_scales_.begin());
      const size_t n = static_cast<size_t>(l.global_scales()) * 4;
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(scales_.p, k_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
      float* v_dev = static_cast<float*>(scales_.p) + std::max<int64_t>(l.global_scales(), 1);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(v_dev, v_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
    }
    if (n_pages > 0) {
      auto slab = std::make_unique<DeviceAlloc>();
      PLUME_RETURN_IF_CUDA(slab->Allocate(n_pages * page_bytes),
                           absl::StrCat("allocating ", n_pages, " K/V pages"));
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(slab->p, pages, static_cast<size_t>(n_pages * page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
      const int64_t cap = std::max<int64_t>(n_pages, 16);
      PLUME_RETURN_IF_CUDA(table_.Allocate(cap * int64_t{sizeof(uint8_t*)}), "allocating the K/V page table");
      table_cap_ = cap;
      for (int64_t i = 0; i < n_pages; ++i) pages_.push_back(static_cast<uint8_t*>(slab->p) + i * page_bytes);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(table_.p, pages_.data(),
                                           static_cast<size_t>(n_pages) * sizeof(uint8_t*),
                                           cudaMemcpyHostToDevice, stream),
                           "copying the K/V page table");
      slabs_.push_back(std::move(slab));
    }
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "restoring a K/V cache");
    seq_ = seq;
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<DeviceAlloc>> slabs_;
  std::vector<uint8_t*> pages_;  // device pointers into slabs_, in token order
  DeviceAlloc table_;            // device copy of pages_
  int64_t table_cap_ = 0;
  DeviceAlloc scales_;           // K then V cache-wide scales
  std::vector<float> k_scales_, v_scales_;
  int64_t seq_ = 0;
};

}  // namespace

namespace {
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
}  // namespace

// A CUDA stream with its own staging: pinned host memory for the activations
// and results, device memory for the same, and the GEMV workspace.
struct CudaBackend::Lane {
  // Held by one call at a time. Not a mutex: StartGemv takes the lane on one
  // thread and its PendingGemv may give it back on another.
  LaneClaim busy;
  cudaStream_t stream = nullptr;
  void* pinned = nullptr;
  int64_t pinned_bytes = 0;
  DeviceAlloc dev;
  int64_t dev_bytes = 0;
  DeviceAlloc ws;
  int64_t ws_bytes = 0;
  DeviceAlloc att_ws;  // attention's workspace (never the GEMV's, whose counters must stay zero)
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
      return CudaStatus(e, "allocating pinned staging");
    }
    pinned_bytes = want;
    return absl::OkStatus();
  }

  static absl::Status Ensure(DeviceAlloc& a, int64_t& have, int64_t bytes, bool zero,
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

namespace {
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

// A GEMV enqueued on a lane: Wait() synchronizes the lane's stream, copies
// staged results out (when y is not pinned) and gives the lane back.
class CudaPendingGemv final : public PendingGemv {
 public:
  struct CopyOut {
    const char* staged = nullptr;  // null: the results went straight to y
    char* y = nullptr;
    int64_t batch = 0;
    size_t row_bytes = 0, stride_bytes = 0;
    double* device_seconds = nullptr;  // GemvArgs::device_seconds
  };
  CudaPendingGemv(CudaBackend::Lane* lane, cudaStream_t stream, CopyOut out)
      : lane_(lane), stream_(stream), out_(out) {}
  ~CudaPendingGemv() override { Wait().IgnoreError(); }  // dropped unwaited: nobody to tell

  absl::Status Wait() override {
    if (lane_ == nullptr) return status_;
    status_ = CudaStatus(cudaStreamSynchronize(stream_), "running the GEMV");
    if (status_.ok() && out_.device_seconds != nullptr) {
      float ms = 0;
      status_ = CudaStatus(cudaEventElapsedTime(&ms, lane_->started, lane_->finished),
                           "timing the GEMV");
      if (status_.ok()) *out_.device_seconds = static_cast<double>(ms) * 1e-3;
    }
    if (status_.ok() && out_.staged != nullptr) {
      if (out_.row_bytes == out_.stride_bytes) {
        std::memcpy(out_.y, out_.staged, out_.row_bytes * static_cast<size_t>(out_.batch));
      } else {
        for (int64_t b = 0; b < out_.batch; ++b) {
          std::memcpy(out_.y + b * out_.stride_bytes, out_.staged + b * out_.row_bytes, out_.row_bytes);
        }
      }
    }
    std::exchange(lane_, nullptr)->busy.release();
    return status_;
  }

 private:
  CudaBackend::Lane* lane_;
  cudaStream_t stream_;
  CopyOut out_;
  absl::Status status_;
};
}  // namespace

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  const int n = CudaDeviceCount();
  if (n == 0) return absl::FailedPreconditionError("cuda backend: no CUDA device is visible");
  if (options.device < 0 || options.device >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: device ", options.device, " does not exist (", n, " visible)"));
  }
  if (options.lanes < 1) return absl::InvalidArgumentError("cuda backend: lanes must be >= 1");
  auto b = std::unique_ptr<CudaBackend>(new CudaBackend());
  b->options_ = options;
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options.device), "selecting the device");
  cudaDeviceProp prop{};
  PLUME_RETURN_IF_CUDA(cudaGetDeviceProperties(&prop, options.device), "reading device properties");
  b->device_name_ = prop.name;
  b->cc_ = prop.major * 10 + prop.minor;
  size_t free_bytes = 0, total_bytes = 0;
  PLUME_RETURN_IF_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes), "reading device memory");
  b->total_ = static_cast<int64_t>(total_bytes);
  b->capacity_ = std::max<int64_t>(0, static_cast<int64_t>(free_bytes) - options.reserve_bytes);

  cuda::DecodePath path = cuda::DefaultDecodePath(options.device);
  if (options.decode_path == "software") {
    path = cuda::DecodePath::kSoftware;
  } else if (options.decode_path == "native") {
    if (b->cc_ < 89) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cuda backend: the native FP8 decode needs sm_89 or later; ", prop.name, " is sm_", b->cc_));
    }
    path = cuda::DecodePath::kNative;
  } else if (!options.decode_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: decode path must be native or software, not \"", options.decode_path, "\""));
  }
  b->decode_path_ = static_cast<int>(path);
  cuda::GemvKernel kernel = cuda::GemvKernel::kAuto;
  if (!options.gemv_kernel.empty() && !cuda::ParseGemvKernel(options.gemv_kernel.c_str(), &kernel)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: GEMV kernel must be auto, mma or wgmma, not \"", options.gemv_kernel, "\""));
  }
  if (kernel == cuda::GemvKernel::kWgmma && b->cc_ != 90) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: the wgmma GEMV needs sm_90; ", prop.name, " is sm_", b->cc_));
  }
  b->gemv_kernel_ = static_cast<int>(kernel);

  for (int i = 0; i < options.lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    PLUME_RETURN_IF_CUDA(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking),
                         "creating a stream");
    b->lanes_.push_back(std::move(lane));
  }
  return b;
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(options_.device);
  lanes_.clear();
}

std::string CudaBackend::description() const {
  return absl::StrCat("cuda device ", options_.device, " (", device_name_, ", sm_", cc_, ", ",
                      total_ >> 20, " MiB, ",
                      cuda::DecodePathName(static_cast<cuda::DecodePath>(decode_path_)),
                      " FP8 decode, ", lanes_.size(), " streams)");
}

bool CudaBackend::device_memory(DeviceMemory* out) const {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(options_.device) != cudaSuccess ||
      cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    return false;
  }
  out->total = static_cast<int64_t>(total_bytes);
  out->used = static_cast<int64_t>(total_bytes - free_bytes);
  return true;
}

CudaBackend::Lane& CudaBackend::AcquireLane() {
  static std::atomic<unsigned> next{0};
  const unsigned start = next.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < lanes_.size(); ++i) {
    Lane& l = *lanes_[(start + i) % lanes_.size()];
    if (l.busy.try_acquire()) return l;
  }
  Lane& l = *lanes_[start % lanes_.size()];
  l.busy.acquire();
  return l;
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CudaBackend::Quantize(const MatrixShape& shape,
                                                                     const void* src,
                                                                     DType src_dtype) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto m = CudaMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  // The source goes to the device whole and is quantized there.
  const int64_t src_bytes = shape.rows * shape.cols * DTypeSize(src_dtype);
  const int64_t ws_bytes = AlignUp(
      cuda::QuantizePackWorkspaceBytes(shape.rows, shape.cols, shape.scale_mode), 256);
  DeviceAlloc tmp;
  PLUME_RETURN_IF_CUDA(tmp.Allocate(AlignUp(src_bytes, 256) + ws_bytes + 256),
                       "allocating the upload's source on the device");
  char* d_src = static_cast<char*>(tmp.p);
  char* d_ws = d_src + AlignUp(src_bytes, 256);
  int* d_any = reinterpret_cast<int*>(d_ws + ws_bytes);
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(d_src, src, static_cast<size_t>(src_bytes),
                                       cudaMemcpyHostToDevice, lane.stream),
                       "copying the upload to the device");
  PLUME_RETURN_IF_CUDA(cuda::QuantizePack(d_src, src_dtype, shape.rows, shape.cols, shape.format,
                                          shape.scale_mode, shape.saturate, (*m)->words(),
                                          (*m)->scales(), d_ws, lane.stream),
                       "quantizing on the device");
  int any = 0;
  if ((*m)->flags() != nullptr) {
    PLUME_RETURN_IF_CUDA(cudaMemsetAsync(d_any, 0, sizeof(int), lane.stream), "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cuda::FindNanRows((*m)->words(), shape.rows, shape.cols, (*m)->flags(),
                                           d_any, lane.stream),
                         "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(&any, d_any, sizeof(int), cudaMemcpyDeviceToHost, lane.stream),
                         "finding NaN codes");
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "quantizing on the device");
  (*m)->set_has_nan(any != 0);
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CudaBackend::FromPacked(const MatrixShape& shape,
                                                                       const uint32_t* words,
                                                                       const float* scales) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto m = CudaMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  DeviceAlloc d_any;
  PLUME_RETURN_IF_CUDA(d_any.Allocate(sizeof(int)), "finding NaN codes");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync((*m)->words(), words,
                                       static_cast<size_t>(shape.layout().total_words()) * 4,
                                       cudaMemcpyHostToDevice, lane.stream),
                       "copying packed codes to the device");
  if (shape.num_scales() > 0) {
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync((*m)->scales(), scales,
                                         static_cast<size_t>(shape.num_scales()) * 4,
                                         cudaMemcpyHostToDevice, lane.stream),
                         "copying scales to the device");
  }
  int any = 0;
  if ((*m)->flags() != nullptr) {
    PLUME_RETURN_IF_CUDA(cudaMemsetAsync(d_any.p, 0, sizeof(int), lane.stream), "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cuda::FindNanRows((*m)->words(), shape.rows, shape.cols, (*m)->flags(),
                                           static_cast<int*>(d_any.p), lane.stream),
                         "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(&any, d_any.p, sizeof(int), cudaMemcpyDeviceToHost, lane.stream),
                         "finding NaN codes");
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "copying a matrix to the device");
  (*m)->set_has_nan(any != 0);
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

absl::Status CudaBackend::ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) {
  const auto& c = static_cast<const CudaMatrix&>(m);
  const MatrixShape& s = m.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(words, c.words(), static_cast<size_t>(s.layout().total_words()) * 4,
                                       cudaMemcpyDeviceToHost, lane.stream),
                       "copying packed codes from the device");
  if (s.num_scales() > 0) {
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(scales, c.scales(), static_cast<size_t>(s.num_scales()) * 4,
                                         cudaMemcpyDeviceToHost, lane.stream),
                         "copying scales from the device");
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "copying a matrix from the device");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HostBuffer>> CudaBackend::AllocateHostBuffer(size_t bytes) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  void* p = nullptr;
  if (const cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocPortable);
      e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot allocate ", bytes,
                                                     " bytes of pinned host memory: ",
                                                     cudaGetErrorName(e)));
  }
  return std::unique_ptr<HostBuffer>(new PinnedHostBuffer(p, bytes));
}

std::vector<GemvKernelChoice> CudaBackend::GemvKernels(const BackendMatrix& w) const {
  const auto& m = static_cast<const CudaMatrix&>(w);
  const MatrixShape& s = m.shape();
  std::vector<GemvKernelChoice> out;
  cuda::GemvProblem p;
  p.rows = s.rows;
  p.cols = s.cols;
  p.format = s.format;
  p.scale_mode = s.scale_mode;
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = static_cast<cuda::GemvKernel>(gemv_kernel_);
  for (DType x : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (int batch = 1; batch <= 128; batch *= 2) {
      p.x_dtype = x;
      p.batch = batch;
      bool measured = false;
      const cuda::GemvKernel k = cuda::ChosenGemvKernel(p, options_.device, &measured);
      out.push_back({batch, x, cuda::GemvKernelName(k), measured});
    }
  }
  return out;
}

absl::Status CudaBackend::Gemv(const BackendMatrix& w, const GemvArgs& args) {
  auto call = StartGemv(w, args);
  if (!call.ok()) return call.status();
  return (*call)->Wait();
}

absl::StatusOr<std::unique_ptr<PendingGemv>> CudaBackend::StartGemv(const BackendMatrix& w,
                                                                    const GemvArgs& args) {
  const auto& m = static_cast<const CudaMatrix&>(w);
  const MatrixShape& s = m.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t y_elem = DTypeSize(args.y_dtype);
  const int64_t stride = args.y_stride != 0 ? args.y_stride : s.rows;
  const int64_t x_bytes = args.batch * s.cols * DTypeSize(args.x_dtype);
  const int64_t y_bytes = args.batch * s.rows * y_elem;  // packed, on the device
  const int64_t x_off = 0, y_off = AlignUp(x_bytes, 256);
  // Activations or results in pinned memory of ours go straight between it
  // and the device; anything else through the lane's pinned staging.
  const PinnedRegistry& pinned = PinnedRegistry::Get();
  const bool x_direct = pinned.Contains(args.x, static_cast<size_t>(x_bytes));
  const bool y_direct =
      pinned.Contains(args.y, static_cast<size_t>(((args.batch - 1) * stride + s.rows) * y_elem));
  if (x_direct && y_direct) zero_copy_gemvs_.fetch_add(1, std::memory_order_relaxed);

  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  // Copies already enqueued must finish before the lane is given back.
  auto fail = [&](absl::Status st) {
    cudaStreamSynchronize(lane.stream);
    return st;
  };
  if (!x_direct || !y_direct) {
    if (absl::Status st = lane.EnsurePinned(y_off + y_bytes); !st.ok()) return st;
  }
  if (absl::Status st = Lane::Ensure(lane.dev, lane.dev_bytes, y_off + y_bytes, false, lane.stream);
      !st.ok()) {
    return st;
  }
  if (args.device_seconds != nullptr) {
    if (absl::Status st = lane.EnsureEvents(); !st.ok()) return st;
  }
  char* h = static_cast<char*>(lane.pinned);
  char* d = static_cast<char*>(lane.dev.p);

  cuda::GemvProblem p;
  p.words = m.words();
  p.scales = m.scales();
  p.nan_rows = m.nan_rows();
  p.rows = s.rows;
  p.cols = s.cols;
  p.format = s.format;
  p.scale_mode = s.scale_mode;
  p.x = d + x_off;
  p.x_dtype = args.x_dtype;
  p.x_scale = args.x_scale;
  p.batch = args.batch;
  p.y = d + y_off;
  p.y_dtype = args.y_dtype;
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = static_cast<cuda::GemvKernel>(gemv_kernel_);

  const void* x_src = args.x;
  if (!x_direct) {
    std::memcpy(h + x_off, args.x, static_cast<size_t>(x_bytes));
    x_src = h + x_off;
  }
  if (args.device_seconds != nullptr) {
    if (const cudaError_t e = cudaEventRecord(lane.started, lane.stream); e != cudaSuccess) {
      return fail(CudaStatus(e, "timing the GEMV"));
    }
  }
  if (const cudaError_t e = cudaMemcpyAsync(d + x_off, x_src, static_cast<size_t>(x_bytes),
                                            cudaMemcpyHostToDevice, lane.stream);
      e != cudaSuccess) {
    return fail(CudaStatus(e, "copying activations to the device"));
  }
  // One plan: the kernel asks for its workspace once it knows the size.
  absl::Status ws_status;
  const cudaError_t launched = cuda::Gemv(
      p,
      [&](int64_t need) -> void* {
        ws_status = Lane::Ensure(lane.ws, lane.ws_bytes, need, true, lane.stream);
        return ws_status.ok() ? lane.ws.p : nullptr;
      },
      lane.stream);
  if (!ws_status.ok()) return fail(ws_status);
  if (launched != cudaSuccess) return fail(CudaStatus(launched, "launching the GEMV"));

  CudaPendingGemv::CopyOut out;
  out.y = static_cast<char*>(args.y);
  out.batch = args.batch;
  out.row_bytes = static_cast<size_t>(s.rows * y_elem);
  out.stride_bytes = static_cast<size_t>(stride * y_elem);
  cudaError_t e;
  if (!y_direct) {
    out.staged = h + y_off;
    e = cudaMemcpyAsync(h + y_off, d + y_off, static_cast<size_t>(y_bytes), cudaMemcpyDeviceToHost,
                        lane.stream);
  } else if (stride == s.rows) {
    e = cudaMemcpyAsync(args.y, d + y_off, static_cast<size_t>(y_bytes), cudaMemcpyDeviceToHost,
                        lane.stream);
  } else {  // a row shard: its rows of each result vector
    e = cudaMemcpy2DAsync(args.y, out.stride_bytes, d + y_off, out.row_bytes, out.row_bytes,
                          static_cast<size_t>(args.batch), cudaMemcpyDeviceToHost, lane.stream);
  }
  if (e != cudaSuccess) return fail(CudaStatus(e, "copying results from the device"));
  if (args.device_seconds != nullptr) {
    if (const cudaError_t r = cudaEventRecord(lane.finished, lane.stream); r != cudaSuccess) {
      return fail(CudaStatus(r, "timing the GEMV"));
    }
    out.device_seconds = args.device_seconds;
  }
  return std::unique_ptr<PendingGemv>(new CudaPendingGemv(guard.release(), lane.stream, out));
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> CudaBackend::CreateKv(const KvShape& shape) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto c = std::make_unique<CudaKvCache>(shape);
  if (absl::Status st = c->Init(); !st.ok()) return st;
  return std::unique_ptr<BackendKvCache>(std::move(c));
}

absl::Status CudaBackend::AppendKv(BackendKvCache& cache, const KvAppendArgs& args) {
  auto& c = static_cast<CudaKvCache&>(cache);
  const KvShape& s = c.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t n = s.kv_heads * args.tokens * s.head_dim;
  std::vector<float> k, v;
  try {
    k.resize(static_cast<size_t>(n));
    v.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot stage ", n, " K/V values"));
  }
  ref::ToFloat(args.k, args.src_dtype, 1.0f, n, k.data());
  ref::ToFloat(args.v, args.src_dtype, 1.0f, n, v.data());
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  return c.Append(k.data(), v.data(), args.tokens, lane.stream);
}

absl::Status CudaBackend::ReadKv(const BackendKvCache& cache, int64_t first_page,
                                int64_t num_pages, uint8_t* pages, float* k_scales,
                                float* v_scales) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  return static_cast<const CudaKvCache&>(cache).Read(first_page, num_pages, pages, k_scales,
                                                     v_scales, lane.stream);
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> CudaBackend::KvFromPacked(
    const KvShape& shape, int64_t seq, const uint8_t* pages, const float* k_scales,
    const float* v_scales) {
  auto c = CreateKv(shape);
  if (!c.ok()) return c.status();
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  if (absl::Status st = static_cast<CudaKvCache&>(**c).Restore(seq, pages, k_scales, v_scales,
                                                               lane.stream);
      !st.ok()) {
    return st;
  }
  return c;
}

absl::Status CudaBackend::Attention(const BackendKvCache& cache, const AttentionArgs& args) {
  return AttentionWith(cache, args, static_cast<int>(cuda::AttentionKernel::kAuto));
}

absl::Status CudaBackend::AttentionWith(const BackendKvCache& cache, const AttentionArgs& args,
                                        int kernel) {
  const auto& c = static_cast<const CudaKvCache&>(cache);
  const KvShape& s = c.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t elems = args.batch * args.heads * args.q_len * s.head_dim;
  const int64_t q_bytes = elems * DTypeSize(args.q_dtype);
  const int64_t o_bytes = elems * DTypeSize(args.out_dtype);
  const int64_t q_off = 0, o_off = AlignUp(q_bytes, 256);

  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  if (absl::Status st = lane.EnsurePinned(o_off + o_bytes); !st.ok()) return st;
  if (absl::Status st = Lane::Ensure(lane.dev, lane.dev_bytes, o_off + o_bytes, false, lane.stream);
      !st.ok()) {
    return st;
  }
  char* h = static_cast<char*>(lane.pinned);
  char* d = static_cast<char*>(lane.dev.p);

  cuda::AttentionProblem p;
  p.layout = s.layout();
  p.format = s.format;
  p.pages = c.table();
  p.k_scales = c.k_scales_dev();
  p.v_scales = c.v_scales_dev();
  p.seq = c.seq();
  p.q = d + q_off;
  p.q_dtype = args.q_dtype;
  p.batch = args.batch;
  p.heads = args.heads;
  p.q_len = args.q_len;
  p.scale = args.scale;
  p.causal = args.causal;
  p.out = d + o_off;
  p.out_dtype = args.out_dtype;
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = static_cast<cuda::AttentionKernel>(kernel);
  const int64_t ws_need = cuda::AttentionWorkspaceBytes(p, options_.device);
  if (ws_need <= 0) return absl::InternalError("cuda backend: attention workspace size unavailable");
  if (absl::Status st = Lane::Ensure(lane.att_ws, lane.att_ws_bytes, ws_need, false, lane.stream);
      !st.ok()) {
    return st;
  }

  // Queries and outputs in pinned memory of ours skip the staging copy.
  const bool q_direct = PinnedRegistry::Get().Contains(args.q, static_cast<size_t>(q_bytes));
  const bool o_direct = PinnedRegistry::Get().Contains(args.out, static_cast<size_t>(o_bytes));
  if (!q_direct) std::memcpy(h + q_off, args.q, static_cast<size_t>(q_bytes));
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(d + q_off, q_direct ? args.q : h + q_off,
                                       static_cast<size_t>(q_bytes), cudaMemcpyHostToDevice,
                                       lane.stream),
                       "copying queries to the device");
  PLUME_RETURN_IF_CUDA(cuda::Attention(p, lane.att_ws.p, lane.att_ws_bytes, lane.stream),
                       "launching attention");
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(o_direct ? args.out : h + o_off, d + o_off,
                                       static_cast<size_t>(o_bytes), cudaMemcpyDeviceToHost,
                                       lane.stream),
                       "copying attention output from the device");
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "running attention");
  if (!o_direct) std::memcpy(args.out, h + o_off, static_cast<size_t>(o_bytes));
  return absl::OkStatus();
}

}  // namespace plume::core
