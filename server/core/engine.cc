#include "server/core/engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/core/store_loader.h"
#include "server/core/validation.h"

namespace plume::core {

namespace {

absl::Status ValidateBatchingDefaults(const BatchingOptions& b) {
  if (b.max_batch < 1 || b.max_batch > kMaxBatchLimit || b.max_queue_delay.count() < 0 ||
      b.max_queue_delay.count() > kMaxQueueDelayUsLimit || b.max_queue_size < 1 ||
      b.max_queue_size > kMaxQueueSizeLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("batching: max_batch must be 1..", kMaxBatchLimit, ", max_queue_delay_us 0..",
                     kMaxQueueDelayUsLimit, ", max_queue_size 1..", kMaxQueueSizeLimit, "; got ",
                     b.max_batch, ", ", b.max_queue_delay.count(), ", ", b.max_queue_size));
  }
  return absl::OkStatus();
}

}  // namespace

Engine::Engine(EngineOptions options, std::unique_ptr<Backend> backend)
    : options_(std::move(options)), backend_(std::move(backend)) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options,
                                                      std::unique_ptr<Backend> backend,
                                                      EngineLog log) {
  if (backend == nullptr) return absl::InvalidArgumentError("engine: no backend");
  if (absl::Status s = ValidateLimits(options.limits); !s.ok()) return s;
  if (absl::Status s = ValidateBatchingDefaults(options.batching); !s.ok()) return s;
  if (options.work.worker_threads < 1 || options.work.max_queued < 1) {
    return absl::InvalidArgumentError("engine: worker_threads and max_queued must be >= 1");
  }
  if (options.metrics.max_targets < 0 || options.metrics.max_targets > kMaxMetricsTargetsLimit) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics_max_targets must be 0..", kMaxMetricsTargetsLimit,
                                                   ", got ", options.metrics.max_targets));
  }
  auto e = std::unique_ptr<Engine>(new Engine(std::move(options), std::move(backend)));
  const EngineOptions& o = e->options_;
  Backend* b = e->backend_.get();
  e->metrics_ = std::make_unique<Metrics>(o.metrics);
  e->budget_bytes_ = o.store.budget_bytes > 0 ? o.store.budget_bytes : b->memory_capacity_bytes();
  e->store_ = std::make_unique<MatrixStore>(e->budget_bytes_, e->metrics_.get());
  e->matrices_ = std::make_unique<MatrixService>(b, e->store_.get(), o.limits);
  // K/V caches share the matrices' budget.
  e->kv_store_ = std::make_unique<KvStore>(e->store_->budget(), e->metrics_.get());
  e->attention_ = std::make_unique<AttentionService>(b, e->kv_store_.get(), o.limits);
  if (absl::Status s = e->OpenDisk(log); !s.ok()) return s;
  // The batcher records queue time and depth (arrival to launch), so the
  // work queue under it records none.
  e->queue_ = std::make_unique<WorkQueue>(o.work.worker_threads, o.work.max_queued, nullptr);
  Batcher::Options batcher;
  batcher.defaults = o.batching;
  e->batcher_ = std::make_unique<Batcher>(b, e->queue_.get(), e->metrics_.get(), batcher);
  e->StartRefresher();
  return e;
}

absl::Status Engine::OpenDisk(const EngineLog& log) {
  auto say = [&](EngineLogLevel level, const std::string& text) {
    if (log) log(level, text);
  };
  const std::string& dir = options_.store.dir;
  if (dir.empty()) {
    say(EngineLogLevel::kWarning,
        "no store directory: matrices and K/V caches live in memory only and are lost on exit");
    return absl::OkStatus();
  }
  auto disk = DirectoryStore::Open(dir);
  if (!disk.ok()) return disk.status();
  disk_ = std::move(*disk);
  // K/V caches are stored only through a backend that can read them back
  // (Backend::ReadKv; probed on an empty cache, which copies nothing).
  bool store_kv = false;
  if (auto probe = backend_->CreateKv(KvShape{1, 16}); probe.ok()) {
    store_kv = backend_->ReadKv(**probe, 0, 0, nullptr, nullptr, nullptr).ok();
    if (!store_kv) {
      say(EngineLogLevel::kWarning,
          absl::StrCat("backend ", std::string(backend_->name()),
                       " cannot store K/V caches: they live in memory only and are lost on exit; "
                       "K/V files in ",
                       dir, " are left alone"));
    }
  }
  for (const bool kv : {false, true}) {
    if (kv && !store_kv) break;
    const auto report = kv ? LoadStoredKvCaches(disk_.get(), backend_.get(), kv_store_.get())
                           : LoadStoredMatrices(disk_.get(), backend_.get(), store_.get());
    for (const auto& f : report.temp_removed) {
      say(EngineLogLevel::kInfo, absl::StrCat("store: removed unfinished write ", f));
    }
    for (const auto& q : report.quarantined) {
      say(EngineLogLevel::kError, absl::StrCat("store: quarantined ", q));
    }
    for (const auto& n : report.not_loaded) {
      say(EngineLogLevel::kError, absl::StrCat("store: not loaded ", n));
    }
    say(EngineLogLevel::kInfo,
        absl::StrCat("store ", dir, ": loaded ", report.loaded, kv ? " K/V caches" : " matrices",
                     ", quarantined ", report.quarantined.size(), ", not loaded ",
                     report.not_loaded.size()));
  }
  store_->set_persistence(disk_.get());
  if (store_kv) kv_store_->set_disk(disk_.get());
  return absl::OkStatus();
}

void Engine::StartRefresher() {
  // GPU backends: device memory gauges (summed over the devices), and on a
  // multi-device backend each device's placement budget; every second.
  auto refresh = [this] {
    DeviceMemory dm;
    if (backend_->device_memory(&dm)) metrics_->SetDeviceMemory(dm.used, dm.total);
    const std::vector<DeviceBudget> budgets = backend_->device_budgets();
    for (size_t i = 0; i < budgets.size(); ++i) {
      const int id = i < options_.device_ids.size() ? options_.device_ids[i] : static_cast<int>(i);
      metrics_->SetDeviceBudget(id, budgets[i].used, budgets[i].budget);
    }
  };
  refresh();
  DeviceMemory probe;
  if (!backend_->device_memory(&probe) && backend_->device_budgets().empty()) return;
  refresher_ = std::thread([this, refresh] {
    while (!stop_refresh_.WaitForNotificationWithTimeout(absl::Seconds(1))) refresh();
  });
}

void Engine::Drain() {
  batcher_->Flush();
  queue_->WaitIdle();
}

Engine::~Engine() {
  stop_refresh_.Notify();
  if (refresher_.joinable()) refresher_.join();
  batcher_.reset();  // launches what waits and waits for its batches
  queue_.reset();    // finishes what is queued before the services go
}

}  // namespace plume::core
