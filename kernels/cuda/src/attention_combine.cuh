// The combine kernel: merges the decode splits' partial results
// (attention_split.cuh) into the output. A kernel, not a template: included
// by attention_decode.cu alone (and the CPU emulation).
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// One block per query row: merges the splits' partial results,
// out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). The splits' maxima
// and weights are read and computed by all threads at once (a thread per
// split) and kept in shared memory; then each thread sums its columns over
// the splits with many loads in flight (latency, not bandwidth, bounds this
// kernel).
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const Params p) {
  PLUME_SHARED float w_s[kMaxSplits];
  PLUME_SHARED float red[kCombineThreads / 32];
  const int64_t row = blockIdx.x;  // (b * heads + h) * q_len + i
  const int i = static_cast<int>(row % p.q_len);
  const int h = static_cast<int>(row / p.q_len % p.heads);
  const int b = static_cast<int>(row / p.q_len / p.heads);
  const int kvh = h / p.group;
  const int lr = (b * p.group + h % p.group) * p.q_len + i;
  const int64_t unit = static_cast<int64_t>(kvh) * p.row_tiles + lr / p.tile_rows;
  const int r = lr % p.tile_rows;
  const int64_t base = unit * p.splits;
  const int tid = threadIdx.x;
  const float* ml = p.ws_ml + (base * p.tile_rows + r) * 2;  // split s at ml[s * tile_rows * 2]
  const int64_t ml_step = int64_t{p.tile_rows} * 2;

  float mx = kNegInf;
  for (int s = tid; s < p.splits; s += kCombineThreads) mx = fmaxf(mx, ml[s * ml_step]);
  mx = WarpMax(mx);
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  mx = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();  // red is reused below
  float l = 0.0f;
  for (int s = tid; s < p.splits; s += kCombineThreads) {
    const float ms = ml[s * ml_step];
    const float e = ms == kNegInf ? 0.0f : expf(ms - mx);
    w_s[s] = e;
    if (e != 0.0f) l += ml[s * ml_step + 1] * e;
  }
  l = WarpSum(l);
  if ((tid & 31) == 0) red[tid >> 5] = l;
  __syncthreads();
  l = 0.0f;
  for (int w = 0; w < kCombineThreads / 32; ++w) l += red[w];
  const float inv = 1.0f / l;
  const float* acc = p.ws_acc + (base * p.tile_rows + r) * p.head_dim;
  const int64_t acc_step = int64_t{p.tile_rows} * p.head_dim;
  for (int d = tid; d < p.head_dim; d += kCombineThreads) {
    float o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < p.splits; ++s) {
      const float a = acc[s * acc_step + d], e = w_s[s];  // loads independent of e
      o += e != 0.0f ? a * e : 0.0f;
    }
    Store(p.out, p.out_dtype, row * p.head_dim + d, o * inv);
  }
}

}  // namespace plume::cuda::attn
