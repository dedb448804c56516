// What the two flash prefill kernels share (attention_prefill.cu, mma.sync,
// sm_80+; attention_prefill_wgmma.cu, wgmma, sm_90a): their arguments, the
// query-row indexing, scales, the NaN-safe FP8 decode of a word and the
// output stores. Included by those .cu files only (internal linkage).
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "attention_device.cuh"
#include "plume/cuda/attention.h"

namespace plume::cuda {
namespace {

struct FaArgs {
  const uint8_t* const* pages;
  const float* gk;
  const float* gv;
  KvScaleMode mode;
  Dec dec;
  int kv_heads;
  int head_dim;
  int row_bytes;
  int64_t head_tile;
  int64_t codes_bytes;
  int64_t seq;
  int num_pages;
  float decode_factor;  // 2^8 for the software E4M3 decode, else 1
  float scale_log2;     // softmax scale * log2(e)
  const void* q;
  DType q_dtype;
  int heads;
  int q_len;
  int group;
  int rows;       // batch * group * q_len: query rows of one kv head
  int row_tiles;  // tiles of kRows of them
  bool causal;
  void* out;
  DType out_dtype;
};

// Query row lr of kv head kvh (batch-major, then head of the GQA group, then
// position): its row in [batch][heads][q_len].
__device__ __forceinline__ int64_t FaRow(const FaArgs& a, int kvh, int lr) {
  const int per_batch = a.group * a.q_len;
  const int h = kvh * a.group + lr % per_batch / a.q_len;
  return (static_cast<int64_t>(lr / per_batch) * a.heads + h) * a.q_len + lr % a.q_len;
}

__device__ __forceinline__ float FaQ(const FaArgs& a, int64_t i) {
  if (a.q_dtype == DType::kF32) return static_cast<const float*>(a.q)[i];
  if (a.q_dtype == DType::kF16) return __half2float(static_cast<const __half*>(a.q)[i]);
  return Bf16BitsToFloat(static_cast<const uint16_t*>(a.q)[i]);
}

// The page's K (v false) or V scale for kv head kvh, times the decode factor.
__device__ __forceinline__ float FaScale(const FaArgs& a, const uint8_t* page, int kvh, bool v) {
  const float* g = v ? a.gv : a.gk;
  float s = 1.0f;
  if (a.mode == KvScaleMode::kTensor) {
    s = g[0];
  } else if (a.mode == KvScaleMode::kHead) {
    s = g[kvh];
  } else if (a.mode == KvScaleMode::kTokenBlock) {
    s = reinterpret_cast<const float*>(page + 2 * a.codes_bytes)[v ? a.kv_heads + kvh : kvh];
  }
  return s * a.decode_factor;
}

// The tokens query rows [lr0, lr0 + n) of a kv head see under the causal
// mask: all of [0, vis_min], none past vis_max (both seq - 1 without it).
__device__ __forceinline__ void FaVisible(const FaArgs& a, int lr0, int n, int64_t& vis_min,
                                          int64_t& vis_max) {
  vis_max = vis_min = a.seq - 1;
  if (a.causal) {
    const int first = lr0 % a.q_len;
    const bool wraps = first + n > a.q_len;
    vis_max = wraps ? a.seq - 1 : a.seq - a.q_len + first + n - 1;
    vis_min = a.seq - a.q_len + (wraps ? 0 : first);
  }
}

// The last token query row lr of a kv head sees.
__device__ __forceinline__ int64_t FaLastVisible(const FaArgs& a, int lr) {
  return a.causal ? a.seq - a.q_len + lr % a.q_len : a.seq - 1;
}

// Codes to FP16 (NaN codes stay NaN on the software E4M3 path too).
template <Dec kDec>
__device__ __forceinline__ void DecodeNanSafe(uint32_t w, uint32_t (&h)[2]) {
  DecodeWord<kDec>(w, h[0], h[1]);
  if constexpr (kDec == Dec::kE4M3Soft) {
    if (HasE4M3Nan(w)) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        if (((w >> (8 * b)) & 0x7fu) == 0x7fu) {
          const int sh = 16 * (b & 1);
          h[b >> 1] = (h[b >> 1] & ~(0xffffu << sh)) | (0x7e00u << sh);
        }
      }
    }
  }
}

