// Reading the paged K/V cache: a page's K and V scales, the pages a split of
// a tile reads, and the tensor-core decodes' page loader (a page's FP8 codes
// of one kv head into a stage of a cp.async ring in shared memory).
#pragma once

#include <cstdint>

#include "attention_common.cuh"

namespace plume::cuda::attn {

// The K (is_v false) or V scale of a page for kv head kvh, times the decode
// factor.
__device__ __forceinline__ float PageScale(const Params& p, const uint8_t* page, int kvh,
                                           bool is_v) {
  float s = 1.0f;
  const float* g = is_v ? p.gv : p.gk;
  switch (p.mode) {
    case KvScaleMode::kTensor: s = g[0]; break;
    case KvScaleMode::kHead: s = g[kvh]; break;
    case KvScaleMode::kTokenBlock: {
      const float* ps = reinterpret_cast<const float*>(page + 2 * p.codes_bytes);
      s = ps[is_v ? p.kv_heads + kvh : kvh];
      break;
    }
    default: break;
  }
  return s * p.decode_factor;
}

// The last token any of the rows lr0 .. lr0 + nrows - 1 of a tile sees (-1:
// none); pages past it are skipped.
__device__ __forceinline__ int64_t TileLastVisible(const Params& p, int lr0, int nrows) {
  int64_t last = -1;
  for (int r = 0; r < nrows; ++r) last = max(last, LastVisible(p, lr0 + r));
  return last;
}

// One past the last page a split starting at page_begin reads, for a tile
// whose last visible token is `last`.
__device__ __forceinline__ int SplitPageEnd(const Params& p, int page_begin, int64_t last) {
  return min(p.num_pages, static_cast<int>(Min64(page_begin + p.pages_per_split, last / kPage + 1)));
}

// ------------------------------------------------- the tensor-core ring

// The tensor-core decodes (attention_decode_mma.cuh, attention_decode_few.cuh)
// serve padded head dim 128 with four warps and stream pages through a
// kMmaStages-deep ring of (K tile, V tile) FP8 codes, rows swizzled.
constexpr int kMmaDim = 128;  // the padded head dim they serve
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaStages = 3;
constexpr int kMmaTile = kPage * kMmaDim;                   // bytes of a K or V tile
constexpr int kMmaRing = kMmaStages * 2 * kMmaTile;         // the code ring, bytes

// Swizzled 16-byte chunk c of row r of a K / V tile in shared memory.
__device__ __forceinline__ int KChunk(int r, int c) { return r * kMmaDim + ((c ^ ((r & 1) << 2)) << 4); }
__device__ __forceinline__ int VChunk(int r, int c) {
  return r * kMmaDim + ((c ^ (((r >> 1) & 3) << 1)) << 4);
}

// Page `page` of K/V codes of kv head kvh into ring stage st (K tile, then
// V tile, rows swizzled): 16 bytes per thread and step, chunks past row_bytes
// zero. Every thread's chunk column is tid % 8 in every step.
__device__ __forceinline__ void MmaLoadPage(const Params& p, uint8_t* st, const uint8_t* page,
                                            int kvh, int tid) {
  constexpr int kChunks = kMmaDim / 16;
  const int c = tid % kChunks;
  const bool in = c < (p.row_bytes >> 4);
  const uint8_t* const ksrc = page + kvh * p.head_tile + (in ? c * 16 : 0);
  const uint8_t* const vsrc = ksrc + p.codes_bytes;
  const int64_t step = int64_t{kMmaThreads / kChunks} * p.row_bytes;  // bytes between steps
  const int r0 = tid / kChunks;
  const int64_t off0 = in ? int64_t{r0} * p.row_bytes : 0;
#pragma unroll
  for (int k = 0; k < kPage * kChunks / kMmaThreads; ++k) {
    const int r = r0 + k * (kMmaThreads / kChunks);
    const int64_t off = in ? off0 + k * step : 0;
    CpAsync16(st + KChunk(r, c), ksrc + off, in);
    CpAsync16(st + kMmaTile + VChunk(r, c), vsrc + off, in);
  }
}

// The K and V scales of a page (x, y), times the decode factor: `fixed`
// unless TOKEN_BLOCK, whose scales are read from the page.
__device__ __forceinline__ float2 MmaPageScales(const Params& p, const uint8_t* page, int kvh,
                                                float2 fixed) {
  if (p.mode != KvScaleMode::kTokenBlock || page == nullptr) return fixed;
  const float* ps = reinterpret_cast<const float*>(page + 2 * p.codes_bytes);
  return make_float2(__ldg(ps + kvh) * p.decode_factor, __ldg(ps + p.kv_heads + kvh) * p.decode_factor);
}

}  // namespace plume::cuda::attn
