#include "server/core/matrix_store.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/core/durable_store.h"
#include "server/core/metrics.h"

namespace plume::core {

bool Budget::TryReserve(int64_t bytes) {
  int64_t used = used_.load(std::memory_order_acquire);
  do {
    if (bytes > capacity_ - used) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_acq_rel));
  return true;
}

Reservation& Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    reset();
    budget_ = std::move(o.budget_);
    bytes_ = o.bytes_;
    o.bytes_ = 0;
  }
  return *this;
}

void Reservation::reset() {
  if (budget_ && bytes_ > 0) budget_->Release(bytes_);
  budget_.reset();
  bytes_ = 0;
}

MatrixStore::MatrixStore(int64_t budget_bytes, Metrics* metrics)
    : budget_(std::make_shared<Budget>(budget_bytes)), metrics_(metrics) {
  if (metrics_ != nullptr) metrics_->SetMemoryBudget(budget_bytes);
}

MatrixStore::~MatrixStore() = default;

absl::StatusOr<MatrixStore::PendingUpload> MatrixStore::BeginUpload(const std::string& name,
                                                                    int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (matrices_.count(name) != 0 || pending_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "matrix \"", name, "\" already exists", pending_.count(name) ? " (upload in progress)" : "",
        "; delete it first"));
  }
  if (!budget_->TryReserve(bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory budget exceeded: matrix \"", name, "\" needs ", bytes, " bytes, ",
        budget_->capacity() - budget_->used(), " of ", budget_->capacity(), " bytes free"));
  }
  pending_.insert(name);
  return PendingUpload(this, name, Reservation(budget_, bytes));
}

std::shared_ptr<const Matrix> MatrixStore::Commit(PendingUpload pending, const MatrixShape& shape,
                                                  DType source_dtype,
                                                  std::unique_ptr<BackendMatrix> data,
                                                  int64_t created_unix_ms,
                                                  const BatchingOptions& batching) {
  auto m = std::make_shared<Matrix>();
  m->name = pending.name_;
  m->shape = shape;
  m->source_dtype = source_dtype;
  m->created_unix_ms = created_unix_ms != 0
                           ? created_unix_ms
                           : std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  m->data = std::move(data);
  m->reservation = std::move(pending.reservation_);
  m->batching = batching;
  absl::MutexLock lock(&mu_);
  pending_.erase(m->name);
  pending.store_ = nullptr;
  matrices_[m->name] = m;
  resident_bytes_ += m->shape.resident_bytes();
  UpdateGaugesLocked();
  return m;
}

absl::StatusOr<std::shared_ptr<const Matrix>> MatrixStore::Get(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = matrices_.find(name);
  if (it == matrices_.end()) {
    return absl::NotFoundError(absl::StrCat("matrix \"", name, "\" not found"));
  }
  return it->second;
}

std::vector<std::shared_ptr<const Matrix>> MatrixStore::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<const Matrix>> out;
  out.reserve(matrices_.size());
  for (const auto& [name, m] : matrices_) out.push_back(m);
  return out;
}

absl::Status MatrixStore::Delete(const std::string& name) {
  std::shared_ptr<const Matrix> victim;  // freed outside the lock
  if (persistence_ != nullptr) {
    // The file goes first, outside the lock (lookups of every matrix go on
    // meanwhile, this one's included); the matrix stays listed, so its name
    // stays taken, until the file is gone.
    {
      absl::MutexLock lock(&mu_);
      if (matrices_.count(name) == 0) {
        return absl::NotFoundError(absl::StrCat("matrix \"", name, "\" not found"));
      }
      if (!deleting_.insert(name).second) {
        return absl::AbortedError(
            absl::StrCat("matrix \"", name, "\" is being deleted by another call"));
      }
    }
    const absl::Status removed = persistence_->RemoveMatrix(name);
    absl::MutexLock lock(&mu_);
    deleting_.erase(name);
    if (!removed.ok()) return removed;  // still served, still on disk
    victim = EraseLocked(name);
    return absl::OkStatus();
  }
  absl::MutexLock lock(&mu_);
  if (matrices_.count(name) == 0) {
    return absl::NotFoundError(absl::StrCat("matrix \"", name, "\" not found"));
  }
  victim = EraseLocked(name);
  return absl::OkStatus();
}

std::shared_ptr<const Matrix> MatrixStore::EraseLocked(const std::string& name) {
  auto it = matrices_.find(name);
  std::shared_ptr<const Matrix> victim = std::move(it->second);
  matrices_.erase(it);
  resident_bytes_ -= victim->shape.resident_bytes();
  UpdateGaugesLocked();
  return victim;
}

void MatrixStore::ReleaseName(const std::string& name) {
  absl::MutexLock lock(&mu_);
  pending_.erase(name);
}

void MatrixStore::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetResident(static_cast<int64_t>(matrices_.size()), resident_bytes_);
}

}  // namespace plume::core
