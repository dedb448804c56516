#include "server/core/metrics.h"

#include <map>
#include <string>

#include "absl/status/status.h"
#include "plume/build_info.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace plume::core {

std::string_view MethodName(Method m) {
  switch (m) {
    case Method::kUploadMatrix: return "UploadMatrix";
    case Method::kGetMatrix: return "GetMatrix";
    case Method::kListMatrices: return "ListMatrices";
    case Method::kDeleteMatrix: return "DeleteMatrix";
    case Method::kGemv: return "Gemv";
    case Method::kGemvStream: return "GemvStream";
    case Method::kUploadKV: return "UploadKV";
    case Method::kAppendKV: return "AppendKV";
    case Method::kGetKV: return "GetKV";
    case Method::kListKV: return "ListKV";
    case Method::kDeleteKV: return "DeleteKV";
    case Method::kAttention: return "Attention";
    case Method::kAttentionStream: return "AttentionStream";
    case Method::kEcho: return "Echo";
    case Method::kEchoStream: return "EchoStream";
    case Method::kCount: break;
  }
  return "unknown";
}

namespace {

// Latency buckets from 50 us to 60 s, roughly x2.5 apart.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0, 30.0, 60.0};
}

}  // namespace

Metrics::Metrics(MetricsOptions options)
    : options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  // The build as labels on a constant 1 (the Prometheus *_info pattern):
  // joins onto other series with `* on() group_left(version) plume_build_info`.
  const BuildInfo& build = GetBuildInfo();
  prometheus::BuildGauge()
      .Name("plume_build_info")
      .Help("Always 1; labels: version, git commit, backends compiled in, CUDA version built against (none without CUDA).")
      .Register(*registry_)
      .Add({{"version", std::string(build.version)},
            {"commit", std::string(build.commit)},
            {"backend", std::string(build.backends)},
            {"cuda", build.cuda.empty() ? std::string("none") : std::string(build.cuda)}})
      .Set(1);
  auto& requests = prometheus::BuildCounter()
                       .Name("plume_requests_total")
                       .Help("Finished requests (GemvStream, AttentionStream: stream items) by method and gRPC code.")
                       .Register(*registry_);
  auto& durations = prometheus::BuildHistogram()
                        .Name("plume_request_duration_seconds")
                        .Help("Time from a request's arrival to its response, by method.")
                        .Register(*registry_);
  for (int m = 0; m < kNumMethods; ++m) {
    const std::string method(MethodName(static_cast<Method>(m)));
    // A series per code appears once that code occurs; OK exists up front.
    requests_[m][0] = &requests.Add({{"method", method}, {"code", "OK"}});
    durations_[m] = &durations.Add({{"method", method}}, LatencyBuckets());
  }
  resident_matrices_ = &prometheus::BuildGauge()
                            .Name("plume_resident_matrices")
                            .Help("Matrices currently stored.")
                            .Register(*registry_)
                            .Add({});
  resident_bytes_ = &prometheus::BuildGauge()
                         .Name("plume_resident_bytes")
                         .Help("Bytes of packed codes and scales of the stored matrices.")
                         .Register(*registry_)
                         .Add({});
  memory_budget_ = &prometheus::BuildGauge()
                        .Name("plume_memory_budget_bytes")
                        .Help("Bytes the store may hold (matrices and uploads in progress).")
                        .Register(*registry_)
                        .Add({});
  kv_caches_ = &prometheus::BuildGauge()
                    .Name("plume_kv_caches")
                    .Help("K/V caches currently stored.")
                    .Register(*registry_)
                    .Add({});
  kv_bytes_ = &prometheus::BuildGauge()
                   .Name("plume_kv_bytes")
                   .Help("Bytes of the stored K/V caches (FP8 pages and scales).")
                   .Register(*registry_)
                   .Add({});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("plume_queue_depth")
                      .Help("Requests waiting in the batcher's queues (all matrices and K/V caches).")
                      .Register(*registry_)
                      .Add({});

  // Per target: series labelled `matrix` (GEMV) or `cache` (attention),
  // made when a target is registered (Target()).
  auto& queue = prometheus::BuildHistogram()
                    .Name("plume_queue_duration_seconds")
                    .Help("Time a GEMV or attention request waited, from its arrival in the batcher to "
                          "the launch of its batch; by matrix or K/V cache.")
                    .Register(*registry_);
  auto& kernel = prometheus::BuildHistogram()
                     .Name("plume_kernel_duration_seconds")
                     .Help("Time of one backend computation (GEMV or attention), by matrix or K/V cache. "
                           "CUDA GEMV: the device's time (copy-in, kernels, any copy-out, by CUDA events); "
                           "otherwise the call's wall time.")
                     .Register(*registry_);
  auto& host = prometheus::BuildHistogram()
                   .Name("plume_host_duration_seconds")
                   .Help("Host part of one backend GEMV call, by matrix: its wall time less "
                         "plume_kernel_duration_seconds (staging, launch, synchronisation; "
                         "0 where the backend measures no device time).")
                   .Register(*registry_);
  auto& batch = prometheus::BuildHistogram()
                    .Name("plume_batch_size")
                    .Help("Units computed by one backend call (a batch of requests): vectors of a GEMV "
                          "(label matrix), batch elements of an attention call (label cache).")
                    .Register(*registry_);
  TargetFamilies& mf = targets_[static_cast<int>(TargetKind::kMatrix)];
  mf.label = "matrix";
  mf.queue = &queue;
  mf.kernel = &kernel;
  mf.host = &host;
  mf.batch = &batch;
  mf.units = &prometheus::BuildCounter()
                  .Name("plume_vectors_total")
                  .Help("Vectors multiplied by GEMV, by matrix.")
                  .Register(*registry_);
  mf.bytes = &prometheus::BuildCounter()
                  .Name("plume_weight_bytes_read_total")
                  .Help("Packed weight bytes (codes plus scales) streamed by GEMV, by matrix; "
                        "rate() of it is the achieved weight bandwidth.")
                  .Register(*registry_);
  TargetFamilies& cf = targets_[static_cast<int>(TargetKind::kKvCache)];
  cf.label = "cache";
  cf.queue = &queue;
  cf.kernel = &kernel;
  cf.batch = &batch;
  cf.units = &prometheus::BuildCounter()
                  .Name("plume_attention_queries_total")
                  .Help("Query rows (batch x heads x q_len) answered by attention, by K/V cache.")
                  .Register(*registry_);
  cf.bytes = &prometheus::BuildCounter()
                  .Name("plume_kv_bytes_read_total")
                  .Help("K/V cache bytes streamed by attention, by K/V cache; rate() of it is the "
                        "achieved K/V bandwidth.")
                  .Register(*registry_);
  requests_family_ = &requests;
  auto& dropped = prometheus::BuildCounter()
                      .Name("plume_requests_dropped_total")
                      .Help("Requests never run, by reason: deadline (passed before its batch "
                            "launched), cancelled (the caller left), queue_full (its batch queue "
                            "was full).")
                      .Register(*registry_);
  dropped_deadline_ = &dropped.Add({{"reason", "deadline"}});
  dropped_cancelled_ = &dropped.Add({{"reason", "cancelled"}});
  dropped_queue_full_ = &dropped.Add({{"reason", "queue_full"}});
  calls_in_flight_ = &prometheus::BuildGauge()
                          .Name("plume_calls_in_flight")
                          .Help("Calls admitted and not yet done, of every plume service (not "
                                "health checks); a stream or an upload counts once.")
                          .Register(*registry_)
                          .Add({});
}

