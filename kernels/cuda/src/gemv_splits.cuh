// The split-K finish both GEMV kernel families share: when a row tile's
// columns are split across blocks, each block writes its partial sums as
// [split][row][ld] floats, and the last block of the tile to finish adds
// them up (in split order, so the result does not depend on which block
// came last) and hands each row's sums to the kernel's epilogue.
//
// The sums are read as float4 (4 adjacent columns of one row), kRows rows
// per thread and four splits per step, all loads issued before the adds: the
// reads come from L2, and issued one after another their latency, not their
// bytes, set the time (with 32 rows x 64 columns per thread that was 30 µs
// per launch; ncu durations in bench/RESULTS-gpu.md).
#pragma once

#include <cstdint>

namespace plume::cuda {
namespace {

// Calls emit(row, col, float4 sums of columns col..col+3) for every row
// row0 .. row0 + tile_rows - 1 below `rows` and every group of four of the
// first `ncols` columns. `ld` is a multiple of 4 and `partial` 16-byte
// aligned. Consecutive threads take consecutive rows, so the epilogue's
// stores (column-major y) coalesce.
template <int kBlockThreads, int kRows, typename Emit>
__device__ __forceinline__ void SumSplits(const float* partial, int64_t rows_pad, int ld,
                                          int64_t row0, int tile_rows, int64_t rows, int ncols,
                                          int splits, Emit&& emit) {
  const int groups = (ncols + 3) / 4;
  const int items = tile_rows * groups;
  const int64_t split_stride = rows_pad * ld;
  for (int i0 = threadIdx.x; i0 < items; i0 += kRows * kBlockThreads) {
    int64_t row[kRows];
    int col[kRows];
    bool live[kRows];
    const float* src[kRows];
    float4 acc[kRows];
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      const int i = i0 + u * kBlockThreads;
      row[u] = row0 + i % tile_rows;
      col[u] = 4 * (i / tile_rows);
      live[u] = i < items && row[u] < rows;
      src[u] = partial + row[u] * ld + col[u];
      acc[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    for (int s = 0; s < splits; s += 4) {
      float4 v[kRows][4];
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          v[u][q] = live[u] && s + q < splits
                        ? __ldcg(reinterpret_cast<const float4*>(src[u] + (s + q) * split_stride))
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
      }
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          acc[u].x += v[u][q].x;
          acc[u].y += v[u][q].y;
          acc[u].z += v[u][q].z;
          acc[u].w += v[u][q].w;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      if (live[u]) emit(row[u], col[u], acc[u]);
    }
  }
}

}  // namespace
}  // namespace plume::cuda
