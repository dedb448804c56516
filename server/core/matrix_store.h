// MatrixStore: the named, resident matrices of one server.
//
// - A byte budget covers every matrix alive plus every upload in progress;
//   an upload that would not fit gets RESOURCE_EXHAUSTED up front.
// - Matrices are handed out as shared_ptr: a delete removes the name at once,
//   but the memory (and its share of the budget) is released only when the
//   last request using the matrix lets go of it.
// - A name is claimed for the whole upload, so a second upload of the same
//   name fails with ALREADY_EXISTS instead of racing the first.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/backend.h"
#include "server/core/batching_options.h"

namespace plume::core {

class Metrics;
class Persistence;

// Shared accounting of the byte budget. Outlives the store if a matrix does.
class Budget {
 public:
  explicit Budget(int64_t capacity) : capacity_(capacity) {}
  bool TryReserve(int64_t bytes);
  void Release(int64_t bytes) { used_.fetch_sub(bytes, std::memory_order_acq_rel); }
  int64_t used() const { return used_.load(std::memory_order_acquire); }
  int64_t capacity() const { return capacity_; }

 private:
  const int64_t capacity_;
  std::atomic<int64_t> used_{0};
};

// Bytes held against the budget; released on destruction.
class Reservation {
 public:
  Reservation() = default;
  Reservation(std::shared_ptr<Budget> budget, int64_t bytes)
      : budget_(std::move(budget)), bytes_(bytes) {}
  Reservation(Reservation&& o) noexcept : budget_(std::move(o.budget_)), bytes_(o.bytes_) {
    o.bytes_ = 0;
  }
  Reservation& operator=(Reservation&& o) noexcept;
  ~Reservation() { reset(); }
  void reset();
  int64_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<Budget> budget_;
  int64_t bytes_ = 0;
};

// A name claimed by an upload in progress, with the budget reserved for it.
// Dropped before the store commits it, it frees both (Store::ReleaseName).
template <class Store>
class PendingName {
 public:
  PendingName(PendingName&& o) noexcept
      : store_(o.store_), name_(std::move(o.name_)), reservation_(std::move(o.reservation_)) {
    o.store_ = nullptr;
  }
  ~PendingName() {
    if (store_ != nullptr) store_->ReleaseName(name_);
  }
  const std::string& name() const { return name_; }

 private:
  friend Store;
  PendingName(Store* store, std::string name, Reservation r)
      : store_(store), name_(std::move(name)), reservation_(std::move(r)) {}
  Store* store_;
  std::string name_;
  Reservation reservation_;
};

struct Matrix {
  std::string name;
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
  std::unique_ptr<BackendMatrix> data;
  Reservation reservation;
  // Per-matrix batcher knobs from the upload (0: the server default).
  BatchingOptions batching{0, std::chrono::microseconds(0), 0};
};

class MatrixStore {
 public:
  MatrixStore(int64_t budget_bytes, Metrics* metrics);
  ~MatrixStore();

  using PendingUpload = PendingName<MatrixStore>;

  // Claims `name` (ALREADY_EXISTS if a matrix or an upload has it) and
  // reserves `bytes` (RESOURCE_EXHAUSTED if they do not fit).
  absl::StatusOr<PendingUpload> BeginUpload(const std::string& name, int64_t bytes);

  // Publishes the uploaded matrix under the pending name. created_unix_ms 0:
  // now.
  std::shared_ptr<const Matrix> Commit(PendingUpload pending, const MatrixShape& shape,
                                       DType source_dtype, std::unique_ptr<BackendMatrix> data,
                                       int64_t created_unix_ms = 0,
                                       const BatchingOptions& batching = {0, {}, 0});

  // NOT_FOUND if there is no such matrix.
  absl::StatusOr<std::shared_ptr<const Matrix>> Get(const std::string& name) const;
  std::vector<std::shared_ptr<const Matrix>> List() const;  // sorted by name
  absl::Status Delete(const std::string& name);

  // The durable store (nullptr: memory only). Set once, before serving.
  // Delete removes a matrix's file before the name becomes free again, so a
  // new upload of that name can never lose its file to an older delete.
  void set_persistence(Persistence* p) { persistence_ = p; }
  Persistence* persistence() const { return persistence_; }

  int64_t budget_bytes() const { return budget_->capacity(); }
  int64_t used_bytes() const { return budget_->used(); }
  // The budget, shared with the K/V cache store.
  const std::shared_ptr<Budget>& budget() const { return budget_; }

 private:
  friend class PendingName<MatrixStore>;
  void ReleaseName(const std::string& name);
  // Takes a listed matrix out; the caller frees it outside the lock.
  std::shared_ptr<const Matrix> EraseLocked(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<Budget> budget_;
  Metrics* metrics_;
  Persistence* persistence_ = nullptr;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const Matrix>, std::less<>> matrices_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> pending_ ABSL_GUARDED_BY(mu_);
  // Matrices whose file is being removed (Delete, outside the lock).
  std::set<std::string, std::less<>> deleting_ ABSL_GUARDED_BY(mu_);
  int64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace plume::core
