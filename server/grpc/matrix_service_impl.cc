#include "server/grpc/matrix_service_impl.h"

#include <memory>

#include "server/grpc/reactors.h"

namespace plume::server {
namespace {

using MatrixUpload = core::MatrixService::Upload;

// One UploadMatrix message: the header starts the upload; data and scale
// chunks feed it.
absl::Status ConsumeUpload(core::MatrixService* core, const v1::UploadMatrixRequest& req,
                           std::unique_ptr<MatrixUpload>* upload) {
  switch (req.payload_case()) {
    case v1::UploadMatrixRequest::kHeader: {
      if (*upload != nullptr) return absl::InvalidArgumentError("UploadMatrix sent a second header");
      auto u = core->BeginUpload(req.header());
      if (!u.ok()) return u.status();
      *upload = std::move(*u);
      return absl::OkStatus();
    }
    case v1::UploadMatrixRequest::kData:
      if (*upload == nullptr) return absl::InvalidArgumentError("UploadMatrix sent data before its header");
      return (*upload)->AddData(req.data());
    case v1::UploadMatrixRequest::kScales:
      if (*upload == nullptr) return absl::InvalidArgumentError("UploadMatrix sent scales before its header");
      return (*upload)->AddScales(req.scales());
    default:
      return absl::InvalidArgumentError("UploadMatrix message has no payload");
  }
}

}  // namespace

MatrixServiceImpl::MatrixServiceImpl(core::MatrixService* core, core::Metrics* metrics,
                                     core::WorkQueue* queue, const Options& options)
    : core_(core), metrics_(metrics), queue_(queue), options_(options) {}

grpc::ServerReadReactor<v1::UploadMatrixRequest>* MatrixServiceImpl::UploadMatrix(
    grpc::CallbackServerContext*, v1::UploadMatrixResponse* resp) {
  return new UploadReactor<v1::UploadMatrixRequest, v1::UploadMatrixResponse, MatrixUpload>(
      queue_, metrics_, core::Method::kUploadMatrix, resp,
      [this](const v1::UploadMatrixRequest& req, std::unique_ptr<MatrixUpload>* upload) {
        return ConsumeUpload(core_, req, upload);
      },
      [](MatrixUpload& upload, v1::UploadMatrixResponse* r) {
        auto info = upload.Finish();
        if (!info.ok()) return info.status();
        *r->mutable_matrix() = std::move(*info);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* MatrixServiceImpl::GetMatrix(grpc::CallbackServerContext* ctx,
                                                       const v1::GetMatrixRequest* req,
                                                       v1::GetMatrixResponse* resp) {
  const auto t0 = Clock::now();
  auto info = core_->GetMatrix(req->name());
  if (info.ok()) *resp->mutable_matrix() = std::move(*info);
  auto* reactor = ctx->DefaultReactor();
  FinishUnary(reactor, metrics_, core::Method::kGetMatrix, t0, info.status());
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::ListMatrices(grpc::CallbackServerContext* ctx,
                                                          const v1::ListMatricesRequest*,
                                                          v1::ListMatricesResponse* resp) {
  const auto t0 = Clock::now();
  core_->ListMatrices(resp);
  auto* reactor = ctx->DefaultReactor();
  FinishUnary(reactor, metrics_, core::Method::kListMatrices, t0, absl::OkStatus());
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::DeleteMatrix(grpc::CallbackServerContext* ctx,
                                                          const v1::DeleteMatrixRequest* req,
                                                          v1::DeleteMatrixResponse*) {
  const auto t0 = Clock::now();
  auto* reactor = ctx->DefaultReactor();
  FinishUnary(reactor, metrics_, core::Method::kDeleteMatrix, t0, core_->DeleteMatrix(req->name()));
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::Gemv(grpc::CallbackServerContext* ctx,
                                                  const v1::GemvRequest* req,
                                                  v1::GemvResponse* resp) {
  return RunUnaryOnQueue(ctx, queue_, metrics_, core::Method::kGemv,
                         [this, req, resp] { return core_->Gemv(*req, resp); });
}

grpc::ServerBidiReactor<v1::GemvRequest, v1::GemvResponse>* MatrixServiceImpl::GemvStream(
    grpc::CallbackServerContext* ctx) {
  return new ItemStreamReactor<v1::GemvRequest, v1::GemvResponse>(
      ctx, queue_, metrics_, core::Method::kGemvStream, options_.max_stream_in_flight,
      [this](const v1::GemvRequest& req, v1::GemvResponse* resp) { return core_->Gemv(req, resp); });
}

}  // namespace plume::server
