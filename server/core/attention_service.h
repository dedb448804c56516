// The attention service's logic, independent of gRPC: K/V cache uploads,
// appends, lookups and attention over the KvStore and a backend. server/grpc
// adapts it to the wire (AttentionService in proto/plume/v1/attention.proto).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/v1/attention.pb.h"
#include "server/core/backend.h"
#include "server/core/batcher.h"
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
    absl::StatusOr<v1::KVInfo> Finish();

   private:
    friend class AttentionService;
    Upload(AttentionService* service, KvUploadPlan plan, KvStore::PendingUpload pending);
    absl::Status Add(std::string* side, std::string_view what, std::string_view chunk);
    AttentionService* service_;
    KvUploadPlan plan_;
    KvStore::PendingUpload pending_;
    std::string k_, v_;
  };

  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const v1::KVHeader& header);
  absl::StatusOr<v1::KVInfo> AppendKV(const v1::AppendKVRequest& req);
  absl::StatusOr<v1::KVInfo> GetKV(const std::string& name) const;
  void ListKV(v1::ListKVResponse* out) const;
  absl::Status DeleteKV(const std::string& name);

  // Runs one attention request; the result goes into `out` (request_id echoed).
  absl::Status Attention(const v1::AttentionRequest& req, v1::AttentionResponse* out);
  // The same through `batcher`, on the cache's queue: requests with equal
  // heads, q_len, causal, scale and dtypes run as one backend call, their
  // queries concatenated along the batch dimension. `done` is called once
  // (see MatrixService::GemvAsync); `req` and `out` stay alive until then.
  void AttentionAsync(Batcher* batcher, const v1::AttentionRequest& req,
                      v1::AttentionResponse* out, RequestLife life,
                      std::function<void(const absl::Status&)> done);

  const Limits& limits() const { return limits_; }

 private:
  v1::KVInfo Info(const KvCache& c) const;
  // One backend attention call over `seq` tokens and its metrics; the
  // caller holds cache.mu as a reader.
  absl::Status RunAttention(const KvCache& cache, int64_t seq, const AttentionArgs& args)
      ABSL_SHARED_LOCKS_REQUIRED(cache.mu);

  Backend* backend_;
  KvStore* store_;
  Limits limits_;
};

}  // namespace plume::core
