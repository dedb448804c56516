// gRPC adapter of core::MatrixService, on the callback (reactor) API.
// Unary lookups run inline; GEMV and the end of an upload run on the work
// queue, never on a gRPC callback thread.
#pragma once

#include "plume/v1/plume.grpc.pb.h"
#include "server/grpc/call_gate.h"
#include "server/grpc/reactors.h"
#include "server/core/matrix_service.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"

namespace plume::server {

// The callback service with its unary methods and UploadMatrix registered
// raw (grpc::ByteBuffer in and out): unary requests are parsed here, so one
// that does not parse gets INVALID_ARGUMENT; an upload's data message goes to
// the upload straight from gRPC's buffers instead of being parsed into a
// string of its own first.
using MatrixServiceBase = v1::MatrixService::WithRawCallbackMethod_GetMatrix<
    v1::MatrixService::WithRawCallbackMethod_ListMatrices<
        v1::MatrixService::WithRawCallbackMethod_DeleteMatrix<
            v1::MatrixService::WithRawCallbackMethod_Gemv<
                v1::MatrixService::WithRawCallbackMethod_UploadMatrix<
                    v1::MatrixService::CallbackService>>>>>;

class MatrixServiceImpl final : public MatrixServiceBase {
 public:
  struct Options {
    // Items of one GemvStream being computed at once; the stream stops reading
    // (and so applies HTTP/2 flow control to the client) beyond this.
    int max_stream_in_flight = 64;
    // Gemv and attention requests go through it (required; not owned).
    core::Batcher* batcher = nullptr;
    // Admission (bearer token, drain), shared with the server's other
    // services. Not owned; required.
    CallGate* gate = nullptr;
  };

  MatrixServiceImpl(core::MatrixService* core, core::Metrics* metrics, core::WorkQueue* queue,
                    const Options& options);

  grpc::ServerReadReactor<grpc::ByteBuffer>* UploadMatrix(grpc::CallbackServerContext* ctx,
                                                          grpc::ByteBuffer* resp) override;
  // Unary methods take their messages raw and parse them (UnaryCall in
  // reactors.h), so that a request that does not parse gets INVALID_ARGUMENT.
  grpc::ServerUnaryReactor* GetMatrix(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                      grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* ListMatrices(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* in,
                                         grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* DeleteMatrix(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* in,
                                         grpc::ByteBuffer* out) override;
  grpc::ServerUnaryReactor* Gemv(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                 grpc::ByteBuffer* out) override;
  grpc::ServerBidiReactor<v1::GemvRequest, v1::GemvResponse>* GemvStream(
      grpc::CallbackServerContext* ctx) override;

  core::MatrixService* core() const { return core_; }
  core::Metrics* metrics() const { return metrics_; }
  core::WorkQueue* queue() const { return queue_; }
  const Options& options() const { return options_; }

 private:
  // Queues one GEMV on the batcher; `req` and `resp` stay alive until `done`.
  void SubmitGemv(const v1::GemvRequest& req, v1::GemvResponse* resp, core::RequestLife life,
                  DoneFn done);

  core::MatrixService* core_;
  core::Metrics* metrics_;
  core::WorkQueue* queue_;
  Options options_;
};

}  // namespace plume::server
