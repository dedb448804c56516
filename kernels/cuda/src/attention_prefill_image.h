// The FP16 images of K and V that the Hopper flash prefill reads
// (attention_prefill_wgmma.cu), host and device: where each element sits.
// Kept apart from the kernels so that tests/emu checks the mapping on the
// CPU (prefill_image_emu_test.cc) with the functions the kernels use.
//
// A tile is TileTokens(kd) consecutive token positions of one kv head: two
// pages at head dims up to 128, one page at 256 (where the output's
// accumulators leave registers for no more), half a page at 512 (where K
// and V of a tile take 64 KB of shared memory even so). Its K image is the wgmma B
// operand of S = Q K^T (N = tokens, K = head dims) and its V image the B
// operand of O += P V (N = head dims, K = tokens), both K-major without
// swizzle: 8 x 8 core matrices of 16-byte rows,
// [k / 16][row / 8][k % 16 / 8][row % 8][k % 8]. The shared-memory
// descriptor of a k16 step then has 128 bytes between its two core matrices
// along k and 256 between groups of 8 rows, and the steps lie `rows` x 32
// bytes apart.
#pragma once

#include <cstdint>

#include "plume/kernels/types.h"

namespace plume::cuda::prefill_image {

// Tokens of a tile at padded head dim kd. At 64 and 128 a timing build may
// take fewer (blocks of three or four consumers need them for registers).
#ifndef PLUME_PREFILL_TILE_D64
#define PLUME_PREFILL_TILE_D64 128
#endif
#ifndef PLUME_PREFILL_TILE_D128
#define PLUME_PREFILL_TILE_D128 128
#endif
PLUME_HD constexpr int TileTokens(int kd) {
  return kd <= 64 ? PLUME_PREFILL_TILE_D64 : kd <= 128 ? PLUME_PREFILL_TILE_D128 : kd <= 256 ? 64 : 32;
}
inline constexpr int kLeadingBytes = 128;  // descriptor: between core matrices along k
inline constexpr int kStrideBytes = 256;   // descriptor: between groups of 8 rows

// Offset in halves of (row r, column k) of a K-major operand of `rows` rows.
PLUME_HD constexpr int CoreOffset(int rows, int r, int k) {
  return (k >> 4) * rows * 16 + (r >> 3) * 128 + ((k >> 3) & 1) * 64 + (r & 7) * 8 + (k & 7);
}
// Bytes from one k16 step of an operand of `rows` rows to the next.
PLUME_HD constexpr int StepBytes(int rows) { return rows * 32; }

// K image at padded head dim kd: token tok of the tile, head dim d.
PLUME_HD constexpr int KOffset(int kd, int tok, int d) { return CoreOffset(TileTokens(kd), tok, d); }
// V image (V transposed): head dim d of kd, token tok of the tile.
PLUME_HD constexpr int VOffset(int kd, int d, int tok) { return CoreOffset(kd, d, tok); }

// Halves of one K or V image at padded head dim kd.
PLUME_HD constexpr int ImageHalves(int kd) { return TileTokens(kd) * kd; }

// Where wgmma finds element (row r, column k) of that operand: the address a
// descriptor with the strides above gives for step k / 16 of an operand
// starting at 0, in halves. Equal to CoreOffset by construction; the test
// checks the kernels' image writes against this descriptor model.
PLUME_HD constexpr int DescribedOffset(int rows, int r, int k) {
  return (k >> 4) * (StepBytes(rows) / 2) + (r >> 3) * (kStrideBytes / 2) +
         ((k >> 3) & 1) * (kLeadingBytes / 2) + (r & 7) * 8 + (k & 7);
}

}  // namespace plume::cuda::prefill_image
