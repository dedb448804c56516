// DiagnosticsService: Echo and EchoStream, the ceiling of the gRPC path.
// An echo takes the path a GEMV takes (admission through the shared
// CallGate, the work queue, the response write) with a copy of the payload
// in place of the compute, so `plume bench --echo` measures what the server
// could carry if the GEMV itself were free.
#pragma once

#include <cstdint>

#include "plume/v1/diagnostics.grpc.pb.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"
#include "server/grpc/reactors.h"

namespace plume::server {

class DiagnosticsServiceImpl final
    : public v1::DiagnosticsService::WithRawCallbackMethod_Echo<
          v1::DiagnosticsService::CallbackService> {
 public:
  struct Options {
    // Largest Echo payload (Tensor data bytes); RESOURCE_EXHAUSTED beyond it.
    int64_t max_echo_bytes = 4 << 20;
    // Largest response message (the server's max_message_bytes).
    int64_t max_response_bytes = int64_t{64} << 20;
    // Items of one EchoStream being copied at once.
    int max_stream_in_flight = 64;
    // Admission (bearer token, drain), shared with the MatrixService. Not
    // owned; required.
    CallGate* gate = nullptr;
  };

  DiagnosticsServiceImpl(core::Metrics* metrics, core::WorkQueue* queue, const Options& options);

  // Registered raw and parsed here (UnaryCall in reactors.h): a request that
  // does not parse gets INVALID_ARGUMENT.
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                 grpc::ByteBuffer* out) override;
  grpc::ServerBidiReactor<v1::EchoRequest, v1::EchoResponse>* EchoStream(
      grpc::CallbackServerContext* ctx) override;

 private:
  // Copies the payload into `resp` unless it is over the limit.
  absl::Status RunEcho(const v1::EchoRequest& req, v1::EchoResponse* resp) const;

  core::Metrics* metrics_;
  core::WorkQueue* queue_;
  Options options_;
};

}  // namespace plume::server
