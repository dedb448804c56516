// The one place plume.v1 messages and the core's plain structs
// (server/core/calls.h) convert into each other. Requests become views of
// the message's bytes (no copy of names or tensor data): they are valid
// while the message lives unchanged. Results are written into the response
// message; a GEMV's or an attention's output goes straight into the
// response's own bytes field (OutputTensorSink), so it is never copied
// between the core and the message that is sent.
//
// Protobuf only, no gRPC: the fuzzers compile it with the validators.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "plume/v1/attention.pb.h"
#include "plume/v1/plume.pb.h"
#include "server/core/calls.h"

namespace plume::server {

core::TensorView ToCore(const v1::Tensor& t);
core::MatrixHeader ToCore(const v1::MatrixHeader& h);
core::KvHeader ToCore(const v1::KVHeader& h);
core::GemvCall ToCore(const v1::GemvRequest& req);
core::AttentionCall ToCore(const v1::AttentionRequest& req);
core::AppendKvCall ToCore(const v1::AppendKVRequest& req);

void ToWire(const core::MatrixInfo& info, v1::MatrixInfo* out);
void ToWire(const core::KvInfo& info, v1::KVInfo* out);

// A result written into a response's output tensor: Allocate sets its dtype
// and shape and resizes its data to the result's size, and the core writes
// the result there.
class OutputTensorSink final : public core::ResultSink {
 public:
  explicit OutputTensorSink(v1::Tensor* out) : out_(out) {}
  char* Allocate(DType dtype, absl::Span<const int64_t> shape, size_t bytes) override;

 private:
  v1::Tensor* out_;
};

}  // namespace plume::server