Metrics::~Metrics() = default;

namespace {

prometheus::Histogram::BucketBoundaries HostBuckets() {
  return {1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 10e-3, 100e-3};
}

prometheus::Histogram::BucketBoundaries BatchBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
}

}  // namespace

TargetMetricsHandle Metrics::Target(TargetKind kind, const std::string& name) {
  absl::MutexLock lock(&targets_mu_);
  TargetFamilies& f = targets_[static_cast<int>(kind)];
  std::string label = name;
  auto it = f.entries.find(label);
  if (it == f.entries.end() && label != kOtherTarget) {
    const int64_t named = static_cast<int64_t>(f.entries.size()) -
                          (f.entries.count(kOtherTarget) != 0 ? 1 : 0);
    if (named >= options_.max_targets) {
      label = std::string(kOtherTarget);
      it = f.entries.find(label);
    }
  }
  if (it == f.entries.end()) {
    auto e = std::make_unique<TargetEntry>();
    const prometheus::Labels labels = {{f.label, label}};
    e->series.queue_ = &f.queue->Add(labels, LatencyBuckets());
    e->series.kernel_ = &f.kernel->Add(labels, LatencyBuckets());
    if (f.host != nullptr) e->series.host_ = &f.host->Add(labels, HostBuckets());
    e->series.batch_ = &f.batch->Add(labels, BatchBuckets());
    e->series.units_ = &f.units->Add(labels);
    e->series.bytes_ = &f.bytes->Add(labels);
    it = f.entries.emplace(label, std::move(e)).first;
  }
  TargetEntry& entry = *it->second;
  ++entry.holders;
  // One control block per holder; the entry counts them (under the lock, so
  // a release and a new registration of the same label never race).
  return TargetMetricsHandle(&entry.series, [this, kind, label](const TargetMetrics*) {
    ReleaseTarget(kind, label);
  });
}

