// The attention service's logic, independent of gRPC and protobuf: K/V
// cache uploads, appends, lookups and attention over the KvStore and a
// backend, on the plain structs of calls.h. server/grpc adapts it to the
// wire (AttentionService in proto/plume/v1/attention.proto).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/backend.h"
#include "server/core/batcher.h"
#include "server/core/calls.h"
#include "server/core/kv_store.h"
#include "server/core/limits.h"
#include "server/core/validation.h"

namespace plume::core {

class AttentionService {
 public:
  AttentionService(Backend* backend, KvStore* store, const Limits& limits);

  // One UploadKV call: a validated header, then K and V chunks, then Finish.
  // Dropping it before Finish abandons the upload and frees its name and budget.
  class Upload {
   public:
    absl::Status AddK(std::string_view chunk) { return Add(&k_, "k", chunk); }
    absl::Status AddV(std::string_view chunk) { return Add(&v_, "v", chunk); }
    absl::StatusOr<KvInfo> Finish();

   private:
    friend class AttentionService;
    Upload(AttentionService* service, KvUploadPlan plan, KvStore::PendingUpload pending);
    absl::Status Add(std::string* side, std::string_view what, std::string_view chunk);
    AttentionService* service_;
    KvUploadPlan plan_;
    KvStore::PendingUpload pending_;
    std::string k_, v_;
  };

  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const KvHeader& header);
  absl::StatusOr<KvInfo> AppendKV(const AppendKvCall& call);
  absl::StatusOr<KvInfo> GetKV(std::string_view name) const;
  // Every cache, sorted by name.
  std::vector<KvInfo> ListKV() const;
  absl::Status DeleteKV(std::string_view name);

  // Called once with an attention's status and, when it ran, the number of
  // cached tokens it attended over.
  using AttentionDone = std::function<void(const absl::Status&, int64_t seq)>;
  // One attention through `batcher`, on the cache's queue: requests with
  // equal heads, q_len, causal, scale and dtypes run as one backend call,
  // their queries concatenated along the batch dimension. `out` allocates
  // the output ([batch, heads, q_len, head_dim]); `done` is called once (see
  // MatrixService::GemvAsync, which has the same lifetimes).
  void AttentionAsync(Batcher* batcher, const AttentionCall& call, ResultSink* out,
                      RequestLife life, AttentionDone done);

  const Limits& limits() const { return limits_; }

 private:
  KvInfo Info(const KvCache& c) const;
  // A batch of `units` query blocks at q (results to y) over the cache as it
  // is now (its seq to *seq_out): NOT_FOUND once the cache was deleted.
  absl::Status RunBatch(const KvCache& cache, const AttentionPlan& p, const void* q, int64_t units,
                        void* y, int64_t* seq_out);
  // One backend attention call over `seq` tokens and its metrics; the
  // caller holds cache.mu as a reader.
  absl::Status RunAttention(const KvCache& cache, int64_t seq, const AttentionArgs& args)
      ABSL_SHARED_LOCKS_REQUIRED(cache.mu);

  Backend* backend_;
  KvStore* store_;
  Limits limits_;
};

}  // namespace plume::core
