// libFuzzer target: upload headers (matrix and K/V) against the validators
// with every limit at its maximum, where the byte counts a header implies
// can overflow 64 bits. The first byte picks the header; the rest is parsed
// as it and converted as the server converts it. A header that passes must
// imply exact sizes: each is recomputed here in 128-bit arithmetic and
// compared.
#include <cstdint>

#include "plume/v1/attention.pb.h"
#include "plume/v1/plume.pb.h"
#include "server/core/validation.h"
#include "server/grpc/convert.h"

using namespace plume;
using i128 = __int128;

namespace {

core::Limits MaxLimits() {
  core::Limits l;
  l.max_rows = l.max_cols = l.max_vectors_per_request = core::kMaxDimensionLimit;
  l.max_kv_heads = l.max_head_dim = l.max_kv_seq = l.max_attention_rows = core::kMaxDimensionLimit;
  l.max_upload_bytes = core::kMaxByteLimit;
  return l;
}

i128 RoundUp(i128 n, i128 a) { return (n + a - 1) / a * a; }

void CheckMatrix(const core::MatrixHeader& h, const core::Limits& limits) {
  auto plan = core::ValidateHeader(h, limits);
  if (!plan.ok()) return;
  const i128 rows = plan->shape.rows, cols = plan->shape.cols;
  const i128 padded = RoundUp(cols, kRowAlignCodes);
  const ScaleMode mode = plan->shape.scale_mode;
  const i128 blocks = RoundUp(cols, kBlockCols) / kBlockCols;
  // Scales on the wire (the upload's mode), and as a backend holds them
  // (BLOCK128X128 expanded to one per row per 128 columns).
  const i128 scales = mode == ScaleMode::kNone     ? 0
                      : mode == ScaleMode::kTensor ? 1
                      : mode == ScaleMode::kRow    ? rows
                      : mode == ScaleMode::kBlock128x128
                          ? RoundUp(rows, kBlockRows) / kBlockRows * blocks
                          : rows * blocks;
  const i128 resident_scales = mode == ScaleMode::kBlock128x128 ? rows * blocks : scales;
  const i128 data = plan->prepacked ? rows * padded : rows * cols * DTypeSize(plan->source_dtype);
  if (rows <= 0 || cols <= 0 || data != plan->data_bytes || data > limits.max_upload_bytes ||
      (plan->prepacked && scales * 4 != plan->scale_bytes)) {
    __builtin_trap();
  }
  // What the store reserves, through the unchecked layout helpers.
  if (i128{plan->shape.resident_bytes()} != rows * padded + resident_scales * 4) __builtin_trap();
}

void CheckKv(const core::KvHeader& h, const core::Limits& limits) {
  auto plan = core::ValidateKvHeader(h, limits);
  if (!plan.ok()) return;
  const i128 heads = plan->shape.kv_heads, dim = plan->shape.head_dim, seq = plan->seq;
  const i128 row = RoundUp(dim, 16);
  const i128 page_scales = plan->shape.scale_mode == KvScaleMode::kTokenBlock ? 2 * heads : 0;
  const i128 page = RoundUp(2 * heads * kKvPageTokens * row + page_scales * 4, kKvPageAlign);
  const i128 globals = plan->shape.scale_mode == KvScaleMode::kTensor ? 1
                       : plan->shape.scale_mode == KvScaleMode::kHead ? heads
                                                                      : 0;
  const i128 resident = RoundUp(seq, kKvPageTokens) / kKvPageTokens * page + 2 * globals * 4;
  if (heads * seq * dim * DTypeSize(plan->source_dtype) != plan->side_bytes ||
      i128{plan->shape.resident_bytes(plan->seq)} != resident) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const core::Limits limits = MaxLimits();
  const auto* body = reinterpret_cast<const char*>(data + 1);
  const int n = static_cast<int>(size - 1);
  if (data[0] % 2 == 0) {
    v1::MatrixHeader h;
    if (h.ParseFromArray(body, n)) CheckMatrix(server::ToCore(h), limits);
  } else {
    v1::KVHeader h;
    if (h.ParseFromArray(body, n)) CheckKv(server::ToCore(h), limits);
  }
  return 0;
}
