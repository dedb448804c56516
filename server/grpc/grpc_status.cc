#include "server/grpc/grpc_status.h"

#include <string>

namespace plume::server {

#define PLUME_SAME_CODE(absl_code, grpc_code)                                     \
  static_assert(static_cast<int>(absl::StatusCode::absl_code) ==                 \
                    static_cast<int>(grpc::StatusCode::grpc_code),               \
                "absl and gRPC status codes differ: " #absl_code)
PLUME_SAME_CODE(kOk, OK);
PLUME_SAME_CODE(kCancelled, CANCELLED);
PLUME_SAME_CODE(kUnknown, UNKNOWN);
PLUME_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
PLUME_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
PLUME_SAME_CODE(kNotFound, NOT_FOUND);
PLUME_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
PLUME_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
PLUME_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
PLUME_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
PLUME_SAME_CODE(kAborted, ABORTED);
PLUME_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
PLUME_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
PLUME_SAME_CODE(kInternal, INTERNAL);
PLUME_SAME_CODE(kUnavailable, UNAVAILABLE);
PLUME_SAME_CODE(kDataLoss, DATA_LOSS);
PLUME_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef PLUME_SAME_CODE

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace plume::server
