// KvStore: the named, resident K/V caches of one server, beside MatrixStore
// and sharing its byte budget (MatrixStore::budget()).
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
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/backend.h"
#include "server/core/matrix_store.h"

namespace plume::core {

class Metrics;

struct KvCache {
  std::string name;
  KvShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;

  // Readers: attention and info; writer: append and delete.
  mutable absl::Mutex mu;
  std::unique_ptr<BackendKvCache> data ABSL_PT_GUARDED_BY(mu);
  bool deleted ABSL_GUARDED_BY(mu) = false;
  std::vector<Reservation> reservations ABSL_GUARDED_BY(mu);
};

class KvStore {
 public:
  KvStore(std::shared_ptr<Budget> budget, Metrics* metrics);
  ~KvStore();

  // A claimed name plus the budget reserved for an upload in progress.
  class PendingUpload {
   public:
    PendingUpload(PendingUpload&&) noexcept;
    ~PendingUpload();
    const std::string& name() const { return name_; }

   private:
    friend class KvStore;
    PendingUpload(KvStore* store, std::string name, Reservation r);
    KvStore* store_;
    std::string name_;
    Reservation reservation_;
  };

  // Claims `name` (ALREADY_EXISTS if a cache or an upload has it) and
  // reserves `bytes` (RESOURCE_EXHAUSTED if they do not fit).
  absl::StatusOr<PendingUpload> BeginUpload(const std::string& name, int64_t bytes);
  // Publishes the uploaded cache (data->seq() tokens) under the pending name.
  std::shared_ptr<KvCache> Commit(PendingUpload pending, const KvShape& shape, DType source_dtype,
                                  std::unique_ptr<BackendKvCache> data);

  // NOT_FOUND if there is no such cache.
  absl::StatusOr<std::shared_ptr<KvCache>> Get(const std::string& name) const;
  std::vector<std::shared_ptr<KvCache>> List() const;  // sorted by name
  absl::Status Delete(const std::string& name);

  // Appends `tokens` tokens to `cache` through `backend`: reserves the bytes
  // of the pages they add (RESOURCE_EXHAUSTED), then calls
  // backend->AppendKv. NOT_FOUND if the cache was deleted meanwhile.
  absl::Status Append(KvCache& cache, Backend* backend, const KvAppendArgs& args);

 private:
  void ReleaseName(const std::string& name);
  void AddBytes(int64_t delta);
  absl::Status BudgetExceeded(const std::string& name, int64_t bytes) const;

  std::shared_ptr<Budget> budget_;
  Metrics* metrics_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<KvCache>, std::less<>> caches_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> pending_ ABSL_GUARDED_BY(mu_);
  int64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace plume::core
