// What the transport hands the core, and what the core hands back: plain
// structs, no protobuf. Requests are views of the bytes the transport
// received (they hold no copy of names or tensor data) and stay valid only
// as long as those bytes; results are values, except a GEMV's or an
// attention's output, which the core writes straight into memory the
// transport provides (ResultSink). server/grpc converts between these and
// the plume.v1 messages (server/grpc/convert.h).
//
// Enum fields of requests hold the wire's numbers (plume.v1's DType,
// ScaleMode, KVScaleMode, Placement), which core's own enums share:
// validation parses them, so a value the core does not know is refused
// with a message that names it. Results hold core enums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "server/core/backend.h"

namespace plume::core {

// A tensor as it travels: a row-major little-endian array of `dtype` (a wire
// number) with `shape`.
struct TensorView {
  int dtype = 0;
  absl::Span<const int64_t> shape;
  std::string_view data;
};

// The first message of an UploadMatrix call.
struct MatrixHeader {
  std::string_view name;
  int64_t rows = 0;
  int64_t cols = 0;
  int source_dtype = 0;
  int format = 0;      // 0: E4M3
  int scale_mode = 0;  // 0: ROW
  bool non_saturating = false;
  int placement = 0;   // 0: AUTO
  // Per-matrix batching overrides; 0: the server's default.
  int64_t max_batch = 0;
  int64_t max_queue_delay_us = 0;
  int64_t max_queue_size = 0;
  std::string_view content_hash;
};

// The first message of an UploadKV call.
struct KvHeader {
  std::string_view name;
  int64_t kv_heads = 0;
  int64_t seq = 0;
  int64_t head_dim = 0;
  int source_dtype = 0;
  int format = 0;      // 0: E4M3
  int scale_mode = 0;  // 0: TOKEN_BLOCK
  bool non_saturating = false;
};

// y = W·x for each of the input's vectors ([cols] or [batch, cols]).
struct GemvCall {
  std::string_view matrix;
  TensorView input;
  int output_dtype = 0;     // 0: F32
  float input_scale = 0.0f;  // FP8 inputs; 0 means 1
};

// softmax(Q·Kᵀ·scale)·V over a resident cache; query [batch, heads, q_len, head_dim].
struct AttentionCall {
  std::string_view cache;
  TensorView query;
  float softmax_scale = 0.0f;  // 0: 1/sqrt(head_dim)
  bool causal = false;
  int output_dtype = 0;  // 0: F32
};

// K and V [kv_heads, tokens, head_dim] appended to a cache.
struct AppendKvCall {
  std::string_view name;
  TensorView k;
  TensorView v;
};

// Where the core writes a GEMV's or an attention's output. The transport
// implements it over its response (server/grpc: the response message's own
// bytes field), so the result is written where it is sent from.
class ResultSink {
 public:
  // Called once, before the request is queued, with the output's dtype and
  // shape; returns `bytes` writable bytes that stay valid until the call's
  // done callback has run.
  virtual char* Allocate(DType dtype, absl::Span<const int64_t> shape, size_t bytes) = 0;

 protected:
  ~ResultSink() = default;
};

// A resident matrix, as uploads and lookups report it.
struct MatrixInfo {
  std::string name;
  int64_t rows = 0;
  int64_t cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  ScaleMode scale_mode = ScaleMode::kRow;
  DType source_dtype = DType::kF32;
  bool non_saturating = false;
  int64_t padded_cols = 0;  // codes per row, padding included (= row stride in bytes)
  int64_t num_scales = 0;
  int64_t resident_bytes = 0;
  int64_t created_unix_ms = 0;
  std::string backend;
  std::string content_hash;
  MatrixPlacement placement;
  std::vector<GemvKernelChoice> gemv_kernels;
};

// A resident K/V cache, as uploads, appends and lookups report it.
struct KvInfo {
  std::string name;
  int64_t kv_heads = 0;
  int64_t seq = 0;
  int64_t head_dim = 0;
  Fp8Format format = Fp8Format::kE4M3;
  KvScaleMode scale_mode = KvScaleMode::kTokenBlock;
  DType source_dtype = DType::kF32;
  bool non_saturating = false;
  int64_t page_tokens = 0;
  int64_t row_stride_bytes = 0;
  int64_t page_bytes = 0;
  int64_t pages = 0;
  int64_t resident_bytes = 0;
  int64_t created_unix_ms = 0;
  std::string backend;
};

}  // namespace plume::core
