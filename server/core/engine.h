// The Engine: everything a plume server computes with, built in one place
// from EngineOptions. It owns the backend, the metrics, the byte budget and
// the registries (matrices, K/V caches), the durable store, the services'
// logic (MatrixService, AttentionService), the WorkQueue and the Batcher,
// and the refresher of the device gauges. server/grpc only registers
// handlers over an Engine (Server::Start(options, engine)); plume-server's
// main is flags -> options -> backend -> Engine -> Server; tests build an
// Engine the same way (tests/common/test_server.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "server/core/attention_service.h"
#include "server/core/backend.h"
#include "server/core/batcher.h"
#include "server/core/batching_options.h"
#include "server/core/durable_store.h"
#include "server/core/kv_store.h"
#include "server/core/limits.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"

namespace plume::core {

struct StoreOptions {
  // Bytes the matrices and K/V caches may hold together; 0: the backend's
  // memory_capacity_bytes().
  int64_t budget_bytes = 0;
  // The durable store's directory; empty: memory only.
  std::string dir;
};

struct WorkOptions {
  int worker_threads = 4;          // run batches, upload ends, appends, deletes
  int64_t max_queued = 4096;       // tasks waiting for a worker before RESOURCE_EXHAUSTED
};

struct EngineOptions {
  StoreOptions store;
  BatchingOptions batching;  // the batcher's defaults; an upload may override them
  Limits limits;
  WorkOptions work;
  // The per-target series' label cap (--metrics_max_targets).
  MetricsOptions metrics;
  // A multi-device backend's device ids, for the per-device budget gauges
  // (in ShardedBackend device order); empty otherwise.
  std::vector<int> device_ids;
};

enum class EngineLogLevel { kInfo, kWarning, kError };
// Where the Engine reports what it did at startup (what the durable store
// loaded, quarantined, ...). May be empty.
using EngineLog = std::function<void(EngineLogLevel, const std::string&)>;

class Engine {
 public:
  // Takes the backend; validates the limits and the batching options, opens
  // and loads the durable store (options.store.dir) before returning.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineOptions options,
                                                        std::unique_ptr<Backend> backend,
                                                        EngineLog log = {});
  // Launches what waits, finishes every batch and queued task, then frees
  // the rest in reverse order of construction.
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineOptions& options() const { return options_; }
  Backend* backend() const { return backend_.get(); }
  Metrics* metrics() const { return metrics_.get(); }
  MatrixStore* matrix_store() const { return store_.get(); }
  KvStore* kv_store() const { return kv_store_.get(); }
  MatrixService* matrices() const { return matrices_.get(); }
  AttentionService* attention() const { return attention_.get(); }
  WorkQueue* work_queue() const { return queue_.get(); }
  Batcher* batcher() const { return batcher_.get(); }
  // Null when the store is memory only.
  DirectoryStore* disk() const { return disk_.get(); }
  int64_t budget_bytes() const { return budget_bytes_; }

  // Launches every batch still waiting and waits until no batch runs and no
  // task is queued or running. A server calls it once its calls are done,
  // before its handlers go.
  void Drain();

 private:
  Engine(EngineOptions options, std::unique_ptr<Backend> backend);
  absl::Status OpenDisk(const EngineLog& log);
  void StartRefresher();

  const EngineOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Metrics> metrics_;
  int64_t budget_bytes_ = 0;
  std::unique_ptr<DirectoryStore> disk_;
  std::unique_ptr<MatrixStore> store_;
  std::unique_ptr<KvStore> kv_store_;
  std::unique_ptr<MatrixService> matrices_;
  std::unique_ptr<AttentionService> attention_;
  std::unique_ptr<WorkQueue> queue_;
  std::unique_ptr<Batcher> batcher_;  // runs its batches on queue_
  absl::Notification stop_refresh_;
  std::thread refresher_;
};

}  // namespace plume::core
