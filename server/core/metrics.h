// Prometheus metrics of one server (prometheus-cpp; no gRPC here).
// Names follow Prometheus conventions: plume_ prefix, base units, _total on
// counters. The hot-path handles are resolved once, up front, so recording a
// request costs a few atomic adds and no label lookups: the series of each
// matrix and K/V cache (labels `matrix` / `cache`) are resolved when it is
// registered and kept with it (TargetMetrics).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
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

struct MetricsOptions {
  // Distinct values the `matrix` label may take, and separately the `cache`
  // label; the series of matrices (caches) registered beyond it are shared
  // under the value "_other". 0: every target is "_other".
  int64_t max_targets = 100;
};
// The upper bound on MetricsOptions::max_targets.
inline constexpr int64_t kMaxMetricsTargetsLimit = 100000;
// The label value of the targets beyond MetricsOptions::max_targets.
inline constexpr std::string_view kOtherTarget = "_other";

enum class TargetKind : int { kMatrix = 0, kKvCache = 1 };

// The per-target series of one matrix (label `matrix`) or K/V cache (label
// `cache`), or of the targets folded into "_other". Made once, when the
// target is registered (MatrixStore / KvStore Commit), and kept with it:
// recording costs the series' own atomic adds, no lookup. Handed out by
// Metrics::Target as a shared_ptr whose last copy removes the series from
// the exposition (a deleted matrix's series go once its last request ends).
class TargetMetrics {
 public:
  // A request's arrival in the batcher to the launch of its batch.
  void RecordQueueWait(double seconds) const;
  // One backend call: its (device) time, and for GEMV the host's part.
  void RecordKernel(double seconds) const;
  void RecordHostPart(double seconds) const;  // matrices only (no-op for caches)
  // Units (vectors, or attention batch elements) computed by one backend call.
  void RecordBatch(int64_t units) const;
  // Work done: GEMV vectors and weight bytes streamed, or attention query
  // rows and K/V bytes streamed.
  void RecordWork(int64_t units, int64_t bytes) const;

 private:
  friend class Metrics;
  prometheus::Histogram* queue_ = nullptr;
  prometheus::Histogram* kernel_ = nullptr;
  prometheus::Histogram* host_ = nullptr;  // matrices only
  prometheus::Histogram* batch_ = nullptr;
  prometheus::Counter* units_ = nullptr;
  prometheus::Counter* bytes_ = nullptr;
};
using TargetMetricsHandle = std::shared_ptr<const TargetMetrics>;

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
  explicit Metrics(MetricsOptions options = {});
  // Every TargetMetricsHandle must be gone first.
  ~Metrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished request (for GemvStream: one stream item).
  void RecordRequest(Method m, absl::StatusCode code, double seconds);
  // The series of matrix (or K/V cache) `name`: its own while fewer than
  // max_targets names of its kind have series, else those of "_other" (as
  // is a target named "_other"). Two targets of one name (a deleted matrix
  // still finishing its requests, and its re-upload) share the series.
  // Takes a lock: call it when a target is registered, never per request.
  TargetMetricsHandle Target(TargetKind kind, const std::string& name);
  void SetResident(int64_t matrices, int64_t bytes);
  void SetMemoryBudget(int64_t bytes);
  // Requests waiting in the batcher's queues.
  void SetQueueDepth(int64_t depth);
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

  const MetricsOptions& options() const { return options_; }
  // Calls admitted and not yet done, of every plume service (a stream or an
  // upload counts once).
  void SetCallsInFlight(int64_t calls);

 private:
  static constexpr int kNumCodes = 17;  // absl::StatusCode 0..16
  static constexpr int kNumMethods = static_cast<int>(Method::kCount);

  // The labelled families of one target kind, and its series by label value.
  struct TargetEntry {
    TargetMetrics series;
    int64_t holders = 0;
  };
  struct TargetFamilies {
    std::string label;  // "matrix" or "cache"
    prometheus::Family<prometheus::Histogram>* queue = nullptr;
    prometheus::Family<prometheus::Histogram>* kernel = nullptr;
    prometheus::Family<prometheus::Histogram>* host = nullptr;  // matrices only
    prometheus::Family<prometheus::Histogram>* batch = nullptr;
    prometheus::Family<prometheus::Counter>* units = nullptr;
    prometheus::Family<prometheus::Counter>* bytes = nullptr;
    std::map<std::string, std::unique_ptr<TargetEntry>, std::less<>> entries;
  };
  // Drops one holder of `label` of `kind`; its series go with the last.
  void ReleaseTarget(TargetKind kind, const std::string& label);

  const MetricsOptions options_;

  std::shared_ptr<prometheus::Registry> registry_;
  // Series per (method, code), created on first use under mu_ and then read
  // lock-free.
  absl::Mutex mu_;
  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumCodes>, kNumMethods> requests_{};
  std::array<prometheus::Histogram*, kNumMethods> durations_{};
  prometheus::Gauge* resident_matrices_ = nullptr;
  prometheus::Gauge* resident_bytes_ = nullptr;
  prometheus::Gauge* memory_budget_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  absl::Mutex targets_mu_;
  std::array<TargetFamilies, 2> targets_ ABSL_GUARDED_BY(targets_mu_);
  prometheus::Gauge* device_used_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Gauge* device_total_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* device_budget_used_family_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Family<prometheus::Gauge>* device_budget_family_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Counter* dropped_deadline_ = nullptr;
  prometheus::Counter* dropped_cancelled_ = nullptr;
  prometheus::Counter* dropped_queue_full_ = nullptr;
  prometheus::Gauge* kv_caches_ = nullptr;
  prometheus::Gauge* kv_bytes_ = nullptr;
  prometheus::Gauge* calls_in_flight_ = nullptr;
};

}  // namespace plume::core
