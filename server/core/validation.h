// Validation of requests from the network. Every check returns a precise
// absl::Status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...) with a
// message that names the offending field; nothing here trusts its input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/backend.h"
#include "server/core/batching_options.h"
#include "server/core/calls.h"
#include "server/core/limits.h"

namespace plume::core {

// A wire DType number as messages name it: "DTYPE_F32", ..., or
// "unknown dtype 9".
std::string WireDTypeLabel(int dtype);

// Names: 1..max_name_length characters of [A-Za-z0-9._-], not starting with
// '.' (so never "." or ".."), no '/': safe as a file name in the store.
// `what` names the thing in messages ("matrix", "kv cache").
absl::Status ValidateName(std::string_view name, const Limits& limits,
                          std::string_view what = "matrix");

// The limits themselves: every one positive and no larger than the size
// arithmetic holds (kMaxDimensionLimit, kMaxByteLimit).
absl::Status ValidateLimits(const Limits& limits);

// A response whose payload holds `payload_bytes` (-1: too large to count)
// fits in one message: RESOURCE_EXHAUSTED naming the size and the limit
// otherwise. `what` names the response ("Gemv response").
absl::Status ValidateResponseBytes(int64_t payload_bytes, const Limits& limits,
                                   std::string_view what);

// What an UploadMatrix header asks for.
struct UploadPlan {
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  bool prepacked = false;
  int64_t data_bytes = 0;   // bytes of data chunks expected
  int64_t scale_bytes = 0;  // bytes of scale chunks expected (pre-packed only)
  std::string content_hash;  // the client's label, kept with the matrix
  BatchingOptions batching{0, std::chrono::microseconds(0), 0};  // 0: server default
};
absl::StatusOr<UploadPlan> ValidateHeader(const MatrixHeader& h, const Limits& limits);

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
absl::StatusOr<GemvPlan> ValidateGemv(const GemvCall& req, const MatrixShape& shape,
                                      const Limits& limits);

// ---------------------------------------------------------------- K/V caches

// What an UploadKV header asks for.
struct KvUploadPlan {
  KvShape shape;
  int64_t seq = 0;
  DType source_dtype = DType::kF32;
  int64_t side_bytes = 0;  // bytes of K expected (and of V)
};
absl::StatusOr<KvUploadPlan> ValidateKvHeader(const KvHeader& h, const Limits& limits);

// What an AppendKV request adds to a cache of `seq` tokens.
struct KvAppendPlan {
  int64_t tokens = 0;
  DType src_dtype = DType::kF32;
};
absl::StatusOr<KvAppendPlan> ValidateKvAppend(const AppendKvCall& req, const KvShape& shape,
                                              int64_t seq, const Limits& limits);

// What an Attention request asks of a cache of `seq` tokens.
struct AttentionPlan {
  int64_t batch = 0, heads = 0, q_len = 0;
  DType q_dtype = DType::kF32;
  DType out_dtype = DType::kF32;
  float scale = 1.0f;  // resolved: 1/sqrt(head_dim) when the request says 0
  bool causal = false;
};
absl::StatusOr<AttentionPlan> ValidateAttention(const AttentionCall& req, const KvShape& shape,
                                                int64_t seq, const Limits& limits);

}  // namespace plume::core
