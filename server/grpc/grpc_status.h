// The one place where the server turns an absl::Status into the
// grpc::Status its client sees. The codes are the same numbers;
// grpc_status.cc asserts that, code by code. (The client SDK's way back is
// FromGrpcStatus in plume/client/status.h.)
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace plume::server {

grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace plume::server
