// The one place where absl::Status and grpc::Status convert into each other
// (the server's handlers and the client SDK both use it). The codes are the
// same numbers; grpc_status.cc asserts that, code by code.
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace plume {

grpc::Status ToGrpcStatus(const absl::Status& s);
absl::Status FromGrpcStatus(const grpc::Status& s);
// A status from a raw code (e.g. plume.v1.Status in a stream item); a code
// outside 0..16 becomes UNKNOWN, with the number kept in the message.
absl::Status StatusFromCode(int code, std::string message);

}  // namespace plume
