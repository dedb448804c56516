#include "server/grpc/attention_service_impl.h"

#include <memory>

#include "server/grpc/convert.h"
#include "server/grpc/reactors.h"

namespace plume::server {
namespace {

using KvUpload = core::AttentionService::Upload;

// One UploadKV message: the header starts the upload; k and v chunks feed it.
absl::Status ConsumeUpload(core::AttentionService* core, const v1::UploadKVRequest& req,
                           std::unique_ptr<KvUpload>* upload) {
  if (req.payload_case() == v1::UploadKVRequest::kHeader) {
    if (*upload != nullptr) return absl::InvalidArgumentError("UploadKV sent a second header");
    auto u = core->BeginUpload(ToCore(req.header()));
    if (!u.ok()) return u.status();
    *upload = std::move(*u);
    return absl::OkStatus();
  }
  if (req.payload_case() == v1::UploadKVRequest::PAYLOAD_NOT_SET) {
    return absl::InvalidArgumentError("UploadKV message has no payload");
  }
  if (*upload == nullptr) return absl::InvalidArgumentError("UploadKV sent K/V data before its header");
  return req.payload_case() == v1::UploadKVRequest::kK ? (*upload)->AddK(req.k()) : (*upload)->AddV(req.v());
}

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(core::AttentionService* core, core::Metrics* metrics,
                                           core::WorkQueue* queue, const Options& options)
    : core_(core), metrics_(metrics), queue_(queue), options_(options) {}

grpc::ServerReadReactor<v1::UploadKVRequest>* AttentionServiceImpl::UploadKV(
    grpc::CallbackServerContext* ctx, v1::UploadKVResponse* resp) {
  return new UploadReactor<v1::UploadKVRequest, v1::UploadKVResponse, KvUpload>(
      ctx, options_.gate, queue_, metrics_, core::Method::kUploadKV, resp,
      [this](const v1::UploadKVRequest& req, std::unique_ptr<KvUpload>* upload) {
        return ConsumeUpload(core_, req, upload);
      },
      [](KvUpload& upload, v1::UploadKVResponse* r) {
        auto info = upload.Finish();
        if (!info.ok()) return info.status();
        ToWire(*info, r->mutable_cache());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::AppendKV(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* in,
                                                         grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::AppendKVRequest, v1::AppendKVResponse>;
  constexpr core::Method kMethod = core::Method::kAppendKV;
  return ServeUnary<v1::AppendKVRequest, v1::AppendKVResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryOnQueue(call, queue_, metrics_, kMethod, [this, call] {
          auto info = core_->AppendKV(ToCore(call->req));
          if (!info.ok()) return info.status();
          ToWire(*info, call->resp.mutable_cache());
          return CheckResponseSize(&call->resp, core_->limits(), "AppendKV response");
        });
      });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::GetKV(grpc::CallbackServerContext* ctx,
                                                      const grpc::ByteBuffer* in,
                                                      grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::GetKVRequest, v1::GetKVResponse>;
  constexpr core::Method kMethod = core::Method::kGetKV;
  return ServeUnary<v1::GetKVRequest, v1::GetKVResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryInline(call, metrics_, kMethod, [this, call] {
          auto info = core_->GetKV(call->req.name());
          if (!info.ok()) return info.status();
          ToWire(*info, call->resp.mutable_cache());
          return CheckResponseSize(&call->resp, core_->limits(), "GetKV response");
        });
      });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::ListKV(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::ListKVRequest, v1::ListKVResponse>;
  constexpr core::Method kMethod = core::Method::kListKV;
  return ServeUnary<v1::ListKVRequest, v1::ListKVResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryInline(call, metrics_, kMethod, [this, call] {
          for (const core::KvInfo& info : core_->ListKV()) ToWire(info, call->resp.add_caches());
          return CheckResponseSize(&call->resp, core_->limits(), "ListKV response");
        });
      });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::DeleteKV(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* in,
                                                         grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::DeleteKVRequest, v1::DeleteKVResponse>;
  constexpr core::Method kMethod = core::Method::kDeleteKV;
  // On the work queue, ahead of the batches waiting there: a durable store's
  // unlink and fsync never hold a gRPC thread, and a delete does not wait
  // behind a backlog of GEMVs.
  return ServeUnary<v1::DeleteKVRequest, v1::DeleteKVResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryOnQueue(call, queue_, metrics_, kMethod,
                               [this, call] { return core_->DeleteKV(call->req.name()); },
                               core::WorkQueue::Priority::kFirst);
      });
}

grpc::ServerUnaryReactor* AttentionServiceImpl::Attention(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* in,
                                                          grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::AttentionRequest, v1::AttentionResponse>;
  constexpr core::Method kMethod = core::Method::kAttention;
  return ServeUnary<v1::AttentionRequest, v1::AttentionResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryBatched(call, metrics_, kMethod,
                               [this, call](core::RequestLife life, DoneFn done) {
                                 SubmitAttention(call->req, &call->resp, std::move(life),
                                                 std::move(done));
                               });
      });
}

grpc::ServerBidiReactor<v1::AttentionRequest, v1::AttentionResponse>*
AttentionServiceImpl::AttentionStream(grpc::CallbackServerContext* ctx) {
  return new ItemStreamReactor<v1::AttentionRequest, v1::AttentionResponse>(
      ctx, options_.gate, metrics_, core::Method::kAttentionStream, options_.max_stream_in_flight,
      [this](const v1::AttentionRequest& req, v1::AttentionResponse* resp, core::RequestLife life,
             DoneFn done) { SubmitAttention(req, resp, std::move(life), std::move(done)); });
}

void AttentionServiceImpl::SubmitAttention(const v1::AttentionRequest& req,
                                           v1::AttentionResponse* resp, core::RequestLife life,
                                           DoneFn done) {
  resp->set_request_id(req.request_id());
  OutputTensorSink out(resp->mutable_output());
  core_->AttentionAsync(options_.batcher, ToCore(req), &out, std::move(life),
                        [resp, done = std::move(done)](const absl::Status& s, int64_t seq) {
                          if (s.ok()) resp->set_seq(seq);
                          done(s);
                        });
}

}  // namespace plume::server
