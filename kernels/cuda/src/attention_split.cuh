// The decode splits' workspace (Params::ws_ml, ws_acc): each decode block
// writes its rows' unnormalized output, running max (natural-log units) and
// sum for its split of the pages. The last block of a unit to finish merges
// its splits with log-sum-exp into the output (FinishSplit: a decode is one
// launch); where the dispatch gives no counters, CombineKernel
// (attention_combine.cuh) does, as a second launch.
#pragma once

#include <cstdint>

#include "attention_common.cuh"

namespace plume::cuda::attn {

constexpr int kCombineThreads = 128;
constexpr int kMaxSplits = 1024;  // splits of a unit at most
// The counters of the fused combine lead every attention workspace, zeroed
// once when it is allocated and left zero by every launch; a decode of more
// units than they count runs the combine kernel instead.
constexpr int64_t kCounterBytes = 64 * 1024;
constexpr int64_t kFusedUnits = kCounterBytes / sizeof(unsigned);

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

// The merge of one row's splits, by one warp for 32 columns: the lane's
// column d of out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), summed
// over the splits in order. `ws_row` is the row's workspace row in split 0
// (split s is tile_rows rows further each). The lanes find M; then, in chunks
// of 32 splits, each lane weighs one split and the warp shares the weights by
// shuffles while every lane sums its column. Warp-collective; the value is
// meaningful where d < head_dim.
__device__ __forceinline__ float MergeSplitsColumn(const Params& p, int64_t ws_row, int d) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const bool col = d < p.head_dim;
  const int64_t ml_step = int64_t{p.tile_rows} * 2;
  const int64_t acc_step = int64_t{p.tile_rows} * p.head_dim;
  const float* ml = p.ws_ml + ws_row * 2;  // split s at ml[s * ml_step]
  const float* acc = p.ws_acc + ws_row * p.head_dim + (col ? d : 0);
  float mx = kNegInf;
  for (int s = lane; s < p.splits; s += 32) mx = fmaxf(mx, __ldcg(ml + s * ml_step));
  mx = WarpMax(mx);
  float o = 0.0f, l = 0.0f;
  for (int s0 = 0; s0 < p.splits; s0 += 32) {
    float e = 0.0f;
    if (s0 + lane < p.splits) {
      const float ms = __ldcg(ml + (s0 + lane) * ml_step);
      e = ms == kNegInf ? 0.0f : expf(ms - mx);
      if (e != 0.0f) l += __ldcg(ml + (s0 + lane) * ml_step + 1) * e;
    }
    // The chunk's 32 loads at once (latency, not bandwidth, bounds the
    // merge); splits past the last weigh 0.
    float a[32];
#pragma unroll
    for (int k = 0; k < 32; ++k) a[k] = col && s0 + k < p.splits ? __ldcg(acc + (s0 + k) * acc_step) : 0.0f;
#pragma unroll
    for (int k = 0; k < 32; ++k) {
      const float ek = __shfl_sync(0xffffffffu, e, k);
      o += ek != 0.0f ? a[k] * ek : 0.0f;
    }
  }
  return o * (1.0f / WarpSum(l));
}

// Every decode block's last step, after its partial results are stored. It
// counts itself in its unit's counter; the block that completes the count
// (the unit's splits all stored) sets the counter back to zero and merges
// them, each warp taking 32 columns of a row at a time (MergeSplitsColumn).
// All the block's threads must call it (it has barriers); a no-op without
// counters.
__device__ __forceinline__ void FinishSplit(const Params& p, int unit) {
  if (p.counters == nullptr) return;
  PLUME_SHARED int is_last;
  __threadfence();  // this thread's stores are visible before the block is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned arrived = atomicAdd(&p.counters[unit], 1u) + 1u;
    is_last = arrived == static_cast<unsigned>(p.splits);
    if (is_last) atomicExch(&p.counters[unit], 0u);  // ready for the next launch
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // the other splits' stores, read below through L2 (__ldcg)

  const int tile = unit % p.row_tiles, kvh = unit / p.row_tiles;
  const int lr0 = tile * p.tile_rows;
  const int nrows = min(p.tile_rows, p.rows - lr0);
  const int warps = static_cast<int>(blockDim.x >> 5);
  const int chunks = (p.head_dim + 31) / 32;
  const int64_t row0 = SplitSlot(p, unit, 0) * p.tile_rows;  // workspace row of split 0, row 0
  for (int item = static_cast<int>(threadIdx.x >> 5); item < nrows * chunks; item += warps) {
    const int r = item / chunks;
    const int d = item % chunks * 32 + static_cast<int>(threadIdx.x & 31);
    const float v = MergeSplitsColumn(p, row0 + r, d);
    if (d < p.head_dim) Store(p.out, p.out_dtype, QueryIndex(p, kvh, lr0 + r) * p.head_dim + d, v);
  }
}

}  // namespace plume::cuda::attn
