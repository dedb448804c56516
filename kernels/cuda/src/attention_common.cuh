// What every attention kernel shares: the parameters they read (Params),
// the query row indexing, query loads, warp reductions, the online-softmax
// step and the FP16 hi + lo split; and, on the host, the head dim a padded
// row runs at, the FP8 decoder and the Params of a problem. Included by the
// attention .cu files and by the CPU emulation (tests/emu), never by code
// outside kernels/cuda/src.
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "plume/cuda/attention.h"
#include "plume/kernels/half.h"
#include "attention_device.cuh"

namespace plume::cuda::attn {

constexpr int kPage = static_cast<int>(kKvPageTokens);  // tokens per page (a K/V tile)

// Everything the kernels read, by value.
struct Params {
  const uint8_t* const* pages;
  const float* gk;         // cache-wide K scales (TENSOR: [0], HEAD: [kv head])
  const float* gv;
  KvScaleMode mode;
  int kv_heads;
  int head_dim;
  int row_bytes;           // padded row (multiple of 16)
  int64_t head_tile;       // bytes of one kv head's rows in a page
  int64_t codes_bytes;     // K codes of a page; V codes follow
  int64_t seq;
  int num_pages;
  float decode_factor;     // 2^8 for the software E4M3 decode, else 1

  const void* q;
  DType q_dtype;
  int heads;
  int q_len;
  int group;               // heads / kv_heads
  int rows;                // batch * group * q_len: the query rows of one kv head
  int row_tiles;           // tiles of tile_rows query rows
  int tile_rows;           // kRows (FP32 decode), <= kMmaRows (tensor-core decode), kPrefillRows
  float scale;
  bool causal;

  void* out;
  DType out_dtype;

  // Decode splits and their partial results.
  int pages_per_split;
  int splits;
  float* ws_ml;            // [unit][split][tile_rows][2]: running max, sum
  float* ws_acc;           // [unit][split][tile_rows][head_dim]: unnormalized output
  // Per unit, its splits that have written their partial results: the block
  // that completes the count merges them (FinishSplit, attention_split.cuh).
  // Null: the combine kernel merges them instead.
  unsigned* counters;
};

// A decode kernel, as the dispatch holds and launches it.
using KernelFn = void (*)(Params);

// Query row `lr` of kv head kvh (rows are batch-major, then head of the GQA
// group, then position in q_len: every batch reads the same cache): its index
// in [batch][heads][q_len].
__device__ __forceinline__ int64_t QueryIndex(const Params& p, int kvh, int lr) {
  const int per_batch = p.group * p.q_len;
  const int b = lr / per_batch;
  const int h = kvh * p.group + lr % per_batch / p.q_len;
  const int i = lr % p.q_len;
  return (static_cast<int64_t>(b) * p.heads + h) * p.q_len + i;
}

// The last token query row `lr` sees.
__device__ __forceinline__ int64_t LastVisible(const Params& p, int lr) {
  return p.causal ? p.seq - p.q_len + lr % p.q_len : p.seq - 1;
}

__device__ __forceinline__ float LoadQ(const void* q, DType t, int64_t i) {
  if (t == DType::kF32) return static_cast<const float*>(q)[i];
  if (t == DType::kF16) return __half2float(static_cast<const __half*>(q)[i]);
  return Bf16BitsToFloat(static_cast<const uint16_t*>(q)[i]);
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr float kNegInf = -INFINITY;

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t PackHalves(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// (a, b) as an FP16 pair hi plus the pair of what it leaves, lo.
__device__ __forceinline__ void SplitHalves(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 f = __half22float2(h);
  memcpy(&hi, &h, sizeof(hi));
  lo = PackHalves(a - f.x, b - f.y);
}
constexpr float kPScale = 1024.0f;  // the tensor-core kernels split P as P * 2^10

// Four consecutive query values of the row at element `base` (-1: none),
// from column d (zeros past head_dim); one vector load where the row is
// aligned.
__device__ __forceinline__ void LoadQ4(const Params& p, int64_t base, int d, float (&v)[4]) {
  v[0] = v[1] = v[2] = v[3] = 0.0f;
  if (base < 0 || d >= p.head_dim) return;
  const bool vec = p.head_dim % 4 == 0 && (reinterpret_cast<uintptr_t>(p.q) & 15) == 0;
  if (vec && p.q_dtype == DType::kF32) {
    const float4 x = *reinterpret_cast<const float4*>(static_cast<const float*>(p.q) + base + d);
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
  } else if (vec) {
    const uint2 x = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.q) + base + d);
    const uint32_t w[2] = {x.x, x.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint16_t h = static_cast<uint16_t>(w[e / 2] >> (16 * (e % 2)));
      v[e] = p.q_dtype == DType::kF16 ? __half2float(__ushort_as_half(h)) : Bf16BitsToFloat(h);
    }
  } else {
    for (int e = 0; e < 4 && d + e < p.head_dim; ++e) v[e] = LoadQ(p.q, p.q_dtype, base + d + e);
  }
}

// One online-softmax step over an m-tile's score fragments (mma C layout:
// s[j][0..1] are row g, s[j][2..3] row g + 8 of the lane's quad), masked
// scores already -inf: updates the running maxima and sums of the two rows,
// turns the scores into unnormalized probabilities and returns in al_a /
// al_b the factors the rows' old outputs must be scaled by. kLog2: the
// scores are in log2 units (exp2f), else natural (expf).
template <int kN, bool kLog2>
__device__ __forceinline__ void OnlineSoftmaxStep(float (&s)[kN][4], float& m_a, float& m_b,
                                                  float& l_a, float& l_b, float& al_a,
                                                  float& al_b) {
  auto ex = [](float x) { return kLog2 ? exp2f(x) : expf(x); };
  float mx_a = kNegInf, mx_b = kNegInf;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mx_a = fmaxf(mx_a, s[j][e]);
      mx_b = fmaxf(mx_b, s[j][2 + e]);
    }
  }
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
  }
  const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
  al_a = m_a == kNegInf ? 0.0f : ex(m_a - mn_a);
  al_b = m_b == kNegInf ? 0.0f : ex(m_b - mn_b);
  m_a = mn_a;
  m_b = mn_b;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[j][e] = s[j][e] == kNegInf ? 0.0f : ex(s[j][e] - mn_a);
      s[j][2 + e] = s[j][2 + e] == kNegInf ? 0.0f : ex(s[j][2 + e] - mn_b);
      sum_a += s[j][e];
      sum_b += s[j][2 + e];
    }
  }
  l_a = l_a * al_a + sum_a;
  l_b = l_b * al_b + sum_b;
}

