// plume's packed FP8 layout (DESIGN.md, "Numerics"): four codes per
// little-endian uint32, element 4j in bits 0-7; each row padded with zero
// codes to a multiple of 16 codes, so every row starts 16-byte aligned.
// Scales are FP32: none (NONE), 1 (TENSOR), rows (ROW),
// rows * ceil(cols / 128) laid out [row][block] (BLOCK128), or
// ceil(rows / 128) * ceil(cols / 128) laid out [row block][col block]
// (BLOCK128X128; held resident as BLOCK128, see ResidentScaleMode).
#pragma once

#include <cstdint>

#include "plume/kernels/types.h"

namespace plume {

inline constexpr int64_t kRowAlignCodes = 16;
inline constexpr int64_t kBlockCols = 128;
inline constexpr int64_t kBlockRows = 128;  // BLOCK128X128

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
         : mode == ScaleMode::kBlock128x128
             ? ((rows + kBlockRows - 1) / kBlockRows) * ((cols + kBlockCols - 1) / kBlockCols)
             : rows * ((cols + kBlockCols - 1) / kBlockCols);
}

// The mode a backend holds a matrix in: BLOCK128X128 as BLOCK128, every row
// of a 128-row band taking the band's block scales. The products are the
// same (value = code x scale either way); the scales take 4 bytes per row
// per 128 columns (3% of the codes) rather than per 128x128 block, and every
// BLOCK128 kernel serves the mode unchanged.
PLUME_HD constexpr ScaleMode ResidentScaleMode(ScaleMode mode) {
  return mode == ScaleMode::kBlock128x128 ? ScaleMode::kBlock128 : mode;
}

// BLOCK128X128 scales [ceil(rows/128)][nb] -> BLOCK128 [rows][nb].
inline void ExpandBlockScales(int64_t rows, int64_t cols, const float* tiles, float* out) {
  const int64_t nb = (cols + kBlockCols - 1) / kBlockCols;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) out[r * nb + b] = tiles[(r / kBlockRows) * nb + b];
}
// The inverse: the first row of each band ([rows][nb] -> [ceil(rows/128)][nb]).
inline void CompressBlockScales(int64_t rows, int64_t cols, const float* row_scales, float* out) {
  const int64_t nb = (cols + kBlockCols - 1) / kBlockCols;
  for (int64_t t = 0; t * kBlockRows < rows; ++t)
    for (int64_t b = 0; b < nb; ++b) out[t * nb + b] = row_scales[t * kBlockRows * nb + b];
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
    case ScaleMode::kBlock128x128:
      return scales[(r / kBlockRows) * l.blocks_per_row() + c / kBlockCols];
    default: return scales[r * l.blocks_per_row() + c / kBlockCols];
  }
}

}  // namespace plume
