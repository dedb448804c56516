// Byte counts of plume's layouts (packed matrices, scales, K/V pages) with
// checked arithmetic: every product and sum is tested for overflow, and a
// count that would not fit comes back empty instead of wrapping. The
// validators compute every size a request implies through these before the
// unchecked layout helpers (kernels/include/plume/kernels/*.h) are used, so
// once a request is admitted those cannot overflow either.
#pragma once

#include <cstdint>
#include <optional>

#include "plume/kernels/kv_layout.h"
#include "plume/kernels/layout.h"

namespace plume::core::sizes {

// The largest count these helpers return: 2^62, so that a few of them may
// still be added without overflow.
inline constexpr int64_t kMaxCount = int64_t{1} << 62;

// a * b; empty when either is negative or the product exceeds kMaxCount.
inline std::optional<int64_t> Mul(int64_t a, int64_t b) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > kMaxCount) return std::nullopt;
  return r;
}
inline std::optional<int64_t> Mul(std::optional<int64_t> a, std::optional<int64_t> b) {
  if (!a || !b) return std::nullopt;
  return Mul(*a, *b);
}
// a + b, likewise.
inline std::optional<int64_t> Add(std::optional<int64_t> a, std::optional<int64_t> b) {
  int64_t r;
  if (!a || !b || *a < 0 || *b < 0 || __builtin_add_overflow(*a, *b, &r) || r > kMaxCount) {
    return std::nullopt;
  }
  return r;
}
// n rounded up to a multiple of `align` (> 0).
inline std::optional<int64_t> RoundUp(int64_t n, int64_t align) {
  if (n < 0 || align <= 0 || n > kMaxCount - align) return std::nullopt;
  return (n + align - 1) / align * align;
}

// A packed matrix of rows x cols: what PackedLayout and NumScales compute.
struct MatrixBytes {
  int64_t padded_cols = 0;
  int64_t code_bytes = 0;  // rows * padded_cols
  int64_t num_scales = 0;
  int64_t scale_bytes = 0;
  int64_t resident_bytes = 0;  // codes and scales
};
inline std::optional<MatrixBytes> MatrixBytesOf(int64_t rows, int64_t cols, ScaleMode mode) {
  if (rows <= 0 || cols <= 0) return std::nullopt;
  MatrixBytes b;
  const auto padded = RoundUp(cols, kRowAlignCodes);
  const auto blocks = RoundUp(cols, kBlockCols);
  if (!padded || !blocks) return std::nullopt;
  b.padded_cols = *padded;
  const auto codes = Mul(rows, b.padded_cols);
  auto scales_of = [&](ScaleMode m) -> std::optional<int64_t> {
    return m == ScaleMode::kNone     ? 0
           : m == ScaleMode::kTensor ? 1
           : m == ScaleMode::kRow    ? rows
           : m == ScaleMode::kBlock128x128
               ? Mul(*RoundUp(rows, kBlockRows) / kBlockRows, *blocks / kBlockCols)
               : Mul(rows, *blocks / kBlockCols);
  };
  if (!RoundUp(rows, kBlockRows)) return std::nullopt;
  std::optional<int64_t> scales = scales_of(mode);
  const auto scale_bytes = Mul(scales, int64_t{sizeof(float)});
  // Resident: the scales as a backend holds them (ResidentScaleMode).
  const auto resident =
      Add(codes, Mul(scales_of(ResidentScaleMode(mode)), int64_t{sizeof(float)}));
  if (!resident) return std::nullopt;
  b.code_bytes = *codes;
  b.num_scales = *scales;
  b.scale_bytes = *scale_bytes;
  b.resident_bytes = *resident;
  return b;
}

// Source bytes of rows x cols elements of `elem_bytes` each.
inline std::optional<int64_t> SourceBytes(int64_t rows, int64_t cols, int64_t elem_bytes) {
  return Mul(Mul(rows, cols), elem_bytes);
}

// A K/V cache of kv_heads x head_dim holding `seq` tokens: what KvLayout
// computes.
struct KvBytes {
  int64_t row_bytes = 0;
  int64_t page_bytes = 0;
  int64_t pages = 0;
  int64_t resident_bytes = 0;  // whole pages and the cache-wide scales
};
inline std::optional<KvBytes> KvBytesOf(int64_t kv_heads, int64_t head_dim, KvScaleMode mode,
                                        int64_t seq) {
  if (kv_heads <= 0 || head_dim <= 0 || seq < 0) return std::nullopt;
  KvBytes b;
  const auto row = RoundUp(head_dim, 16);
  const auto codes = Mul(Mul(kv_heads, kKvPageTokens), row);  // K (or V) codes of a page
  const auto page_scales = Mul(mode == KvScaleMode::kTokenBlock ? 2 : 0, kv_heads);
  const auto raw_page = Add(Mul(codes, 2), Mul(page_scales, 4));
  if (!row || !raw_page) return std::nullopt;
  const auto page = RoundUp(*raw_page, kKvPageAlign);
  const auto pages = RoundUp(seq, kKvPageTokens);
  if (!page || !pages) return std::nullopt;
  const int64_t globals = mode == KvScaleMode::kTensor ? 1 : mode == KvScaleMode::kHead ? kv_heads : 0;
  const auto resident = Add(Mul(*pages / kKvPageTokens, *page), Mul(globals, 8));
  if (!resident) return std::nullopt;
  b.row_bytes = *row;
  b.page_bytes = *page;
  b.pages = *pages / kKvPageTokens;
  b.resident_bytes = *resident;
  return b;
}

}  // namespace plume::core::sizes
