// KvStore: the named, resident K/V caches of one server, beside MatrixStore
// and sharing its byte budget (MatrixStore::budget()): a Registry
// (registry.h) of KvCache, the appends and the durable store's file of each.
//
// - An upload claims its name (ALREADY_EXISTS for a second one) and reserves
//   the bytes of its tokens up front; an append reserves the pages it adds.
//   Either gets RESOURCE_EXHAUSTED when the budget cannot hold them.
// - Caches are handed out as shared_ptr: a delete removes the name at once,
//   but the memory (and its share of the budget) is released only when the
//   last request using the cache lets go of it.
// - Each cache has a reader/writer lock: attention reads under the reader
//   side, an append writes under the writer side, so a request sees a
//   consistent seq and no half-written tokens.
// - With a durable store (set_disk), an upload, an append and a delete are
//   acknowledged only once the cache's file says so (durable_store.h); an
//   append whose write fails is rolled back to what the file holds.
// - Get and List never wait for the durable store: a delete takes the name
//   off the registry and marks the cache deleted, then removes the file with
//   no lock held, keeping the name reserved until the file is gone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/backend.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/registry.h"

namespace plume::core {

class DirectoryStore;

struct KvCache {
  std::string name;
  KvShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
  // Its series (label cache), resolved once at Commit; null without metrics.
  TargetMetricsHandle metrics;

  // Readers: attention and info; writer: append and delete.
  mutable absl::Mutex mu;
  std::unique_ptr<BackendKvCache> data ABSL_PT_GUARDED_BY(mu);
  bool deleted ABSL_GUARDED_BY(mu) = false;
  std::vector<Reservation> reservations ABSL_GUARDED_BY(mu);
  int64_t file_bytes ABSL_GUARDED_BY(mu) = 0;  // size of its store file (durable store only)
};

class KvStore {
 public:
  KvStore(std::shared_ptr<Budget> budget, Metrics* metrics);
  ~KvStore();

  using PendingUpload = Registry<KvCache>::Pending;

  // Claims `name` (ALREADY_EXISTS if a cache, an upload or an unfinished
  // delete has it) and reserves `bytes` (RESOURCE_EXHAUSTED if they do not
  // fit).
  absl::StatusOr<PendingUpload> BeginUpload(const std::string& name, int64_t bytes);
  // Publishes the uploaded cache (data->seq() tokens) under the pending name.
  // created_unix_ms 0: now. file_bytes: the size of its store file, if any.
  std::shared_ptr<KvCache> Commit(PendingUpload pending, const KvShape& shape, DType source_dtype,
                                  std::unique_ptr<BackendKvCache> data, int64_t created_unix_ms = 0,
                                  int64_t file_bytes = 0);

  // The durable store (nullptr: memory only). Set before serving.
  void set_disk(DirectoryStore* disk) { disk_ = disk; }
  DirectoryStore* disk() const { return disk_; }
  // Writes the whole store file of a cache (an upload, a compaction) through
  // a temp file and rename; returns its size.
  absl::StatusOr<int64_t> SaveFile(Backend* backend, const std::string& name, const KvShape& shape,
                                   DType source_dtype, int64_t created_unix_ms,
                                   const BackendKvCache& data);

  // NOT_FOUND if there is no such cache.
  absl::StatusOr<std::shared_ptr<KvCache>> Get(std::string_view name) const;
  std::vector<std::shared_ptr<KvCache>> List() const;  // sorted by name
  // Takes the cache off the registry and marks it deleted (after any append
  // in progress), then, with a durable store, removes its file with no lock
  // held; the name stays reserved until then (MatrixStore::Delete). If the
  // file cannot be removed the cache is served again and the error returned.
  absl::Status Delete(const std::string& name);

  // Appends `tokens` tokens to `cache` through `backend`: reserves the bytes
  // of the pages they add (RESOURCE_EXHAUSTED), then calls
  // backend->AppendKv. NOT_FOUND if the cache was deleted meanwhile.
  absl::Status Append(KvCache& cache, Backend* backend, const KvAppendArgs& args);

 private:
  // After backend->AppendKv grew `cache` from `seq_before` tokens: one record
  // at the end of its file, or a compaction when the log is over twice the
  // live pages. On failure, puts back what the file holds (or, failing that,
  // stops serving the cache).
  absl::Status PersistAppend(KvCache& cache, Backend* backend, int64_t seq_before)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache.mu);
  void RollBack(KvCache& cache, Backend* backend, int64_t seq_before, bool file_ok) ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache.mu);

  std::shared_ptr<Budget> budget_;
  Metrics* const metrics_;
  DirectoryStore* disk_ = nullptr;
  Registry<KvCache> registry_;
};

}  // namespace plume::core
