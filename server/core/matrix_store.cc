#include "server/core/matrix_store.h"

#include <chrono>

#include "server/core/durable_store.h"
#include "server/core/metrics.h"

namespace plume::core {

namespace {

Registry<const Matrix>::GaugeFn ResidentGauges(Metrics* metrics) {
  if (metrics == nullptr) return {};
  return [metrics](int64_t matrices, int64_t bytes) { metrics->SetResident(matrices, bytes); };
}

int64_t ResidentBytes(const Matrix& m) { return m.shape.resident_bytes(); }

}  // namespace

MatrixStore::MatrixStore(int64_t budget_bytes, Metrics* metrics)
    : budget_(std::make_shared<Budget>(budget_bytes)),
      metrics_(metrics),
      registry_(budget_, {"matrix", "delete it first", ""}, ResidentGauges(metrics)) {
  if (metrics != nullptr) metrics->SetMemoryBudget(budget_bytes);
}

MatrixStore::~MatrixStore() = default;

absl::StatusOr<MatrixStore::PendingUpload> MatrixStore::BeginUpload(const std::string& name,
                                                                    int64_t bytes) {
  return registry_.Reserve(name, bytes);
}

std::shared_ptr<const Matrix> MatrixStore::Commit(PendingUpload pending, const MatrixShape& shape,
                                                  DType source_dtype,
                                                  std::unique_ptr<BackendMatrix> data,
                                                  int64_t created_unix_ms,
                                                  const BatchingOptions& batching,
                                                  std::string content_hash) {
  auto m = std::make_shared<Matrix>();
  m->name = pending.name();
  m->shape = shape;
  m->source_dtype = source_dtype;
  m->created_unix_ms = created_unix_ms != 0
                           ? created_unix_ms
                           : std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  m->data = std::move(data);
  m->reservation = pending.TakeReservation();
  m->batching = batching;
  m->content_hash = std::move(content_hash);
  if (metrics_ != nullptr) m->metrics = metrics_->Target(TargetKind::kMatrix, m->name);
  const int64_t resident = m->shape.resident_bytes();
  return registry_.Commit(std::move(pending), std::move(m), resident);
}

absl::StatusOr<std::shared_ptr<const Matrix>> MatrixStore::Get(std::string_view name) const {
  return registry_.Get(name);
}

std::vector<std::shared_ptr<const Matrix>> MatrixStore::List() const { return registry_.List(); }

absl::Status MatrixStore::Delete(const std::string& name) {
  // Off the registry under its lock; the name stays reserved while the file
  // goes (durable store only).
  auto removal = registry_.Remove(name, /*hold_name=*/persistence_ != nullptr, ResidentBytes);
  if (!removal.ok()) return removal.status();
  if (persistence_ != nullptr) {
    // No lock held: Gets and uploads of other names go on meanwhile.
    if (absl::Status s = persistence_->RemoveMatrix(name); !s.ok()) {
      removal->Restore(ResidentBytes(*removal->entry()));  // still on disk: still served
      return s;
    }
  }
  removal->Finish();
  return absl::OkStatus();
}

}  // namespace plume::core
