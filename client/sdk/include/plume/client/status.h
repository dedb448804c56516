// Status helpers shared by the SDK and the CLI.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace grpc {
class Status;
}

namespace plume {

// The absl::Status with the same code and message as a gRPC status.
absl::Status FromGrpcStatus(const grpc::Status& s);
// A status from a raw code (e.g. plume.v1.Status in a stream item).
absl::Status StatusFromCode(int code, std::string message);

// "NOT_FOUND", "UNAVAILABLE", ... (the gRPC code name).
const char* StatusCodeName(absl::StatusCode code);
// "CODE_NAME: message", e.g. `NOT_FOUND: matrix "x" not found`; "OK" for OK.
std::string FormatStatus(const absl::Status& s);

}  // namespace plume
