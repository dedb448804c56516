#include "server/grpc/matrix_service_impl.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/grpc/convert.h"

namespace plume::server {
namespace {

// Clock, SecondsSince, Overloaded, CheckStillWanted, FinishUnary and
// GatedUnaryReactor come from reactors.h, shared with the AttentionService.

using MatrixUpload = core::MatrixService::Upload;

// One UploadMatrix message: the header starts the upload, then data (and, for
// pre-packed uploads, scales) chunks feed it.
absl::Status ConsumeUpload(core::MatrixService* core, const v1::UploadMatrixRequest& req,
                           std::unique_ptr<MatrixUpload>* upload) {
  switch (req.payload_case()) {
    case v1::UploadMatrixRequest::kHeader: {
      if (*upload != nullptr) return absl::InvalidArgumentError("UploadMatrix sent a second header");
      auto u = core->BeginUpload(ToCore(req.header()));
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

// An UploadMatrix message as gRPC received it. A data message that is the
// one field `data` and nothing else (what every client sends) goes to the
// upload piece by piece from gRPC's own slices; any other message is parsed
// as protobuf, with protobuf's meaning (e.g. of a field sent twice).
absl::Status ConsumeRawUpload(core::MatrixService* core, const grpc::ByteBuffer& msg,
                              std::unique_ptr<MatrixUpload>* upload) {
  std::vector<grpc::Slice> slices;
  if (!msg.Dump(&slices).ok()) return absl::InternalError("UploadMatrix: cannot read the message");
  // The tag (field 2, length-delimited: 0x12) and the varint length.
  uint8_t head[11];
  size_t got = 0;
  for (const grpc::Slice& sl : slices) {
    const size_t n = std::min(sl.size(), sizeof head - got);
    std::memcpy(head + got, sl.begin(), n);
    got += n;
    if (got == sizeof head) break;
  }
  if (got >= 2 && head[0] == 0x12) {
    uint64_t len = 0;
    size_t at = 1;
    for (int shift = 0; at < got && shift < 64; shift += 7) {
      const uint8_t b = head[at++];
      len |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) {
        if (at + len != msg.Length()) break;  // more than the one field: parse it
        if (*upload == nullptr) return absl::InvalidArgumentError("UploadMatrix sent data before its header");
        size_t skip = at;
        for (const grpc::Slice& sl : slices) {
          if (skip >= sl.size()) {
            skip -= sl.size();
            continue;
          }
          const std::string_view piece(reinterpret_cast<const char*>(sl.begin()) + skip, sl.size() - skip);
          skip = 0;
          if (absl::Status s = (*upload)->AddData(piece); !s.ok()) return s;
        }
        return absl::OkStatus();
      }
    }
  }
  grpc::ByteBuffer copy(msg);  // shares the slices; parsing consumes it
  v1::UploadMatrixRequest req;
  if (!grpc::SerializationTraits<v1::UploadMatrixRequest>::Deserialize(&copy, &req).ok()) {
    return absl::InvalidArgumentError("UploadMatrix sent a message that does not parse; nothing was stored");
  }
  return ConsumeUpload(core, req, upload);
}

}  // namespace

MatrixServiceImpl::MatrixServiceImpl(core::MatrixService* core, core::Metrics* metrics,
                                     core::WorkQueue* queue, const Options& options)
    : core_(core), metrics_(metrics), queue_(queue), options_(options) {}

grpc::ServerReadReactor<grpc::ByteBuffer>* MatrixServiceImpl::UploadMatrix(grpc::CallbackServerContext* ctx,
                                                                          grpc::ByteBuffer* resp) {
  return new UploadReactor<grpc::ByteBuffer, grpc::ByteBuffer, MatrixUpload>(
      ctx, options_.gate, queue_, metrics_, core::Method::kUploadMatrix, resp,
      [this](const grpc::ByteBuffer& msg, std::unique_ptr<MatrixUpload>* upload) {
        return ConsumeRawUpload(core_, msg, upload);
      },
      [](MatrixUpload& upload, grpc::ByteBuffer* r) {
        auto info = upload.Finish();
        if (!info.ok()) return info.status();
        v1::UploadMatrixResponse out;
        ToWire(*info, out.mutable_matrix());
        bool own = false;
        if (!grpc::SerializationTraits<v1::UploadMatrixResponse>::Serialize(out, r, &own).ok()) {
          return absl::InternalError("cannot serialize the UploadMatrix response");
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* MatrixServiceImpl::GetMatrix(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::GetMatrixRequest, v1::GetMatrixResponse>;
  constexpr core::Method kMethod = core::Method::kGetMatrix;
  return ServeUnary<v1::GetMatrixRequest, v1::GetMatrixResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        if (!call->req.include_packed()) {
          return RunUnaryInline(call, metrics_, kMethod, [this, call] {
            auto info = core_->GetMatrix(call->req.name());
            if (!info.ok()) return info.status();
            ToWire(*info, call->resp.mutable_matrix());
            return CheckResponseSize(&call->resp, core_->limits(), "GetMatrix response");
          });
        }
        // The codes come back from the backend (a device copy on a GPU): on
        // the work queue, not a gRPC thread.
        return RunUnaryOnQueue(call, queue_, metrics_, kMethod, [this, call] {
          // The codes and scales go straight into the response's fields.
          auto info = core_->GetMatrixPacked(call->req.name(), call->resp.mutable_packed_words(),
                                             call->resp.mutable_scales());
          if (!info.ok()) return info.status();
          ToWire(*info, call->resp.mutable_matrix());
          return CheckResponseSize(&call->resp, core_->limits(), "GetMatrix response");
        });
      });
}

grpc::ServerUnaryReactor* MatrixServiceImpl::ListMatrices(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* in,
                                                          grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::ListMatricesRequest, v1::ListMatricesResponse>;
  constexpr core::Method kMethod = core::Method::kListMatrices;
  return ServeUnary<v1::ListMatricesRequest, v1::ListMatricesResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryInline(call, metrics_, kMethod, [this, call] {
          for (const core::MatrixInfo& info : core_->ListMatrices()) {
            ToWire(info, call->resp.add_matrices());
          }
          return CheckResponseSize(&call->resp, core_->limits(), "ListMatrices response");
        });
      });
}

grpc::ServerUnaryReactor* MatrixServiceImpl::DeleteMatrix(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* in,
                                                          grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::DeleteMatrixRequest, v1::DeleteMatrixResponse>;
  constexpr core::Method kMethod = core::Method::kDeleteMatrix;
  // On the work queue, ahead of the batches waiting there: a durable store's
  // unlink and fsync never hold a gRPC thread, and a delete does not wait
  // behind a backlog of GEMVs.
  return ServeUnary<v1::DeleteMatrixRequest, v1::DeleteMatrixResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryOnQueue(call, queue_, metrics_, kMethod,
                               [this, call] { return core_->DeleteMatrix(call->req.name()); },
                               core::WorkQueue::Priority::kFirst);
      });
}

grpc::ServerUnaryReactor* MatrixServiceImpl::Gemv(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* in,
                                                  grpc::ByteBuffer* out) {
  using Call = UnaryCall<v1::GemvRequest, v1::GemvResponse>;
  constexpr core::Method kMethod = core::Method::kGemv;
  return ServeUnary<v1::GemvRequest, v1::GemvResponse>(
      ctx, options_.gate, in, out, metrics_, kMethod, [this](Call* call) {
        return RunUnaryBatched(call, metrics_, kMethod,
                               [this, call](core::RequestLife life, DoneFn done) {
                                 SubmitGemv(call->req, &call->resp, std::move(life),
                                            std::move(done));
                               });
      });
}

grpc::ServerBidiReactor<v1::GemvRequest, v1::GemvResponse>* MatrixServiceImpl::GemvStream(
    grpc::CallbackServerContext* ctx) {
  return new ItemStreamReactor<v1::GemvRequest, v1::GemvResponse>(
      ctx, options_.gate, metrics_, core::Method::kGemvStream, options_.max_stream_in_flight,
      [this](const v1::GemvRequest& req, v1::GemvResponse* resp, core::RequestLife life,
             DoneFn done) { SubmitGemv(req, resp, std::move(life), std::move(done)); });
}

void MatrixServiceImpl::SubmitGemv(const v1::GemvRequest& req, v1::GemvResponse* resp,
                                   core::RequestLife life, DoneFn done) {
  resp->set_request_id(req.request_id());
  // The call views the request's bytes and the result is written into the
  // response's own: no copy here.
  OutputTensorSink out(resp->mutable_output());
  core_->GemvAsync(options_.batcher, ToCore(req), &out, std::move(life), std::move(done));
}

}  // namespace plume::server
