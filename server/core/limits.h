// Request limits enforced by server/core. Each one is a server flag.
#pragma once

#include <cstdint>

namespace plume::core {

struct Limits {
  int64_t max_rows = int64_t{1} << 20;          // rows of one matrix
  int64_t max_cols = int64_t{1} << 20;          // cols of one matrix
  int64_t max_vectors_per_request = 4096;       // vectors in one Gemv request
  int64_t max_upload_bytes = int64_t{16} << 30; // source bytes of one upload
  int64_t max_name_length = 128;
  // K/V caches and attention.
  int64_t max_kv_heads = 1024;                  // kv heads of one cache
  int64_t max_head_dim = 1024;                  // head_dim of one cache
  int64_t max_kv_seq = int64_t{1} << 24;        // tokens of one cache
  int64_t max_attention_rows = int64_t{1} << 16;  // batch * heads * q_len of one request
  // Largest response message (--max_message_bytes; <= 0: no limit of the
  // server's own). Whatever it says, no response may exceed
  // kMaxResponseBytesLimit.
  int64_t max_response_bytes = int64_t{64} << 20;
};

// The largest any dimension limit may be set to (rows, cols, tokens, ...),
// and any byte limit: every size is computed with checked arithmetic
// (sizes.h), and these keep the sums of a few such sizes within 64 bits.
inline constexpr int64_t kMaxDimensionLimit = int64_t{1} << 48;
inline constexpr int64_t kMaxByteLimit = int64_t{1} << 62;

// The most a response message can hold: protobuf serializes at most 2 GiB - 1
// (and gRPC's length prefix is 32 bits, so a 4 GiB message would wrap).
inline constexpr int64_t kMaxResponseBytesLimit = (int64_t{1} << 31) - 1;
// What a response carries besides its payload (shape, ids, status), allowed
// for when its payload is checked against the limit.
inline constexpr int64_t kResponseOverheadBytes = 1024;
// The longest MatrixHeader.content_hash (the durable store keeps it).
inline constexpr int64_t kMaxContentHashBytes = 128;

}  // namespace plume::core
