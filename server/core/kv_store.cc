#include "server/core/kv_store.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/core/durable_store.h"
#include "server/core/metrics.h"

namespace plume::core {

namespace {

Registry<KvCache>::GaugeFn KvGauges(Metrics* metrics) {
  if (metrics == nullptr) return {};
  return [metrics](int64_t caches, int64_t bytes) { metrics->SetKv(caches, bytes); };
}

}  // namespace

KvStore::KvStore(std::shared_ptr<Budget> budget, Metrics* metrics)
    : budget_(std::move(budget)),
      metrics_(metrics),
      registry_(budget_, {"kv cache", "delete it first or append to it", "more"}, KvGauges(metrics)) {}

KvStore::~KvStore() = default;

absl::StatusOr<KvStore::PendingUpload> KvStore::BeginUpload(const std::string& name, int64_t bytes) {
  return registry_.Reserve(name, bytes);
}

std::shared_ptr<KvCache> KvStore::Commit(PendingUpload pending, const KvShape& shape,
                                         DType source_dtype, std::unique_ptr<BackendKvCache> data,
                                         int64_t created_unix_ms, int64_t file_bytes) {
  auto c = std::make_shared<KvCache>();
  c->name = pending.name();
  c->shape = shape;
  c->source_dtype = source_dtype;
  c->created_unix_ms = created_unix_ms != 0
                           ? created_unix_ms
                           : std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  if (metrics_ != nullptr) c->metrics = metrics_->Target(TargetKind::kKvCache, c->name);
  int64_t bytes;
  {
    absl::MutexLock cl(&c->mu);
    c->file_bytes = file_bytes;
    bytes = shape.resident_bytes(data->seq());
    c->data = std::move(data);
    c->reservations.push_back(pending.TakeReservation());
  }
  return registry_.Commit(std::move(pending), std::move(c), bytes);
}

absl::StatusOr<std::shared_ptr<KvCache>> KvStore::Get(std::string_view name) const {
  return registry_.Get(name);
}

std::vector<std::shared_ptr<KvCache>> KvStore::List() const { return registry_.List(); }

absl::Status KvStore::Delete(const std::string& name) {
  // Off the registry under its lock; the name stays reserved while the file
  // goes (durable store only). Its bytes leave the gauges once it is marked
  // deleted below, when no append can add to them any more.
  auto removal = registry_.Remove(name, /*hold_name=*/disk_ != nullptr, nullptr);
  if (!removal.ok()) return removal.status();
  KvCache& victim = *removal->entry();
  int64_t bytes = 0;
  bool served;  // false: a failed append has stopped serving it meanwhile
  {
    // Waits for an append in progress, so its bytes are counted (and here
    // taken off); a later one finds the cache deleted.
    absl::MutexLock cl(&victim.mu);
    served = !victim.deleted;
    if (served) bytes = victim.shape.resident_bytes(victim.data->seq());
    victim.deleted = true;
  }
  if (disk_ != nullptr) {
    // No lock held: lookups, appends and attention on other caches go on.
    if (absl::Status s = disk_->RemoveKv(name); !s.ok()) {
      if (served) {
        {
          absl::MutexLock cl(&victim.mu);
          victim.deleted = false;  // still on disk: still served
        }
        removal->Restore(0);
      }
      return s;
    }
  }
  removal->Finish();
  registry_.AddResident(-bytes);
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
    if (!budget_->TryReserve(extra)) return registry_.BudgetExceeded(cache.name, extra);
    r = Reservation(budget_, extra);
  }
  if (absl::Status s = backend->AppendKv(*cache.data, args); !s.ok()) return s;
  if (disk_ != nullptr) {  // acknowledged only once it is on disk
    if (absl::Status s = PersistAppend(cache, backend, seq); !s.ok()) return s;
  }
  cache.reservations.push_back(std::move(r));
  registry_.AddResident(extra);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KvStore::SaveFile(Backend* backend, const std::string& name,
                                          const KvShape& shape, DType source_dtype,
                                          int64_t created_unix_ms, const BackendKvCache& data) {
  const KvLayout l = shape.layout();
  const int64_t pages = KvLayout::pages_for(data.seq());
  std::vector<uint8_t> bytes;
  std::vector<float> k_scales, v_scales;
  try {
    bytes.resize(static_cast<size_t>(pages * l.page_bytes()));
    k_scales.resize(static_cast<size_t>(l.global_scales()));
    v_scales.resize(k_scales.size());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate host memory to store kv cache \"", name, "\""));
  }
  if (absl::Status s = backend->ReadKv(data, 0, pages, bytes.data(), k_scales.data(), v_scales.data());
      !s.ok()) {
    return s;
  }
  const std::string header =
      EncodeKvHeader({name, shape, source_dtype, created_unix_ms}, k_scales.data(), v_scales.data());
  const std::string record = EncodeKvRecordHeader(shape, data.seq(), 0, pages, bytes.data());
  if (absl::Status s = disk_->SaveKv(
          name, {header, record, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size())});
      !s.ok()) {
    return s;
  }
  return static_cast<int64_t>(header.size() + record.size() + bytes.size());
}

