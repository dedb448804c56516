// plume's packed FP8 layout (DESIGN.md, "Numerics"): four codes per
// little-endian uint32, element 4j in bits 0-7; each row padded with zero
// codes to a multiple of 16 codes, so every row starts 16-byte aligned.
// Scales are FP32: none (NONE), 1 (TENSOR), rows (ROW), or
// rows * ceil(cols / 128) laid out [row][block] (BLOCK128).
#pragma once

#include <cstdint>

#include "plume/kernels/types.h"

namespace plume {

inline constexpr int64_t kRowAlignCodes = 16;
inline constexpr int64_t kBlockCols = 128;

struct PackedLayout {
  int64_t rows = 0;
  int64_t cols = 0;

  PLUME_HD constexpr int64_t padded_cols() const {
    return (cols + kRowAlignCodes - 1) / kRowAlignCodes * kRowAlignCodes;
  }
  PLUME_HD constexpr int64_t words_per_row() const { return padded_cols() / 4; }
  PLUME_HD constexpr int64_t total_words() const { return rows * words_per_row(); }
  PLUME_HD constexpr int64_t code_bytes() const { return rows * padded_cols(); }
  PLUME_HD constexpr int64_t blocks_per_row() const {
    return (cols + kBlockCols - 1) / kBlockCols;
  }
};

PLUME_HD constexpr int64_t NumScales(ScaleMode mode, int64_t rows, int64_t cols) {
  return mode == ScaleMode::kNone     ? 0
         : mode == ScaleMode::kTensor ? 1
         : mode == ScaleMode::kRow    ? rows
                                      : rows * ((cols + kBlockCols - 1) / kBlockCols);
}

// The FP8 code of element (r, c) in a packed matrix.
PLUME_HD uint8_t CodeAt(const uint32_t* words, const PackedLayout& l, int64_t r, int64_t c) {
  const uint32_t w = words[r * l.words_per_row() + c / 4];
  return static_cast<uint8_t>(w >> (8 * (c % 4)));
}

// The scale that applies to element (r, c).
PLUME_HD float ScaleAt(const float* scales, ScaleMode mode, const PackedLayout& l, int64_t r,
                       int64_t c) {
  switch (mode) {
    case ScaleMode::kNone: return 1.0f;
    case ScaleMode::kTensor: return scales[0];
    case ScaleMode::kRow: return scales[r];
    default: return scales[r * l.blocks_per_row() + c / kBlockCols];
  }
}

}  // namespace plume
