#include "server/core/kv_store.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/core/metrics.h"

namespace plume::core {

KvStore::PendingUpload::PendingUpload(KvStore* store, std::string name, Reservation r)
    : store_(store), name_(std::move(name)), reservation_(std::move(r)) {}

KvStore::PendingUpload::PendingUpload(PendingUpload&& o) noexcept
    : store_(o.store_), name_(std::move(o.name_)), reservation_(std::move(o.reservation_)) {
  o.store_ = nullptr;
}

KvStore::PendingUpload::~PendingUpload() {
  if (store_ != nullptr) store_->ReleaseName(name_);
}

KvStore::KvStore(std::shared_ptr<Budget> budget, Metrics* metrics)
    : budget_(std::move(budget)), metrics_(metrics) {
  if (metrics_ != nullptr) metrics_->SetKv(0, 0);
}

KvStore::~KvStore() = default;

absl::Status KvStore::BudgetExceeded(const std::string& name, int64_t bytes) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "memory budget exceeded: kv cache \"", name, "\" needs ", bytes, " more bytes, ",
      budget_->capacity() - budget_->used(), " of ", budget_->capacity(), " bytes free"));
}

absl::StatusOr<KvStore::PendingUpload> KvStore::BeginUpload(const std::string& name, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (caches_.count(name) != 0 || pending_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "kv cache \"", name, "\" already exists", pending_.count(name) ? " (upload in progress)" : "",
        "; delete it first or append to it"));
  }
  if (!budget_->TryReserve(bytes)) return BudgetExceeded(name, bytes);
  pending_.insert(name);
  return PendingUpload(this, name, Reservation(budget_, bytes));
}

std::shared_ptr<KvCache> KvStore::Commit(PendingUpload pending, const KvShape& shape,
                                         DType source_dtype, std::unique_ptr<BackendKvCache> data) {
  auto c = std::make_shared<KvCache>();
  c->name = pending.name_;
  c->shape = shape;
  c->source_dtype = source_dtype;
  c->created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  int64_t bytes;
  {
    absl::MutexLock cl(&c->mu);
    bytes = shape.resident_bytes(data->seq());
    c->data = std::move(data);
    c->reservations.push_back(std::move(pending.reservation_));
  }
  absl::MutexLock lock(&mu_);
  pending_.erase(c->name);
  pending.store_ = nullptr;
  caches_[c->name] = c;
  resident_bytes_ += bytes;
  if (metrics_ != nullptr) metrics_->SetKv(static_cast<int64_t>(caches_.size()), resident_bytes_);
  return c;
}

absl::StatusOr<std::shared_ptr<KvCache>> KvStore::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = caches_.find(name);
  if (it == caches_.end()) {
    return absl::NotFoundError(absl::StrCat("kv cache \"", name, "\" not found"));
  }
  return it->second;
}

std::vector<std::shared_ptr<KvCache>> KvStore::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<KvCache>> out;
  out.reserve(caches_.size());
  for (const auto& [name, c] : caches_) out.push_back(c);
  return out;
}

absl::Status KvStore::Delete(const std::string& name) {
  std::shared_ptr<KvCache> victim;  // freed outside the locks (or by the last request)
  {
    absl::MutexLock lock(&mu_);
    auto it = caches_.find(name);
    if (it == caches_.end()) {
      return absl::NotFoundError(absl::StrCat("kv cache \"", name, "\" not found"));
    }
    victim = std::move(it->second);
    caches_.erase(it);
  }
  int64_t bytes;
  {
    // Waits for an append in progress, so its bytes are counted (and here taken off).
    absl::MutexLock cl(&victim->mu);
    victim->deleted = true;
    bytes = victim->shape.resident_bytes(victim->data->seq());
  }
  AddBytes(-bytes);
  return absl::OkStatus();
}

absl::Status KvStore::Append(KvCache& cache, Backend* backend, const KvAppendArgs& args) {
  absl::MutexLock cl(&cache.mu);
  if (cache.deleted) {
    return absl::NotFoundError(absl::StrCat("kv cache \"", cache.name, "\" not found (deleted)"));
  }
  const int64_t seq = cache.data->seq();
  const int64_t extra = cache.shape.resident_bytes(seq + args.tokens) - cache.shape.resident_bytes(seq);
  Reservation r;
  if (extra > 0) {
    if (!budget_->TryReserve(extra)) return BudgetExceeded(cache.name, extra);
    r = Reservation(budget_, extra);
  }
  if (absl::Status s = backend->AppendKv(*cache.data, args); !s.ok()) return s;
  cache.reservations.push_back(std::move(r));
  AddBytes(extra);
  return absl::OkStatus();
}

void KvStore::ReleaseName(const std::string& name) {
  absl::MutexLock lock(&mu_);
  pending_.erase(name);
}

void KvStore::AddBytes(int64_t delta) {
  absl::MutexLock lock(&mu_);
  resident_bytes_ += delta;
  if (metrics_ != nullptr) metrics_->SetKv(static_cast<int64_t>(caches_.size()), resident_bytes_);
}

}  // namespace plume::core
