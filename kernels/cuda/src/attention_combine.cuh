// The combine kernel: merges the decode splits' partial results
// (attention_split.cuh) into the output, as a second launch. A kernel, not a
// template: included by attention_decode.cu alone (and the CPU emulation).
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// One block per query row, for decodes of more units than the fused merge
// has counters (or with AttentionProblem::one_launch off): its warps merge
// the row's splits 32 columns at a time, as the last decode block of a unit
// does (MergeSplitsColumn).
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const Params p) {
  const int64_t row = blockIdx.x;  // (b * heads + h) * q_len + i
  const int i = static_cast<int>(row % p.q_len);
  const int h = static_cast<int>(row / p.q_len % p.heads);
  const int b = static_cast<int>(row / p.q_len / p.heads);
  const int kvh = h / p.group;
  const int lr = (b * p.group + h % p.group) * p.q_len + i;
  const int64_t unit = static_cast<int64_t>(kvh) * p.row_tiles + lr / p.tile_rows;
  const int64_t ws_row = SplitSlot(p, static_cast<int>(unit), 0) * p.tile_rows + lr % p.tile_rows;
  for (int d0 = static_cast<int>(threadIdx.x >> 5) * 32; d0 < p.head_dim; d0 += kCombineThreads) {
    const int d = d0 + static_cast<int>(threadIdx.x & 31);
    const float v = MergeSplitsColumn(p, ws_row, d);
    if (d < p.head_dim) Store(p.out, p.out_dtype, row * p.head_dim + d, v);
  }
}

}  // namespace plume::cuda::attn
