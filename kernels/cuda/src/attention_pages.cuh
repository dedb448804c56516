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
// serve padded head dims 64, 128 and 256 with four warps and stream pages
// through a ring of kStages (K tile, V tile) pages of FP8 codes, rows
// swizzled so that the fragment reads below are free of bank conflicts.
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
// Ring depth (pages) per padded head dim; the macros are for measurement
// builds (scripts/build-kernel-variant.sh), which must build the dispatch
// with the same values.
#ifndef PLUME_MMA_STAGES_64
#define PLUME_MMA_STAGES_64 3
#endif
#ifndef PLUME_MMA_STAGES_128
#define PLUME_MMA_STAGES_128 3
#endif
#ifndef PLUME_MMA_STAGES_256
#define PLUME_MMA_STAGES_256 3
#endif

// Whether the tensor-core decodes serve padded head dim kd.
constexpr bool MmaDim(int kd) { return kd == 64 || kd == 128 || kd == 256; }

// The page geometry at padded head dim kD (a row is kD bytes of codes).
//  - K reads (both kernels): lane (g, t) reads 16-byte chunks t + 4h
//    (h < kD / 64) of token rows r and r + 1 (in one 8-lane phase: g even
//    and odd): chunk c of row r sits at c ^ 4 (r & 1) for kD >= 128, so the
//    two rows take different halves of the banks; at kD = 64 a row is half
//    the banks and needs no swizzle.
//  - V reads (P.V): lane (g, t) reads kVWords words of token rows 2t,
//    2t + 1, 2t + 8, 2t + 9, word q holding dims WordDim(q, g) .. + 3. At
//    kD >= 128 that is 16-byte chunk g (+ 8 per 128 bytes), chunk c of row r
//    at c ^ 2 ((r / 2) % 4);
//    at kD = 64 it is 8 bytes at 8g, and a row r sits at row r ^ ((r / 2) % 2)
//    with chunk c at c ^ 2 ((r / 4) % 2), so rows 2t (t = 0..3) fall in
//    different halves of the banks and different chunks.
template <int kD>
struct MmaGeom {
  static_assert(MmaDim(kD));
  static constexpr int kChunks = kD / 16;       // 16-byte chunks of a row
  static constexpr int kKSteps = kD / 16;       // k-steps of Q.K (a word of a lane's K row each)
  static constexpr int kVWords = kD / 32;       // words of a V row a lane reads for P.V
  static constexpr int kOTiles = kD / 8;        // O's n-tiles (DecodeMmaKernel)
  static constexpr int kOTTiles = kD / 16;      // O^T's m-tiles (DecodeFewKernel)
  static constexpr int kStages =
      kD == 64 ? PLUME_MMA_STAGES_64 : kD == 128 ? PLUME_MMA_STAGES_128 : PLUME_MMA_STAGES_256;
  static_assert(kStages >= 2);
  static constexpr int kTile = kPage * kD;      // bytes of a K or V tile
  static constexpr int kRing = kStages * 2 * kTile;  // the code ring, bytes

  __device__ static __forceinline__ int KChunk(int r, int c) {
    if constexpr (kD == 64) return r * kD + (c << 4);
    return r * kD + ((c ^ ((r & 1) << 2)) << 4);
  }
  __device__ static __forceinline__ int VChunk(int r, int c) {
    if constexpr (kD == 64) return (r ^ ((r >> 1) & 1)) * kD + ((c ^ (((r >> 2) & 1) << 1)) << 4);
    return r * kD + ((c ^ (((r >> 1) & 3) << 1)) << 4);
  }
  // The byte of a V row where word q (of kVWords) of lane group g starts,
  // before the swizzle; the dims it holds are WordDim(q, g) + 0..3.
  __device__ static __forceinline__ int WordDim(int q, int g) {
    return 128 * (q >> 2) + g * (kD >= 128 ? 16 : 8) + 4 * (q & 3);
  }
  // Words 4h .. 4h + 3 of lane group g's V row r of tile vt (all kVPart of
  // them at kD = 64).
  static constexpr int kVPart = kD >= 128 ? 4 : 2;  // words a V read gives
  static constexpr int kVParts = kVWords / kVPart;
  __device__ static __forceinline__ void LoadVPart(const uint8_t* vt, int r, int g, int h,
                                                   uint32_t (&w)[kVPart]) {
    if constexpr (kD == 64) {
      const uint2 x = *reinterpret_cast<const uint2*>(vt + VChunk(r, g >> 1) + 8 * (g & 1));
      w[0] = x.x, w[1] = x.y;
    } else {
      const uint4 x = *reinterpret_cast<const uint4*>(vt + VChunk(r, g + 8 * h));
      w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
    }
  }
  // A lane's K words 4h .. 4h + 3 of row r (k-step 4h + j is word j of chunk
  // t + 4h, codes 64h + 16t + 4j .. + 3).
  __device__ static __forceinline__ void LoadKPart(const uint8_t* kt, int r, int t, int h,
                                                   uint32_t (&w)[4]) {
    const uint4 x = *reinterpret_cast<const uint4*>(kt + KChunk(r, t + 4 * h));
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  }
};

// Page `page` of K/V codes of kv head kvh into ring stage st (K tile, then
// V tile, rows swizzled): 16 bytes per thread and step, chunks past row_bytes
// zero. Every thread's chunk column is tid % kChunks in every step.
template <int kD>
__device__ __forceinline__ void MmaLoadPage(const Params& p, uint8_t* st, const uint8_t* page,
                                            int kvh, int tid) {
  using G = MmaGeom<kD>;
  constexpr int kChunks = G::kChunks;
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
    CpAsync16(st + G::KChunk(r, c), ksrc + off, in);
    CpAsync16(st + G::kTile + G::VChunk(r, c), vsrc + off, in);
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
