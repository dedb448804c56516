// Index math of the Hopper (wgmma) GEMV, host and device: which code of W
// and which activation each lane and each shared-memory byte holds. Kept
// apart from the kernel so that tests/emu checks these mappings on the CPU
// (gemv_layout_emu_test.cc) with the very functions the kernel uses.
//
// One k-chunk is 128 columns of W (one BLOCK128 scale block), eight k16
// steps of the tensor cores. Lane (g, t) of a warp (g = lane / 4, t = lane % 4)
// reads the chunk's codes 32t .. 32t + 31 of its rows as eight 32-bit words,
// and word s feeds k-step s. So the k order inside a step is permuted: the
// mma's k index kk of step s is chunk column ChunkCol(s, kk). The
// activations are written in that same order (ImageOffset), which makes the
// product the plain dot product over the chunk.
#pragma once

#include <cstdint>

#include "plume/kernels/types.h"

namespace plume::cuda::wgmma_layout {

inline constexpr int kChunk = 128;       // columns of W per k-chunk
inline constexpr int kSteps = 8;         // k16 steps per chunk
inline constexpr int kTileRows = 128;    // rows of W per block: two warp groups of 64
inline constexpr int kTileBytes = kTileRows * kChunk;  // one stage of W codes

// Paired stages: a block of kPairRows rows whose two warp groups take
// alternate chunks. A W stage then holds chunks 2i (rows 0 .. 63 of the
// slot) and 2i + 1 (rows 64 .. 127), each loaded as a 64-row TMA box, so
// warp group h reads its chunk where it reads its rows in a 128-row tile:
// the 128-byte swizzle repeats every 8 rows, and 64-row halves of a slot
// are 8 KiB apart (SwizzledOffset(r + 64, b) == kTileBytes / 2 + SwizzledOffset(r, b)).
inline constexpr int kPairRows = 64;
PLUME_HD constexpr int PairChunk(int i, int wg) { return 2 * i + wg; }

// Chunk column of mma k index kk (0..15) in k-step s (0..7). The A fragment
// gives lane t the k indices 2t, 2t+1 (codes 0, 1 of its word) and 2t+8,
// 2t+9 (codes 2, 3).
PLUME_HD constexpr int ChunkCol(int s, int kk) {
  return 32 * ((kk & 7) >> 1) + 4 * s + 2 * (kk >> 3) + (kk & 1);
}

// The activation image of one chunk, N columns (vectors, or hi/lo planes),
// in the wgmma canonical K-major layout without swizzle: 8x8 core matrices
// of 16-byte rows, [step][N / 8][k half][8 columns][8 k values]. Offset in
// halves of (column n, step s, k index kk).
PLUME_HD constexpr int64_t ImageOffset(int n_cols, int n, int s, int kk) {
  return int64_t{s} * n_cols * 16 + (n >> 3) * 128 + (kk >> 3) * 64 + (n & 7) * 8 + (kk & 7);
}
// Byte strides of that layout, for the shared-memory descriptor: between
// core matrices along k (the leading dimension) and along n (the stride
// dimension), and between steps.
inline constexpr int kLeadingBytes = 128;
inline constexpr int kStrideBytes = 256;
PLUME_HD constexpr int StepBytes(int n_cols) { return n_cols * 32; }

// Byte offset of (row r, byte b) of a W tile written by TMA with the 128-byte
// swizzle: rows of 128 bytes, 16-byte unit u of row r stored at unit u ^ (r % 8).
// Lanes g = 0, 1 of a quarter warp then read 8 distinct units: no bank conflict.
PLUME_HD constexpr int SwizzledOffset(int r, int b) {
  return r * kChunk + ((((b >> 4) ^ (r & 7)) << 4) | (b & 15));
}

// Where the accumulator element j (0 .. N/2 - 1) of lane (g, t) in warp w of
// a warp group sits in the 64 x N tile: row and column.
PLUME_HD constexpr int AccRow(int w, int g, int j) { return 16 * w + g + 8 * ((j >> 1) & 1); }
PLUME_HD constexpr int AccCol(int t, int j) { return 8 * (j >> 2) + 2 * t + (j & 1); }

}  // namespace plume::cuda::wgmma_layout
