// Prometheus metrics of one server (prometheus-cpp; no gRPC here).
// Names follow Prometheus conventions: plume_ prefix, base units, _total on
// counters. The hot-path handles are resolved once, up front, so recording a
// request costs a few atomic adds and no label lookups.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace prometheus {
template <typename T>
class Family;
class Registry;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace plume::core {

enum class Method : int {
  kUploadMatrix,
  kGetMatrix,
  kListMatrices,
  kDeleteMatrix,
  kGemv,
  kGemvStream,
  kUploadKV,
  kAppendKV,
  kGetKV,
  kListKV,
  kDeleteKV,
  kAttention,
  kAttentionStream,
  kEcho,
  kEchoStream,
  kCount,
};
std::string_view MethodName(Method m);

class Metrics {
 public:
  Metrics();
  ~Metrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished request (for GemvStream: one stream item).
  void RecordRequest(Method m, absl::StatusCode code, double seconds);
  // One executed GEMV: vectors multiplied and weight bytes streamed.
  void RecordGemv(int64_t vectors, int64_t weight_bytes);
  void SetResident(int64_t matrices, int64_t bytes);
  void SetMemoryBudget(int64_t bytes);
  // The work queue: how long a request waited for a worker, and how many
  // wait now.
  void RecordQueueWait(double seconds);
  void SetQueueDepth(int64_t depth);
  // One backend computation (a GEMV or attention call): its duration, and
  // for GEMV the vectors it multiplied at once (the batch size).
  void RecordKernel(double seconds);
  // The host's part of one backend GEMV call: its wall time less the device
  // time the backend measured (0 where it measures none).
  void RecordHostPart(double seconds);
  void RecordBatch(int64_t vectors);
  // GPU backends: device memory in use and in all.
  void SetDeviceMemory(int64_t used, int64_t total);
  // Multi-device servers: the placement budget of one device, and how much
  // of it matrices and K/V caches placed there use.
  void SetDeviceBudget(int device, int64_t used, int64_t budget);
  // A request dropped before it ran: its deadline passed (DEADLINE_EXCEEDED),
  // its caller left (CANCELLED) or its batch queue was full
  // (RESOURCE_EXHAUSTED).
  void RecordDropped(absl::StatusCode code);
  // K/V caches stored and their resident bytes.
  void SetKv(int64_t caches, int64_t bytes);
  // One executed attention request: query rows (batch * heads * q_len) and
  // K/V bytes streamed (the pages read, once per kv head and query group).
  void RecordAttention(int64_t query_rows, int64_t kv_bytes);
  // Calls admitted and not yet done, of every plume service (a stream or an
  // upload counts once).
  void SetCallsInFlight(int64_t calls);

 private:
  static constexpr int kNumCodes = 17;  // absl::StatusCode 0..16
  static constexpr int kNumMethods = static_cast<int>(Method::kCount);

  std::shared_ptr<prometheus::Registry> registry_;
  // Series per (method, code), created on first use under mu_ and then read
  // lock-free.
  absl::Mutex mu_;
  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumCodes>, kNumMethods> requests_{};
  std::array<prometheus::Histogram*, kNumMethods> durations_{};
  prometheus::Counter* vectors_ = nullptr;
  prometheus::Counter* weight_bytes_ = nullptr;
  prometheus::Gauge* resident_matrices_ = nullptr;
  prometheus::Gauge* resident_bytes_ = nullptr;
  prometheus::Gauge* memory_budget_ = nullptr;
  prometheus::Histogram* queue_duration_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Histogram* kernel_duration_ = nullptr;
  prometheus::Histogram* host_duration_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Gauge* device_used_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Gauge* device_total_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* device_budget_used_family_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* device_budget_family_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Counter* dropped_deadline_ = nullptr;
  prometheus::Counter* dropped_cancelled_ = nullptr;
  prometheus::Counter* dropped_queue_full_ = nullptr;
  prometheus::Gauge* kv_caches_ = nullptr;
  prometheus::Gauge* kv_bytes_ = nullptr;
  prometheus::Counter* attention_rows_ = nullptr;
  prometheus::Counter* kv_bytes_read_ = nullptr;
  prometheus::Gauge* calls_in_flight_ = nullptr;
};

}  // namespace plume::core
