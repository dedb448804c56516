// Validation of requests from the network. Every check returns a precise
// absl::Status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...) with a
// message that names the offending field; nothing here trusts its input.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/v1/plume.pb.h"
#include "server/core/backend.h"
#include "server/core/limits.h"

namespace plume::core {

// Names: 1..max_name_length characters of [A-Za-z0-9._-], not starting with
// '.' (so never "." or ".."), no '/': safe as a file name in the store.
absl::Status ValidateName(std::string_view name, const Limits& limits);

// What an UploadMatrix header asks for.
struct UploadPlan {
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  bool prepacked = false;
  int64_t data_bytes = 0;   // bytes of data chunks expected
  int64_t scale_bytes = 0;  // bytes of scale chunks expected (pre-packed only)
};
absl::StatusOr<UploadPlan> ValidateHeader(const v1::MatrixHeader& h, const Limits& limits);

// Pre-packed scales must be finite and positive.
absl::Status ValidatePackedScales(const float* scales, int64_t n);

// What a Gemv request asks for, checked against the matrix it names.
struct GemvPlan {
  int64_t batch = 0;
  bool input_is_vector = false;  // 1-D input: 1-D output
  DType x_dtype = DType::kF32;
  float x_scale = 1.0f;
  DType y_dtype = DType::kF32;
};
absl::StatusOr<GemvPlan> ValidateGemv(const v1::GemvRequest& req, const MatrixShape& shape,
                                      const Limits& limits);

}  // namespace plume::core
