// The combine kernel: merges the decode splits' partial results
// (attention_split.cuh) into the output, as a second launch. Instantiated
// in attention_decode.cu (plain) and attention_combine_sm90.cu (after the
// decode, sm_90a); the CPU emulation includes it too.
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// One block per query row, for decodes of more units than the fused merge
// has counters (or with AttentionProblem::one_launch off): its warps merge
// the row's splits 32 columns at a time, as the last decode block of a unit
// does (MergeSplitsColumn). kAfterDecode: launched as a programmatic
// dependent of the decode (sm_90a, attention_combine_sm90.cu), so its blocks
// may start while the decode's last blocks run; each waits for the whole
// decode grid, and its writes, before it reads a partial.
template <bool kAfterDecode>
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const Params p) {
  if constexpr (kAfterDecode) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  }
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
