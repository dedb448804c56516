// Shared driver for the GEMV kernels. Each ISA translation unit provides a
// kernel class K with
//   template <Fp8Format F, int R, int B, bool kBlock>
//   static void Tile(const uint8_t* w, int64_t pc, const float* x, const float* bs,
//                    int64_t nblk, float* out);
// computing, for R consecutive rows starting at codes `w` (row stride pc
// bytes) and B zero-padded activation vectors starting at `x` (stride pc
// floats), out[r * B + b] = sum over the row (with BLOCK128: sum over blocks
// of block partial * bs[r * nblk + blk]), and
//   static constexpr int RowsFor(int B, bool block);  // rows per tile, divides 8
#pragma once

#include <algorithm>
#include <cstdint>

#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume::ref::detail {

// A GemvF32 call as the row kernels take it: the matrix (never
// BLOCK128X128 here), its codes as bytes with their row pitch, and the
// activations copied to FP32 rows zero-padded to that pitch.
struct PaddedGemv {
  MatrixView w;
  const uint8_t* codes = nullptr;  // w.words as bytes
  int64_t pc = 0;                  // w.layout().padded_cols()
  int64_t nblk = 0;                // w.layout().blocks_per_row()
  const float* xp = nullptr;       // [batch][pc], zero-padded
  int64_t batch = 0;
  float* y = nullptr;  // [batch][rows]
};

using RowsFn = void (*)(const PaddedGemv&, int64_t, int64_t);

inline constexpr int kMaxBatchTile = 8;
inline constexpr int kRowGroup = 8;
// Isa::kAvx512Vbmi runs batches up to this size; larger ones use Isa::kAvx512.
#ifndef PLUME_VBMI_MAX_BATCH
#define PLUME_VBMI_MAX_BATCH 2
#endif
inline constexpr int64_t kVbmiMaxBatch = PLUME_VBMI_MAX_BATCH;


template <class K, Fp8Format F, int B, bool kBlock>
void RunTileGroup(const PaddedGemv& a, int64_t r, int64_t nr, int64_t b0) {
  constexpr int R = K::RowsFor(B, kBlock);  // a divisor of kRowGroup
  float out[kRowGroup * kMaxBatchTile];
  const float* x = a.xp + b0 * a.pc;
  int64_t rr = 0;
  auto emit = [&](int64_t row0, int nrows) {
    for (int i = 0; i < nrows; ++i) {
      const int64_t row = row0 + i;
      const float s = kBlock                        ? 1.0f
                      : a.w.scale_mode == ScaleMode::kNone   ? 1.0f
                      : a.w.scale_mode == ScaleMode::kTensor ? a.w.scales[0]
                                                             : a.w.scales[row];
      for (int b = 0; b < B; ++b) a.y[(b0 + b) * a.w.rows + row] = out[i * B + b] * s;
    }
  };
  for (; rr + R <= nr; rr += R) {
    const int64_t row = r + rr;
    K::template Tile<F, R, B, kBlock>(a.codes + row * a.pc, a.pc, x,
                                      kBlock ? a.w.scales + row * a.nblk : nullptr, a.nblk, out);
    emit(row, R);
  }
  for (; rr < nr; ++rr) {
    const int64_t row = r + rr;
    K::template Tile<F, 1, B, kBlock>(a.codes + row * a.pc, a.pc, x,
                                      kBlock ? a.w.scales + row * a.nblk : nullptr, a.nblk, out);
    emit(row, 1);
  }
}

template <class K, Fp8Format F, bool kBlock>
void DriveRowsT(const PaddedGemv& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r += kRowGroup) {
    const int64_t nr = std::min<int64_t>(kRowGroup, r1 - r);
    for (int64_t b0 = 0; b0 < a.batch; b0 += kMaxBatchTile) {
      switch (std::min<int64_t>(kMaxBatchTile, a.batch - b0)) {
        case 1: RunTileGroup<K, F, 1, kBlock>(a, r, nr, b0); break;
        case 2: RunTileGroup<K, F, 2, kBlock>(a, r, nr, b0); break;
        case 3: RunTileGroup<K, F, 3, kBlock>(a, r, nr, b0); break;
        case 4: RunTileGroup<K, F, 4, kBlock>(a, r, nr, b0); break;
        case 5: RunTileGroup<K, F, 5, kBlock>(a, r, nr, b0); break;
        case 6: RunTileGroup<K, F, 6, kBlock>(a, r, nr, b0); break;
        case 7: RunTileGroup<K, F, 7, kBlock>(a, r, nr, b0); break;
        default: RunTileGroup<K, F, 8, kBlock>(a, r, nr, b0); break;
      }
    }
  }
}

// a.w's format and scale mode were checked by GemvF32Isa (NONE, TENSOR, ROW
// or BLOCK128 here); a format outside the enum runs nothing.
template <class K>
void DriveRows(const PaddedGemv& a, int64_t r0, int64_t r1) {
  const bool block = a.w.scale_mode == ScaleMode::kBlock128;
  switch (a.w.format) {
    case Fp8Format::kE4M3:
      block ? DriveRowsT<K, Fp8Format::kE4M3, true>(a, r0, r1)
            : DriveRowsT<K, Fp8Format::kE4M3, false>(a, r0, r1);
      return;
    case Fp8Format::kE5M2:
      block ? DriveRowsT<K, Fp8Format::kE5M2, true>(a, r0, r1)
            : DriveRowsT<K, Fp8Format::kE5M2, false>(a, r0, r1);
      return;
  }
}

// Defined in the ISA translation units (nullptr when not built).
void GemvRowsScalar(const PaddedGemv& a, int64_t r0, int64_t r1);
void GemvRowsAvx2(const PaddedGemv& a, int64_t r0, int64_t r1);
void GemvRowsAvx512(const PaddedGemv& a, int64_t r0, int64_t r1);
void GemvRowsAvx512Vbmi(const PaddedGemv& a, int64_t r0, int64_t r1);

}  // namespace plume::ref::detail
