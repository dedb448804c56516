// Status helpers shared by the SDK and the CLI.
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace plume {

// A call's gRPC status as an absl::Status (the codes are the same numbers;
// the server asserts that where it converts the other way).
absl::Status FromGrpcStatus(const grpc::Status& s);
// A status from a raw code (e.g. plume.v1.Status in a stream item); a code
// outside 0..16 becomes UNKNOWN, with the number kept in the message.
absl::Status StatusFromCode(int code, std::string message);

// "NOT_FOUND", "UNAVAILABLE", ... (the gRPC code name).
const char* StatusCodeName(absl::StatusCode code);
// "CODE_NAME: message", e.g. `NOT_FOUND: matrix "x" not found`; "OK" for OK.
std::string FormatStatus(const absl::Status& s);

}  // namespace plume
