// MatrixStore: the named, resident matrices of one server, a Registry
// (registry.h) of Matrix and the durable store's file of each.
//
// - A byte budget covers every matrix alive plus every upload in progress;
//   an upload that would not fit gets RESOURCE_EXHAUSTED up front.
// - Matrices are handed out as shared_ptr: a delete removes the name at once,
//   but the memory (and its share of the budget) is released only when the
//   last request using the matrix lets go of it.
// - A name is claimed for the whole upload, so a second upload of the same
//   name fails with ALREADY_EXISTS instead of racing the first.
// - Get and List never wait for the durable store: a delete takes the name
//   off the registry, then removes the file with no lock held, keeping the
//   name reserved until the file is gone (see Delete).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/backend.h"
#include "server/core/batching_options.h"
#include "server/core/metrics.h"
#include "server/core/registry.h"

namespace plume::core {

class Persistence;

struct Matrix {
  std::string name;
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
  std::unique_ptr<BackendMatrix> data;
  Reservation reservation;
  // Per-matrix batcher knobs from the upload (0: the server default).
  BatchingOptions batching{0, std::chrono::microseconds(0), 0};
  std::string content_hash;  // the client's label from the upload (may be empty)
  // Its series (label matrix), resolved once at Commit; null without
  // metrics. They leave /metrics when the last holder of the matrix goes.
  TargetMetricsHandle metrics;
};

class MatrixStore {
 public:
  MatrixStore(int64_t budget_bytes, Metrics* metrics);
  ~MatrixStore();

  using PendingUpload = Registry<const Matrix>::Pending;

  // Claims `name` (ALREADY_EXISTS if a matrix, an upload or an unfinished
  // delete has it) and reserves `bytes` (RESOURCE_EXHAUSTED if they do not
  // fit).
  absl::StatusOr<PendingUpload> BeginUpload(const std::string& name, int64_t bytes);

  // Publishes the uploaded matrix under the pending name. created_unix_ms 0:
  // now.
  std::shared_ptr<const Matrix> Commit(PendingUpload pending, const MatrixShape& shape,
                                       DType source_dtype, std::unique_ptr<BackendMatrix> data,
                                       int64_t created_unix_ms = 0,
                                       const BatchingOptions& batching = {0, {}, 0},
                                       std::string content_hash = {});

  // NOT_FOUND if there is no such matrix. A reader of the registry: never
  // waits for another Get, nor for a delete's file removal.
  absl::StatusOr<std::shared_ptr<const Matrix>> Get(std::string_view name) const;
  std::vector<std::shared_ptr<const Matrix>> List() const;  // sorted by name
  // Takes the matrix off the registry at once (a Get after it is NOT_FOUND),
  // then, with a durable store, removes its file with no lock held. The name
  // stays reserved until the file is gone, so an upload of the same name
  // started meanwhile fails with ALREADY_EXISTS instead of writing a file
  // that this delete would then unlink. If the file cannot be removed the
  // matrix is served again and the error returned.
  absl::Status Delete(const std::string& name);

  // The durable store (nullptr: memory only). Set once, before serving.
  void set_persistence(Persistence* p) { persistence_ = p; }
  Persistence* persistence() const { return persistence_; }

  int64_t budget_bytes() const { return budget_->capacity(); }
  int64_t used_bytes() const { return budget_->used(); }
  // The budget, shared with the K/V cache store.
  const std::shared_ptr<Budget>& budget() const { return budget_; }

 private:
  std::shared_ptr<Budget> budget_;
  Metrics* const metrics_;
  Persistence* persistence_ = nullptr;
  Registry<const Matrix> registry_;
};

}  // namespace plume::core
