// The one place where absl::Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace plume::server {

grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace plume::server
