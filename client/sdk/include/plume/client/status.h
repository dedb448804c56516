// Status helpers shared by the SDK and the CLI.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "plume/grpc_status.h"  // FromGrpcStatus, StatusFromCode

namespace plume {

// "NOT_FOUND", "UNAVAILABLE", ... (the gRPC code name).
const char* StatusCodeName(absl::StatusCode code);
// "CODE_NAME: message", e.g. `NOT_FOUND: matrix "x" not found`; "OK" for OK.
std::string FormatStatus(const absl::Status& s);

}  // namespace plume