constexpr float kFaNegInf = -INFINITY;

// (lo, hi) rounded to an FP16 pair, lo in the low half.
__device__ __forceinline__ uint32_t Half2Bits(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// One row's online-softmax rebase on a page whose score maximum is mx (log2
// units): the new running maximum m, the base the page's scores are
// exponentiated against (0 for a row with nothing visible yet, whose scores
// are all -inf) and the factor al its old output and sum are scaled by.
__device__ __forceinline__ void FaRebase(float& m, float mx, float& base, float& al) {
  const float mn = fmaxf(m, mx);
  base = mn == kFaNegInf ? 0.0f : mn;
  al = exp2f(m - base);
  m = mn;
}

// The factor that takes the output from the V scale it is kept in (vref) to
// this page's (vscale); vref follows the last nonzero scale.
__device__ __forceinline__ float FaVRatio(float vscale, float& vref) {
  float ratio = 1.0f;
  if (vscale != 0.0f) {
    if (vref != 0.0f) ratio = vref / vscale;
    vref = vscale;
  }
  return ratio;
}

// Output elements i and i + 1 (i even, so the pair is aligned).
__device__ __forceinline__ void StoreTwo(void* y, DType t, int64_t i, float v0, float v1) {
  if (t == DType::kF32) {
    *reinterpret_cast<float2*>(static_cast<float*>(y) + i) = make_float2(v0, v1);
  } else if (t == DType::kF16) {
    *reinterpret_cast<__half2*>(static_cast<__half*>(y) + i) = __floats2half2_rn(v0, v1);
  } else {
    *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(y) + i) =
        static_cast<uint32_t>(FloatToBf16Bits(v0)) | static_cast<uint32_t>(FloatToBf16Bits(v1)) << 16;
  }
}

// The arguments of a valid problem, tiles of rows_per_block query rows.
inline FaArgs MakeFaArgs(const AttentionProblem& p, int rows_per_block) {
  const KvLayout& l = p.layout;
  FaArgs a{};
  a.pages = p.pages;
  a.gk = p.k_scales;
  a.gv = p.v_scales;
  a.mode = l.scale_mode;
  const bool native = p.path == DecodePath::kNative;
  a.dec = p.format == Fp8Format::kE4M3 ? (native ? Dec::kE4M3Native : Dec::kE4M3Soft)
                                       : (native ? Dec::kE5M2Native : Dec::kE5M2Soft);
  a.kv_heads = static_cast<int>(l.kv_heads);
  a.head_dim = static_cast<int>(l.head_dim);
  a.row_bytes = static_cast<int>(l.row_bytes());
  a.head_tile = l.head_tile_bytes();
  a.codes_bytes = l.codes_bytes();
  a.seq = p.seq;
  a.num_pages = static_cast<int>(KvLayout::pages_for(p.seq));
  a.decode_factor = a.dec == Dec::kE4M3Soft ? 256.0f : 1.0f;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.q = p.q;
  a.q_dtype = p.q_dtype;
  a.heads = static_cast<int>(p.heads);
  a.q_len = static_cast<int>(p.q_len);
  a.group = static_cast<int>(p.heads / l.kv_heads);
  a.rows = static_cast<int>(p.batch) * a.group * a.q_len;
  a.row_tiles = (a.rows + rows_per_block - 1) / rows_per_block;
  a.causal = p.causal;
  a.out = p.out;
  a.out_dtype = p.out_dtype;
  return a;
}

}  // namespace
}  // namespace plume::cuda
