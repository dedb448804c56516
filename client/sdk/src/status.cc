#include "plume/client/status.h"

#include <grpcpp/support/status.h>

#include "absl/strings/str_cat.h"

namespace plume {

#define PLUME_SAME_CODE(absl_name, grpc_name)                  \
  static_assert(static_cast<int>(absl::StatusCode::absl_name) == \
                static_cast<int>(grpc::StatusCode::grpc_name))
static_assert(static_cast<int>(absl::StatusCode::kOk) == static_cast<int>(grpc::StatusCode::OK));
PLUME_SAME_CODE(kCancelled, CANCELLED);
PLUME_SAME_CODE(kUnknown, UNKNOWN);
PLUME_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
PLUME_SAME_CODE(kNotFound, NOT_FOUND);
PLUME_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
PLUME_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
PLUME_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
PLUME_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
PLUME_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
PLUME_SAME_CODE(kAborted, ABORTED);
PLUME_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
PLUME_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
PLUME_SAME_CODE(kInternal, INTERNAL);
PLUME_SAME_CODE(kUnavailable, UNAVAILABLE);
PLUME_SAME_CODE(kDataLoss, DATA_LOSS);
static_assert(static_cast<int>(absl::StatusCode::kInvalidArgument) ==
              static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
#undef PLUME_SAME_CODE

absl::Status StatusFromCode(int code, std::string message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > 16) {
    return absl::UnknownError(absl::StrCat("status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

absl::Status FromGrpcStatus(const grpc::Status& s) {
  return StatusFromCode(static_cast<int>(s.error_code()), s.error_message());
}

const char* StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kUnknown: return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

std::string FormatStatus(const absl::Status& s) {
  if (s.ok()) return "OK";
  return absl::StrCat(StatusCodeName(s.code()), ": ", s.message());
}

}  // namespace plume
