#include "server/core/attention_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/core/metrics.h"

namespace plume::core {

AttentionService::AttentionService(Backend* backend, KvStore* store, const Limits& limits)
    : backend_(backend), store_(store), limits_(limits) {}

AttentionService::Upload::Upload(AttentionService* service, KvUploadPlan plan,
                                 KvStore::PendingUpload pending)
    : service_(service), plan_(plan), pending_(std::move(pending)) {}

absl::StatusOr<std::unique_ptr<AttentionService::Upload>> AttentionService::BeginUpload(
    const KvHeader& header) {
  auto plan = ValidateKvHeader(header, limits_);
  if (!plan.ok()) return plan.status();
  auto pending =
      store_->BeginUpload(std::string(header.name), plan->shape.resident_bytes(plan->seq));
  if (!pending.ok()) return pending.status();
  auto upload = std::unique_ptr<Upload>(new Upload(this, *plan, std::move(*pending)));
  try {
    upload->k_.reserve(static_cast<size_t>(plan->side_bytes));
    upload->v_.reserve(static_cast<size_t>(plan->side_bytes));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate 2 x ", plan->side_bytes, " bytes to stage the upload"));
  }
  return upload;
}

absl::Status AttentionService::Upload::Add(std::string* side, std::string_view what,
                                           std::string_view chunk) {
  if (static_cast<int64_t>(side->size() + chunk.size()) > plan_.side_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload of kv cache \"", pending_.name(), "\" sent more ", std::string(what), " data than its header declares: ",
        side->size() + chunk.size(), " bytes, expected ", plan_.side_bytes));
  }
  side->append(chunk);
  return absl::OkStatus();
}

absl::StatusOr<KvInfo> AttentionService::Upload::Finish() {
  for (const auto& [side, what] : {std::pair{&k_, "k"}, std::pair{&v_, "v"}}) {
    if (static_cast<int64_t>(side->size()) != plan_.side_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("upload of kv cache \"", pending_.name(),
                                                     "\" ended after ", side->size(), " bytes of ", what,
                                                     "; expected ", plan_.side_bytes));
    }
  }
  auto data = service_->backend_->CreateKv(plan_.shape);
  if (!data.ok()) return data.status();
  KvAppendArgs args{k_.data(), v_.data(), plan_.source_dtype, plan_.seq};
  if (absl::Status s = service_->backend_->AppendKv(**data, args); !s.ok()) return s;
  std::string().swap(k_);  // free the staging copies before publishing
  std::string().swap(v_);
  KvStore* store = service_->store_;
  const int64_t created_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  int64_t file_bytes = 0;
  if (store->disk() != nullptr) {  // acknowledged only once it is on disk
    auto size = store->SaveFile(service_->backend_, pending_.name(), plan_.shape, plan_.source_dtype,
                                created_ms, **data);
    if (!size.ok()) return size.status();
    file_bytes = *size;
  }
  auto c = store->Commit(std::move(pending_), plan_.shape, plan_.source_dtype, std::move(*data),
                         created_ms, file_bytes);
  return service_->Info(*c);
}

KvInfo AttentionService::Info(const KvCache& c) const {
  KvInfo info;
  int64_t seq;
  {
    absl::ReaderMutexLock lock(&c.mu);
    seq = c.data->seq();
  }
  const KvLayout l = c.shape.layout();
  info.name = c.name;
  info.kv_heads = c.shape.kv_heads;
  info.seq = seq;
  info.head_dim = c.shape.head_dim;
  info.format = c.shape.format;
  info.scale_mode = c.shape.scale_mode;
  info.source_dtype = c.source_dtype;
  info.non_saturating = !c.shape.saturate;
  info.page_tokens = kKvPageTokens;
  info.row_stride_bytes = l.row_bytes();
  info.page_bytes = l.page_bytes();
  info.pages = KvLayout::pages_for(seq);
  info.resident_bytes = c.shape.resident_bytes(seq);
  info.created_unix_ms = c.created_unix_ms;
  info.backend = std::string(backend_->name());
  return info;
}

absl::StatusOr<KvInfo> AttentionService::AppendKV(const AppendKvCall& call) {
  if (absl::Status s = ValidateName(call.name, limits_, "kv cache"); !s.ok()) return s;
  auto c = store_->Get(call.name);  // holds the cache alive for this call
  if (!c.ok()) return c.status();
  int64_t seq;
  {
    absl::ReaderMutexLock lock(&(*c)->mu);
    seq = (*c)->data->seq();
  }
  // seq may grow before the append runs; the limit is checked against this
  // value, and appends are serialized by the cache's lock.
  auto plan = ValidateKvAppend(call, (*c)->shape, seq, limits_);
  if (!plan.ok()) return plan.status();
  KvAppendArgs args{call.k.data.data(), call.v.data.data(), plan->src_dtype, plan->tokens};
  if (absl::Status s = store_->Append(**c, backend_, args); !s.ok()) return s;
  return Info(**c);
}