absl::Status KvStore::PersistAppend(KvCache& cache, Backend* backend, int64_t seq_before) {
  const KvLayout l = cache.shape.layout();
  const int64_t seq = cache.data->seq();
  const int64_t first = seq_before / kKvPageTokens;
  const int64_t count = KvLayout::pages_for(seq) - first;
  const int64_t record_bytes = kKvRecordHeaderBytes + count * l.page_bytes();
  // What a compacted file would hold: the header (at most this) and one record of every page.
  const int64_t compacted = kStoreHeaderBytes + 256 + 8 * l.global_scales() + kKvRecordHeaderBytes +
                            KvLayout::pages_for(seq) * l.page_bytes();
  if (cache.file_bytes + record_bytes > 2 * compacted) {
    auto size = SaveFile(backend, cache.name, cache.shape, cache.source_dtype, cache.created_unix_ms,
                         *cache.data);
    if (!size.ok()) {
      RollBack(cache, backend, seq_before, /*file_ok=*/true);  // the rename never happened or did whole
      return size.status();
    }
    cache.file_bytes = *size;
    return absl::OkStatus();
  }
  std::vector<uint8_t> pages;
  try {
    pages.resize(static_cast<size_t>(count * l.page_bytes()));
  } catch (const std::bad_alloc&) {
    RollBack(cache, backend, seq_before, true);
    return absl::ResourceExhaustedError("cannot allocate host memory to store the appended pages");
  }
  absl::Status s = backend->ReadKv(*cache.data, first, count, pages.data(), nullptr, nullptr);
  bool torn = false;
  if (s.ok()) {
    const std::string header = EncodeKvRecordHeader(cache.shape, seq, first, count, pages.data());
    s = disk_->AppendKv(cache.name, cache.file_bytes,
                        {header, std::string_view(reinterpret_cast<const char*>(pages.data()), pages.size())},
                        &torn);
  }
  if (!s.ok()) {
    RollBack(cache, backend, seq_before, !torn);
    return s;
  }
  cache.file_bytes += record_bytes;
  return absl::OkStatus();
}

void KvStore::RollBack(KvCache& cache, Backend* backend, int64_t seq_before, bool file_ok) {
  if (file_ok) {
    auto kv = disk_->ReadKv(cache.name);
    if (kv.ok() && kv->torn_tail.empty()) {
      auto data = backend->KvFromPacked(cache.shape, kv->seq, kv->pages.data(), kv->k_scales.data(),
                                        kv->v_scales.data());
      if (data.ok()) {
        cache.data = std::move(*data);
        cache.file_bytes = kv->valid_bytes;
        return;
      }
    }
  }
  // The cache in memory is ahead of its file and cannot be put back: stop
  // serving it; a restart loads what the file holds.
  cache.deleted = true;
  const int64_t bytes = cache.shape.resident_bytes(seq_before);  // what the gauges count
  registry_.RemoveIf(cache.name, &cache);
  registry_.AddResident(-bytes);
}

}  // namespace plume::core