// ------------------------------------------------------------------ host

// Calls pick(std::integral_constant<Dec, d>{}) for decoder dec and returns
// what it returns; R{} for a value that is no decoder (the callers' kernel
// tables then report an unknown value, never pick a kernel).
template <typename R, typename F>
R WithDec(Dec dec, F&& pick) {
  switch (dec) {
    case Dec::kE4M3Soft: return pick(std::integral_constant<Dec, Dec::kE4M3Soft>{});
    case Dec::kE4M3Native: return pick(std::integral_constant<Dec, Dec::kE4M3Native>{});
    case Dec::kE5M2Soft: return pick(std::integral_constant<Dec, Dec::kE5M2Soft>{});
    case Dec::kE5M2Native: return pick(std::integral_constant<Dec, Dec::kE5M2Native>{});
  }
  return R{};
}

// The kernel head dim (64 ... 1024) that holds a padded row.
inline int KernelDim(int64_t row_bytes) {
  for (int kd : {64, 128, 256, 512, 1024}) {
    if (row_bytes <= kd) return kd;
  }
  return 0;
}

inline Dec PickDec(Fp8Format format, DecodePath path) {
  const bool native = path == DecodePath::kNative;
  if (format == Fp8Format::kE4M3) return native ? Dec::kE4M3Native : Dec::kE4M3Soft;
  return native ? Dec::kE5M2Native : Dec::kE5M2Soft;
}

// The kernels' parameters for a problem; the decode split plan and its
// workspace (unused by the prefill).
inline Params MakeParams(const AttentionProblem& p, Dec dec, int tile_rows, int row_tiles,
                                int pages_per_split, int splits, void* workspace, int64_t off_acc,
                                unsigned* counters = nullptr) {
  const KvLayout& l = p.layout;
  Params k{};
  k.pages = p.pages;
  k.gk = p.k_scales;
  k.gv = p.v_scales;
  k.mode = l.scale_mode;
  k.kv_heads = static_cast<int>(l.kv_heads);
  k.head_dim = static_cast<int>(l.head_dim);
  k.row_bytes = static_cast<int>(l.row_bytes());
  k.head_tile = l.head_tile_bytes();
  k.codes_bytes = l.codes_bytes();
  k.seq = p.seq;
  k.num_pages = static_cast<int>(KvLayout::pages_for(p.seq));
  k.decode_factor = dec == Dec::kE4M3Soft ? 256.0f : 1.0f;
  k.q = p.q;
  k.q_dtype = p.q_dtype;
  k.heads = static_cast<int>(p.heads);
  k.q_len = static_cast<int>(p.q_len);
  k.group = static_cast<int>(p.heads / l.kv_heads);
  k.rows = static_cast<int>(p.batch) * k.group * k.q_len;
  k.row_tiles = row_tiles;
  k.tile_rows = tile_rows;
  k.scale = p.scale;
  k.causal = p.causal;
  k.out = p.out;
  k.out_dtype = p.out_dtype;
  k.pages_per_split = pages_per_split;
  k.splits = splits;
  k.ws_ml = static_cast<float*>(workspace);
  k.ws_acc = reinterpret_cast<float*>(static_cast<char*>(workspace) + off_acc);
  k.counters = counters;
  return k;
}

}  // namespace plume::cuda::attn