absl::StatusOr<KvInfo> AttentionService::GetKV(std::string_view name) const {
  if (absl::Status s = ValidateName(name, limits_, "kv cache"); !s.ok()) return s;
  auto c = store_->Get(name);
  if (!c.ok()) return c.status();
  return Info(**c);
}

std::vector<KvInfo> AttentionService::ListKV() const {
  std::vector<KvInfo> out;
  for (const auto& c : store_->List()) out.push_back(Info(*c));
  return out;
}

absl::Status AttentionService::DeleteKV(std::string_view name) {
  if (absl::Status s = ValidateName(name, limits_, "kv cache"); !s.ok()) return s;
  return store_->Delete(std::string(name));
}

void AttentionService::AttentionAsync(Batcher* batcher, const AttentionCall& call,
                                      ResultSink* out, RequestLife life, AttentionDone done) {
  if (absl::Status s = ValidateName(call.cache, limits_, "kv cache"); !s.ok()) return done(s, 0);
  auto c = store_->Get(call.cache);  // held alive by the request until it is done
  if (!c.ok()) return done(c.status(), 0);
  std::shared_ptr<KvCache> cache = std::move(*c);
  absl::StatusOr<AttentionPlan> plan;
  {
    absl::ReaderMutexLock lock(&cache->mu);
    if (cache->deleted) {
      return done(
          absl::NotFoundError(absl::StrCat("kv cache \"", cache->name, "\" not found (deleted)")), 0);
    }
    // seq only grows, so what holds now holds when the batch runs.
    plan = ValidateAttention(call, cache->shape, cache->data->seq(), limits_);
  }
  if (!plan.ok()) return done(plan.status(), 0);
  const int64_t head_dim = cache->shape.head_dim;
  const int64_t unit_elems = plan->heads * plan->q_len * head_dim;  // one batch element
  const int64_t dims[4] = {plan->batch, plan->heads, plan->q_len, head_dim};
  const int64_t out_bytes = plan->batch * unit_elems * DTypeSize(plan->out_dtype);
  char* o = out->Allocate(plan->out_dtype, dims, static_cast<size_t>(out_bytes));

  BatchRequest r;
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &plan->scale, sizeof scale_bits);
  r.key = {static_cast<uint64_t>(plan->heads), static_cast<uint64_t>(plan->q_len), plan->causal,
           scale_bits, static_cast<uint64_t>(plan->q_dtype), static_cast<uint64_t>(plan->out_dtype)};
  r.units = plan->batch;
  r.in = call.query.data.data();
  r.out = o;
  r.in_unit_bytes = static_cast<size_t>(unit_elems * DTypeSize(plan->q_dtype));
  r.out_unit_bytes = static_cast<size_t>(unit_elems * DTypeSize(plan->out_dtype));
  r.max_batch_units = std::max<int64_t>(1, limits_.max_attention_rows / (plan->heads * plan->q_len));
  // Attention runs on the worker (the backends' Attention returns when done).
  r.run = [this, cache, p = *plan](const void* q, int64_t units, void* y, BatchFinishedFn finished) {
    int64_t seq_out = 0;
    const absl::Status s = RunBatch(*cache, p, q, units, y, &seq_out);
    finished(s, seq_out);
  };
  r.metrics = cache->metrics.get();
  r.life = std::move(life);
  r.done = std::move(done);
  batcher->Submit(cache, "kv cache", cache->name, batcher->defaults(), std::move(r));
}

absl::Status AttentionService::RunBatch(const KvCache& cache, const AttentionPlan& p, const void* q,
                                        int64_t units, void* y, int64_t* seq_out) {
  absl::ReaderMutexLock lock(&cache.mu);  // no append runs meanwhile
  if (cache.deleted) {
    return absl::NotFoundError(absl::StrCat("kv cache \"", cache.name, "\" not found (deleted)"));
  }
  const int64_t seq = cache.data->seq();
  AttentionArgs args;
  args.q = q;
  args.q_dtype = p.q_dtype;
  args.batch = units;
  args.heads = p.heads;
  args.q_len = p.q_len;
  args.scale = p.scale;
  args.causal = p.causal;
  args.out = y;
  args.out_dtype = p.out_dtype;
  *seq_out = seq;
  return RunAttention(cache, seq, args);
}

absl::Status AttentionService::RunAttention(const KvCache& cache, int64_t seq,
                                            const AttentionArgs& args) {
  const auto k0 = std::chrono::steady_clock::now();
  if (absl::Status s = backend_->Attention(*cache.data, args); !s.ok()) return s;
  if (cache.metrics != nullptr) {
    cache.metrics->RecordKernel(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - k0).count());
    cache.metrics->RecordBatch(args.batch);
    // K and V pages of every kv head are read once per query group (GQA) and batch element.
    cache.metrics->RecordWork(args.batch * args.heads * args.q_len, cache.shape.resident_bytes(seq));
  }
  return absl::OkStatus();
}

}  // namespace plume::core
