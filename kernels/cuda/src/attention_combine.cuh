// The decode's split combine, fused into the decode kernels: every block
// writes its split's partial results (attention_split.cuh), then counts
// itself done on its unit's counter; the block that finishes a unit last
// merges the unit's splits with log-sum-exp into the output. A decode is one
// launch (no combine kernel, and no gap between two launches on the stream).
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// Merges the splits of one unit (kv head, tile of query rows) into the
// output: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). A warp per
// query row; its lanes take the splits for the maxima and sums, then the
// columns, summing each over the splits in order with many loads in flight.
// The partials were written by other blocks during this launch: they are
// read through L2 (__ldcg), never from this SM's L1.
template <int kThreads>
__device__ __forceinline__ void CombineUnit(const Params& p, int unit) {
  const int kvh = unit / p.row_tiles, tile = unit % p.row_tiles;
  const int nrows = min(p.tile_rows, p.rows - tile * p.tile_rows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t base = static_cast<int64_t>(unit) * p.splits;  // split 0's slot
  const int64_t ml_step = int64_t{p.tile_rows} * 2;
  const int64_t acc_step = int64_t{p.tile_rows} * p.head_dim;
  for (int r = warp; r < nrows; r += kThreads / 32) {
    const float* ml = p.ws_ml + (base * p.tile_rows + r) * 2;  // split s at ml[s * ml_step]
    float mx = kNegInf;
    for (int s = lane; s < p.splits; s += 32) mx = fmaxf(mx, __ldcg(ml + s * ml_step));
    mx = WarpMax(mx);
    float l = 0.0f;
    for (int s = lane; s < p.splits; s += 32) {
      const float ms = __ldcg(ml + s * ml_step);
      if (ms != kNegInf) l += __ldcg(ml + s * ml_step + 1) * expf(ms - mx);
    }
    l = WarpSum(l);
    const float inv = 1.0f / l;
    const float* acc = p.ws_acc + (base * p.tile_rows + r) * p.head_dim;
    const int64_t out_row = QueryIndex(p, kvh, tile * p.tile_rows + r);
    for (int d = lane; d < p.head_dim; d += 32) {
      float o = 0.0f;
#pragma unroll 8
      for (int s = 0; s < p.splits; ++s) {
        const float ms = __ldcg(ml + s * ml_step);  // one address for the warp
        const float a = __ldcg(acc + s * acc_step + d);
        const float e = ms == kNegInf ? 0.0f : expf(ms - mx);
        o += e != 0.0f ? a * e : 0.0f;
      }
      Store(p.out, p.out_dtype, out_row * p.head_dim + d, o * inv);
    }
  }
}

// The end of every decode block, all threads, after its partial results are
// stored: counts the block done on its unit's counter; the unit's last block
// merges the splits (CombineUnit) and sets the counter back to zero, so the
// workspace is ready for the next launch without clearing. The counters are
// the first kMaxUnitsPerLaunch words of every decode workspace (zeroed once,
// when it is allocated); a problem with more units is launched in parts.
template <int kThreads>
__device__ __forceinline__ void FinishSplit(const Params& p, int unit) {
  PLUME_SHARED unsigned last_s;
  __threadfence();  // this thread's partials, device-wide, before the count
  __syncthreads();
  unsigned* const counter = p.counters + (unit - p.unit0);
  if (threadIdx.x == 0) last_s = atomicAdd(counter, 1u) == static_cast<unsigned>(p.splits - 1);
  __syncthreads();
  if (last_s == 0) return;
  __threadfence();  // the other blocks' partials, counted before ours
  CombineUnit<kThreads>(p, unit);
  if (threadIdx.x == 0) *counter = 0;
}

}  // namespace plume::cuda::attn
