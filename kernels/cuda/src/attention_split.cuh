// The decode splits' workspace (Params::ws_ml, ws_acc): each decode block
// writes its rows' unnormalized output, running max (natural-log units) and
// sum for its split of the pages; CombineKernel (attention_combine.cuh)
// merges the splits with log-sum-exp into the output.
#pragma once

#include <cstdint>

#include "attention_common.cuh"

namespace plume::cuda::attn {

constexpr int kCombineThreads = 128;
constexpr int kMaxSplits = 1024;  // splits of a unit at most (the combine's shared memory)

// The workspace slot of a unit's split. Row r of its tile (tile_rows rows)
// is workspace row slot * tile_rows + r.
__device__ __forceinline__ int64_t SplitSlot(const Params& p, int unit, int split) {
  return static_cast<int64_t>(unit) * p.splits + split;
}

// Column d of row r's unnormalized output.
__device__ __forceinline__ void StoreSplitAcc(const Params& p, int64_t slot, int tile_rows, int r,
                                              int d, float v) {
  p.ws_acc[(slot * tile_rows + r) * p.head_dim + d] = v;
}

// Row r's running max (natural-log units) and sum.
__device__ __forceinline__ void StoreSplitMl(const Params& p, int64_t slot, int tile_rows, int r,
                                             float m, float l) {
  p.ws_ml[(slot * tile_rows + r) * 2] = m;
  p.ws_ml[(slot * tile_rows + r) * 2 + 1] = l;
}

// The tensor-core decodes' epilogue, for column d of one row: the warps
// w0 .. w0 + nw - 1 left their (m, l, O) of that row in shared memory (m in
// log2 units; mlb[(w * kWarpRows + wr) * 2 + 0 / 1], O at row
// w * kWarpRows + wr of ob, kLd floats a row, column d at d + d / 32 when
// kSkew). Merges them in a fixed order and writes row r of the split's
// tile (tile_rows rows).
template <int kWarpRows, int kLd, bool kSkew>
__device__ __forceinline__ void MergeWarpsToSplit(const Params& p, const float* ob, const float* mlb,
                                                  int w0, int nw, int wr, int d, int64_t slot,
                                                  int tile_rows, int r) {
  float mx = kNegInf;
  for (int w = w0; w < w0 + nw; ++w) mx = fmaxf(mx, mlb[(w * kWarpRows + wr) * 2]);
  float acc = 0.0f, l = 0.0f;
  for (int w = w0; w < w0 + nw; ++w) {
    const float mw = mlb[(w * kWarpRows + wr) * 2];
    if (mw == kNegInf) continue;
    const float e = exp2f(mw - mx);
    acc += ob[(w * kWarpRows + wr) * kLd + (kSkew ? d + d / 32 : d)] * e;
    l += mlb[(w * kWarpRows + wr) * 2 + 1] * e;
  }
  if (d < p.head_dim) StoreSplitAcc(p, slot, tile_rows, r, d, acc);
  if (d == 0) StoreSplitMl(p, slot, tile_rows, r, mx * kLn2, l);  // the combine's max is in natural units
}

}  // namespace plume::cuda::attn
