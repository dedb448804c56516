#include "server/grpc/diagnostics_service_impl.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "server/core/validation.h"

namespace plume::server {

DiagnosticsServiceImpl::DiagnosticsServiceImpl(core::Metrics* metrics, core::WorkQueue* queue,
                                               const Options& options)
    : metrics_(metrics), queue_(queue), options_(options) {}

absl::Status DiagnosticsServiceImpl::RunEcho(const v1::EchoRequest& req,
                                             v1::EchoResponse* resp) const {
  const int64_t bytes = static_cast<int64_t>(req.input().data().size());
  if (bytes > options_.max_echo_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("Echo payload of ", bytes,
                                                     " bytes is over the server's limit of ",
                                                     options_.max_echo_bytes, " bytes (--max_echo_bytes)"));
  }
  // The echo is as large as the request; checked before it is copied.
  core::Limits limits;
  limits.max_response_bytes = options_.max_response_bytes;
  if (absl::Status s = core::ValidateResponseBytes(bytes, limits, "Echo response"); !s.ok()) {
    return s;
  }
  *resp->mutable_output() = req.input();
  resp->set_request_id(req.request_id());
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* DiagnosticsServiceImpl::Echo(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::EchoRequest, v1::EchoResponse>;
  return ServeUnary<v1::EchoRequest, v1::EchoResponse>(
      ctx, options_.gate, in, out, metrics_, core::Method::kEcho, [this](Call* call) {
        return RunUnaryOnQueue(call, queue_, metrics_, core::Method::kEcho,
                               [this, call] { return RunEcho(call->req, &call->resp); });
      });
}

grpc::ServerBidiReactor<v1::EchoRequest, v1::EchoResponse>* DiagnosticsServiceImpl::EchoStream(
    grpc::CallbackServerContext* ctx) {
  // Each item runs on the work queue, as a GEMV batch does (the batcher is
  // left out: an echo has nothing to batch).
  return new ItemStreamReactor<v1::EchoRequest, v1::EchoResponse>(
      ctx, options_.gate, metrics_, core::Method::kEchoStream, options_.max_stream_in_flight,
      [this](const v1::EchoRequest& req, v1::EchoResponse* resp, core::RequestLife /*life*/,
             DoneFn done) {
        auto shared = std::make_shared<DoneFn>(std::move(done));
        if (!queue_->Submit([this, &req, resp, shared] { (*shared)(RunEcho(req, resp)); })) {
          (*shared)(absl::ResourceExhaustedError(
              "the server's work queue is full (--max_queued_requests)"));
        }
      });
}

}  // namespace plume::server