void Metrics::ReleaseTarget(TargetKind kind, const std::string& label) {
  absl::MutexLock lock(&targets_mu_);
  TargetFamilies& f = targets_[static_cast<int>(kind)];
  auto it = f.entries.find(label);
  if (it == f.entries.end() || --it->second->holders > 0) return;
  const TargetMetrics& s = it->second->series;
  f.queue->Remove(s.queue_);
  f.kernel->Remove(s.kernel_);
  if (f.host != nullptr) f.host->Remove(s.host_);
  f.batch->Remove(s.batch_);
  f.units->Remove(s.units_);
  f.bytes->Remove(s.bytes_);
  f.entries.erase(it);
}

void TargetMetrics::RecordQueueWait(double seconds) const { queue_->Observe(seconds); }
void TargetMetrics::RecordKernel(double seconds) const { kernel_->Observe(seconds); }
void TargetMetrics::RecordHostPart(double seconds) const {
  if (host_ != nullptr) host_->Observe(seconds);
}
void TargetMetrics::RecordBatch(int64_t units) const { batch_->Observe(static_cast<double>(units)); }
void TargetMetrics::RecordWork(int64_t units, int64_t bytes) const {
  units_->Increment(static_cast<double>(units));
  bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::RecordRequest(Method m, absl::StatusCode code, double seconds) {
  const int mi = static_cast<int>(m);
  int ci = static_cast<int>(code);
  if (ci < 0 || ci >= kNumCodes) ci = static_cast<int>(absl::StatusCode::kUnknown);
  prometheus::Counter* counter = requests_[mi][ci].load(std::memory_order_acquire);
  if (counter == nullptr) {
    absl::MutexLock lock(&mu_);
    counter = &requests_family_->Add(
        {{"method", std::string(MethodName(m))},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(ci))}});
    requests_[mi][ci].store(counter, std::memory_order_release);
  }
  counter->Increment();
  durations_[mi]->Observe(seconds);
}

void Metrics::SetResident(int64_t matrices, int64_t bytes) {
  resident_matrices_->Set(static_cast<double>(matrices));
  resident_bytes_->Set(static_cast<double>(bytes));
}

void Metrics::RecordDropped(absl::StatusCode code) {
  if (code == absl::StatusCode::kResourceExhausted) {
    dropped_queue_full_->Increment();
    return;
  }
  (code == absl::StatusCode::kCancelled ? dropped_cancelled_ : dropped_deadline_)->Increment();
}

void Metrics::SetQueueDepth(int64_t depth) { queue_depth_->Set(static_cast<double>(depth)); }

void Metrics::SetMemoryBudget(int64_t bytes) { memory_budget_->Set(static_cast<double>(bytes)); }

void Metrics::SetDeviceMemory(int64_t used, int64_t total) {
  absl::MutexLock lock(&mu_);
  if (device_used_ == nullptr) {
    // Created on first use: a server without a GPU has no such series.
    device_used_ = &prometheus::BuildGauge()
                        .Name("plume_device_memory_used_bytes")
                        .Help("Device memory in use on the GPU (by any process).")
                        .Register(*registry_)
                        .Add({});
    device_total_ = &prometheus::BuildGauge()
                         .Name("plume_device_memory_total_bytes")
                         .Help("Device memory of the GPU.")
                         .Register(*registry_)
                         .Add({});
  }
  device_used_->Set(static_cast<double>(used));
  device_total_->Set(static_cast<double>(total));
}

void Metrics::SetDeviceBudget(int device, int64_t used, int64_t budget) {
  absl::MutexLock lock(&mu_);
  if (device_budget_used_family_ == nullptr) {
    // Created on first use: only multi-device servers have these series.
    device_budget_used_family_ = &prometheus::BuildGauge()
                                      .Name("plume_device_budget_used_bytes")
                                      .Help("Bytes of matrices and K/V caches placed on each device.")
                                      .Register(*registry_);
    device_budget_family_ = &prometheus::BuildGauge()
                                 .Name("plume_device_budget_bytes")
                                 .Help("Placement budget of each device.")
                                 .Register(*registry_);
  }
  const std::map<std::string, std::string> labels = {{"device", std::to_string(device)}};
  device_budget_used_family_->Add(labels).Set(static_cast<double>(used));
  device_budget_family_->Add(labels).Set(static_cast<double>(budget));
}

void Metrics::SetKv(int64_t caches, int64_t bytes) {
  kv_caches_->Set(static_cast<double>(caches));
  kv_bytes_->Set(static_cast<double>(bytes));
}

void Metrics::SetCallsInFlight(int64_t calls) {
  calls_in_flight_->Set(static_cast<double>(calls));
}

}  // namespace plume::core
