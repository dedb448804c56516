// gRPC adapter of core::AttentionService, on the callback (reactor) API.
// Lookups run inline; appends, attention and the end of an upload run on the
// work queue, never on a gRPC callback thread.
#pragma once

#include "plume/v1/attention.grpc.pb.h"
#include "server/core/attention_service.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"
#include "server/grpc/reactors.h"

namespace plume::server {

// The callback service with its unary methods registered raw.
using AttentionServiceBase = v1::AttentionService::WithRawCallbackMethod_AppendKV<
    v1::AttentionService::WithRawCallbackMethod_GetKV<
        v1::AttentionService::WithRawCallbackMethod_ListKV<
            v1::AttentionService::WithRawCallbackMethod_DeleteKV<
                v1::AttentionService::WithRawCallbackMethod_Attention<
                    v1::AttentionService::CallbackService>>>>>;

class AttentionServiceImpl final : public AttentionServiceBase {
 public:
  struct Options {
    // Items of one AttentionStream being computed at once.
    int max_stream_in_flight = 64;
    // Gemv and attention requests go through it (required; not owned).
    core::Batcher* batcher = nullptr;
    // Admission (bearer token, drain), shared with the MatrixService. Not
    // owned; required.
    CallGate* gate = nullptr;
  };

  AttentionServiceImpl(core::AttentionService* core, core::Metrics* metrics, core::WorkQueue* queue,
                       const Options& options);

  grpc::ServerReadReactor<v1::UploadKVRequest>* UploadKV(grpc::CallbackServerContext* ctx,
                                                         v1::UploadKVResponse* resp) override;
  // Unary methods take their messages raw and parse them (UnaryCall in
  // reactors.h), so that a request that does not parse gets INVALID_ARGUMENT.
  grpc::ServerUnaryReactor* AppendKV(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                     grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* GetKV(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* ListKV(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                   grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* DeleteKV(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                     grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* Attention(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                      grpc::ByteBuffer* out) override;
  grpc::ServerBidiReactor<v1::AttentionRequest, v1::AttentionResponse>* AttentionStream(
      grpc::CallbackServerContext* ctx) override;

 private:
  // Queues one attention on the batcher; `req` and `resp` stay alive until
  // `done`.
  void SubmitAttention(const v1::AttentionRequest& req, v1::AttentionResponse* resp,
                       core::RequestLife life, DoneFn done);

  core::AttentionService* core_;
  core::Metrics* metrics_;
  core::WorkQueue* queue_;
  Options options_;
};

}  // namespace plume::server
