// The Hopper flash prefill's kernels (sm_90a), head dims padding to 64, 128
// and 256 (512: attention_prefill_wide.cuh, built from the pieces here): the
// image pass and the flash kernel, described in attention_prefill_images.cu,
// which launches them. A header so that the CPU
// emulation (tests/emu/prefill_images_emu_test.cc, under tests/emu/emu_cuda.h
// and emu_sm90.h, which stand in for the Hopper instructions) runs this very
// code. Included by those two files only (internal linkage).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention_prefill_common.cuh"
#include "attention_prefill_image.h"
#ifndef PLUME_CUDA_EMULATION
#include "sm90.cuh"
#include "wgmma.cuh"
#endif
#include "sm90_limits.h"
// Timing builds of PrefillImagesKernel, wrong results: 1 skips the softmax
// (P is S as FP16), 2 every MMA and the softmax (the ring and its waits).
#ifndef PLUME_PREFILL_VARIANT
#define PLUME_PREFILL_VARIANT 0
#endif
// 1: the two consumers of PrefillImagesKernel take turns issuing their MMAs
// (PingPong). Not timed on a GPU yet, so off.
#ifndef PLUME_PREFILL_PINGPONG
#define PLUME_PREFILL_PINGPONG 0
#endif
// 1: PrefillImagesKernel and PrefillImagesWideKernel rescale O for a tile
// while the next tile's Q K^T runs, before its P V is issued, not after the
// P V before it (ConsumeTiles' pre_pv). Not timed on a GPU yet, so off.
#ifndef PLUME_PREFILL_EARLY_RESCALE
#define PLUME_PREFILL_EARLY_RESCALE 0
#endif

namespace plume::cuda {
namespace {

using prefill_image::CoreOffset;
using prefill_image::ImageHalves;
using prefill_image::KOffset;
using prefill_image::StepBytes;
using prefill_image::TileTokens;
using prefill_image::VOffset;

constexpr int kPage = static_cast<int>(kKvPageTokens);  // tokens per page
constexpr int kWgRows = 64;                              // query rows per consumer
constexpr int kThreads = 3 * 128;
constexpr int kProducerRegs = 24;
constexpr int kConsumerRegs = 240;
// Consumer warp groups of PrefillImagesKernel (64 query rows each) at head
// dims 64 and 128; 256 keeps two (its output takes 128 registers a thread).
// Three or four take 192 or 256 rows a block, so each tile's images are read
// by fewer blocks, with 160 or 112 registers a consumer thread. Three at
// head dim 128 (64-token tiles) took 0.96-0.99x the time of two on an H100,
// within the call's spread (bench/RESULTS-gpu-attention.md).
#ifndef PLUME_PREFILL_CONSUMERS_D64
#define PLUME_PREFILL_CONSUMERS_D64 2
#endif
#ifndef PLUME_PREFILL_CONSUMERS_D128
#define PLUME_PREFILL_CONSUMERS_D128 2
#endif
constexpr int kImageThreads = 256;
// The workspace a launch group of kv heads may take for its images; more kv
// heads than fit run in several groups. The CUDA backend holds a workspace
// per lane (4 by default) inside --device_reserve_bytes (1 GiB): 64 MiB
// keeps them to a quarter of it. The benchmarked prefills take 16-64 MiB of
// images, one group, except D = 256 at 32 kv heads (128 MiB: two groups).
constexpr int64_t kImageBudget = int64_t{64} << 20;
// The images a band of kv heads may take (see BandPlace); the L2 holds
// 50 MB on an H100 or H200. Of 4, 8, 16 and 32 MiB, 16 took the least time
// on an H100 at head dims 128 and 256 (bench/RESULTS-gpu-attention.md,
// "L2 bands of kv heads"). A timing build may set another size.
#ifndef PLUME_PREFILL_BAND_MIB
#define PLUME_PREFILL_BAND_MIB 16
#endif
constexpr int64_t kBandBudget = int64_t{PLUME_PREFILL_BAND_MIB} << 20;
constexpr uint64_t kDescStrides = (uint64_t{prefill_image::kLeadingBytes >> 4} << 16) |
                                  (uint64_t{prefill_image::kStrideBytes >> 4} << 32);

template <int kD>
struct WgShape {
  static constexpr int kTile = TileTokens(kD);  // tokens per K / V tile
  static constexpr int kImg = ImageHalves(kD);  // halves of a K or V image
  static constexpr int kConsumers =
      kD == 64 ? PLUME_PREFILL_CONSUMERS_D64 : kD == 128 ? PLUME_PREFILL_CONSUMERS_D128 : 2;
  static_assert(kConsumers >= 2 && kConsumers <= 4);
  static constexpr int kRows = kConsumers * kWgRows;          // query rows a block
  static constexpr int kBlockThreads = (kConsumers + 1) * 128;
  // Registers a consumer thread takes (setmaxnreg). A block starts with what
  // its launch bounds give every thread (168, 128 or 96); setmaxnreg.inc only
  // hands out what the producer's setmaxnreg.dec gave back, and waits for
  // more: four consumers asking 120 (not 112) hung on an H100.
  static constexpr int kAlloc = (65536 / kBlockThreads) & ~7;
  static constexpr int kRegs = (kAlloc + (kAlloc - kProducerRegs) / kConsumers) & ~7;  // 240, 160, 112
  static_assert(kConsumers * (kRegs - kAlloc) <= kAlloc - kProducerRegs);
  static constexpr int kQHalves = kRows * kD;
  // As many stages as the shared memory holds beside Q: 6 at head dim 64
  // (0.98-1.01x the time of 3 on an H100: within two calls' spread), 3 at
  // 128, 2 at 256. 1 KB stays for the alignment slack and the barriers.
  static constexpr int kStages = (kSm90BlockSmemBytes - kQHalves * 2 - 1024) / (4 * kImg);
  static_assert(kStages >= 2);
  // Each stage's K image is freed once Q K^T has read it, before P V has read
  // the V image (TileRing): 0.86-0.90x the time at head dim 256 on an H100,
  // no gain at 64 and 128, where the rings are deeper.
  static constexpr bool kSplit = kD >= 256;
  static constexpr size_t kSmem = size_t{kQHalves} * 2 + size_t{kStages} * 2 * kImg * 2 + 128;
  static constexpr int kAcc = kD / 2;     // O accumulators per thread
  static constexpr int kS = kTile / 2;    // S accumulators per thread
  static constexpr int kSteps = kTile / 16;  // k16 steps of P V
};

// Query rows and threads of a flash block at padded head dim kd (the wide
// kernel's at 512), as the launcher and the emulation launch them.
constexpr int FlashRows(int kd) {
  return kd == 64 ? WgShape<64>::kRows : kd == 128 ? WgShape<128>::kRows : kd == 256 ? WgShape<256>::kRows : kWgRows;
}
constexpr int FlashThreads(int kd) { return kd == 512 ? kThreads : (FlashRows(kd) / kWgRows + 1) * 128; }

// Where one launch group's images and scales are: group-local kv head hl,
// tile j. Scales per tile: K of its first and last page, then V of them (the
// same page twice for a tile of one page or less).
struct WgImages {
  __half* img;
  float* scales;
  int tiles;  // tiles per kv head
  int kvh0;   // the group's first kv head
  int heads;  // kv heads in the group
  int band;   // kv heads per L2 band (BandPlace)
};

__device__ __forceinline__ uint64_t Desc(uint32_t addr) {
  return uint64_t{(addr & 0x3FFFFu) >> 4} | kDescStrides;
}

__device__ __forceinline__ float Ex2(float x) {
#ifdef PLUME_CUDA_EMULATION
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// The pages of one tile of kTile tokens from tok0 (two at most: a tile
// holds whole pages or lies in one), read once per block, and where token
// tok of the tile lies in them.
template <int kTile>
struct TilePages {
  const uint8_t* page0;  // two members, not an array: an indexed array lands in local memory
  const uint8_t* page1;
  int64_t tok0;
  int first;  // the tile's first token within its first page

  __device__ __forceinline__ TilePages(const FaArgs& a, int64_t t0) : tok0(t0) {
    const int pg = static_cast<int>(t0 / kPage);
    first = static_cast<int>(t0 % kPage);
    page0 = pg < a.num_pages ? a.pages[pg] : nullptr;
    page1 = first + kTile > kPage && pg + 1 < a.num_pages ? a.pages[pg + 1] : nullptr;
  }
  // Bytes of token tok's row at byte column c of the rows, offset `off` in
  // its page; nullptr past the sequence.
  __device__ __forceinline__ const uint8_t* Row(const FaArgs& a, int tok, int c, int64_t off) const {
    if (tok0 + tok >= a.seq) return nullptr;
    const int local = first + tok;
    const uint8_t* pg = local < kPage ? page0 : page1;
    return pg + off + static_cast<int64_t>(local < kPage ? local : local - kPage) * a.row_bytes + c;
  }
  // One code word (4 codes) at byte column c4, or 0 past the sequence or the row.
  __device__ __forceinline__ uint32_t Word(const FaArgs& a, int tok, int c4, int64_t off) const {
    const uint8_t* r = c4 < a.row_bytes ? Row(a, tok, c4, off) : nullptr;
    return r != nullptr ? *reinterpret_cast<const uint32_t*>(r) : 0u;
  }
  // 16 codes at byte column c16 (a multiple of 16), or 0.
  __device__ __forceinline__ uint4 Quad(const FaArgs& a, int tok, int c16, int64_t off) const {
    const uint8_t* r = c16 < a.row_bytes ? Row(a, tok, c16, off) : nullptr;
    return r != nullptr ? *reinterpret_cast<const uint4*>(r) : make_uint4(0u, 0u, 0u, 0u);
  }
};

// 8 codes (words lo, hi) to 8 FP16 values, one 16-byte store at dst.
template <Dec kDec>
__device__ __forceinline__ void StoreEight(__half* dst, uint32_t lo_w, uint32_t hi_w) {
  uint32_t lo[2], hi[2];
  DecodeNanSafe<kDec>(lo_w, lo);
  DecodeNanSafe<kDec>(hi_w, hi);
  *reinterpret_cast<uint4*>(dst) = make_uint4(lo[0], lo[1], hi[0], hi[1]);
}

// Grid: tiles x group kv heads. The tile's K and V codes to FP16 images.
template <int kD, Dec kDec>
__global__ void __launch_bounds__(kImageThreads) PrefillImageKernel(const FaArgs a, const WgImages w) {
  constexpr int kTile = TileTokens(kD);
  const int j = static_cast<int>(blockIdx.x), hl = static_cast<int>(blockIdx.y);
  const int kvh = w.kvh0 + hl;
  const TilePages<kTile> tp(a, static_cast<int64_t>(j) * kTile);
  __half* kimg = w.img + (static_cast<int64_t>(hl) * w.tiles + j) * 2 * ImageHalves(kD);
  __half* vimg = kimg + ImageHalves(kD);
  const int64_t koff = static_cast<int64_t>(kvh) * a.head_tile;
  const int64_t voff = a.codes_bytes + koff;
  // K: 16 dims of one token a unit (rows are whole 16-byte units:
  // KvLayout::row_bytes), two units' loads issued before their stores.
  constexpr int kUnits = kTile * (kD / 16) / kImageThreads;
  constexpr int kPair = kUnits >= 2 ? 2 : 1;
  static_assert(kUnits % kPair == 0 && kUnits * kImageThreads == kTile * (kD / 16), "unit pairs per thread");
#pragma unroll
  for (int i0 = 0; i0 < kUnits; i0 += kPair) {
    uint4 kq[kPair];
#pragma unroll
    for (int i = 0; i < kPair; ++i) {
      const int u = threadIdx.x + (i0 + i) * kImageThreads;
      kq[i] = tp.Quad(a, u / (kD / 16), 16 * (u % (kD / 16)), koff);
    }
#pragma unroll
    for (int i = 0; i < kPair; ++i) {
      const int u = threadIdx.x + (i0 + i) * kImageThreads;
      const int tok = u / (kD / 16), d0 = 16 * (u % (kD / 16));
      StoreEight<kDec>(kimg + KOffset(kD, tok, d0), kq[i].x, kq[i].y);
      StoreEight<kDec>(kimg + KOffset(kD, tok, d0 + 8), kq[i].z, kq[i].w);
    }
  }
  // V transposed: 4 dims of 8 tokens a unit, transposed by byte permutes.
  for (int u = threadIdx.x; u < (kD / 4) * (kTile / 8); u += kImageThreads) {
    const int c = u % (kD / 4), q = u / (kD / 4);
    uint32_t wd[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) wd[r] = tp.Word(a, 8 * q + r, 4 * c, voff);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t sel = e | ((e + 4) << 4);
      const uint32_t lo = __byte_perm(__byte_perm(wd[0], wd[1], sel), __byte_perm(wd[2], wd[3], sel), 0x5410);
      const uint32_t hi = __byte_perm(__byte_perm(wd[4], wd[5], sel), __byte_perm(wd[6], wd[7], sel), 0x5410);
      StoreEight<kDec>(vimg + VOffset(kD, 4 * c + e, 8 * q), lo, hi);
    }
  }
  if (threadIdx.x < 4) {
    const int64_t t = tp.tok0 + ((threadIdx.x & 1) ? kTile - 1 : 0);  // the tile's first or last token
    const int pg = static_cast<int>(t / kPage);
    const bool v = threadIdx.x >= 2;
    w.scales[(static_cast<int64_t>(hl) * w.tiles + j) * 4 + threadIdx.x] =
        pg < a.num_pages ? FaScale(a, a.pages[pg], kvh, v) : 0.0f;
  }
}

// One consumer's softmax of tile j in place: s becomes P (FP32, V scales
// folded in per page), m and l are updated, fa / fb are the factors its
// rows' outputs take before this tile's P V.
// s[4i + e] is row g, s[4i + 2 + e] row g + 8, token 8i + 2t + e of the tile.
struct SoftmaxState {
  float m_a = kFaNegInf, m_b = kFaNegInf, l_a = 0.0f, l_b = 0.0f;
  float vref = 0.0f;  // the true output is o * vref
};

template <int kN>
__device__ __forceinline__ void TileSoftmax(float (&s)[kN], const float4 sc, float scale_log2,
                                            bool mask, int64_t t0, int t, int64_t vis_a, int64_t vis_b,
                                            SoftmaxState& st, float& fa, float& fb) {
  const float k0 = sc.x * scale_log2, k1 = sc.y * scale_log2;
  float mx_a = kFaNegInf, mx_b = kFaNegInf;
#pragma unroll
  for (int i = 0; i < kN / 4; ++i) {
    const float k = i < 8 ? k0 : k1;  // 8-token blocks 0-7: the first page
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float xa = s[4 * i + e] * k, xb = s[4 * i + 2 + e] * k;
      if (mask) {
        const int64_t tok = t0 + 8 * i + 2 * t + e;
        xa = tok <= vis_a ? xa : kFaNegInf;
        xb = tok <= vis_b ? xb : kFaNegInf;
      }
      s[4 * i + e] = xa;
      s[4 * i + 2 + e] = xb;
      mx_a = fmaxf(mx_a, xa);
      mx_b = fmaxf(mx_b, xb);
    }
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, x));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, x));
  }
  float base_a, base_b, al_a, al_b;
  FaRebase(st.m_a, mx_a, base_a, al_a);
  FaRebase(st.m_b, mx_b, base_b, al_b);
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int i = 0; i < kN / 4; ++i) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[4 * i + e] = Ex2(s[4 * i + e] - base_a);
      s[4 * i + 2 + e] = Ex2(s[4 * i + 2 + e] - base_b);
      sum_a += s[4 * i + e];
      sum_b += s[4 * i + 2 + e];
    }
  }
  st.l_a = st.l_a * al_a + sum_a;
  st.l_b = st.l_b * al_b + sum_b;
  // V: the tile's reference is its larger page scale; the other page's P is
  // scaled by its ratio to it (<= 1, so P stays <= 1).
  const float vt = fmaxf(sc.z, sc.w);
  if (sc.z != sc.w) {
    const float f0 = vt > 0.0f ? sc.z / vt : 0.0f, f1 = vt > 0.0f ? sc.w / vt : 0.0f;
#pragma unroll
    for (int i = 0; i < kN; ++i) s[i] *= i < 32 ? f0 : f1;
  }
  const float ratio = FaVRatio(vt, st.vref);
  fa = al_a * ratio;
  fb = al_b * ratio;
}

// P (FP32, the Q K^T accumulator layout) as the A fragments of P V: k-step
// kk is tokens 16kk .. 16kk + 15.
template <int kN>
__device__ __forceinline__ void PackP(const float (&s)[kN], uint32_t (&p)[kN / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kN / 8; ++kk) {
    p[kk][0] = Half2Bits(s[8 * kk], s[8 * kk + 1]);
    p[kk][1] = Half2Bits(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = Half2Bits(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = Half2Bits(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// The ring's barriers: a stage's K and V images landed (one arrival and the
// bytes each), the stage released (one arrival per consumer warp). A split
// ring (kSplit) releases the two images apart: empty[s] frees the K image
// once Q K^T is done with it, empty_v[s] the V image after P V, so the next
// K image loads while P V still reads this V.
template <int kStages, bool kSplit>
struct TileRing {
  uint64_t full_k[kStages];
  uint64_t full_v[kStages];
  uint64_t empty[kStages];
  uint64_t empty_v[kSplit ? kStages : 1];
};

// `releases`: the consumer warps, one arrival each.
template <int kStages, bool kSplit>
__device__ __forceinline__ void InitRing(TileRing<kStages, kSplit>& r, unsigned releases = 8) {
  for (int s = 0; s < kStages; ++s) {
    MbarInit(&r.full_k[s], 1);
    MbarInit(&r.full_v[s], 1);
    MbarInit(&r.empty[s], releases);
    if constexpr (kSplit) MbarInit(&r.empty_v[s], releases);
  }
  FenceMbarrierInit();
}

// The producer (one thread): tile j's K and V images (kImg halves each, one
// after the other at img) into stage j % kStages of `ring`.
template <int kStages, int kImg, bool kSplit>
__device__ __forceinline__ void ProduceTiles(TileRing<kStages, kSplit>& r, __half* ring, const __half* img,
                                             int tiles) {
  constexpr unsigned kBytes = static_cast<unsigned>(kImg * 2);
  for (int j = 0; j < tiles; ++j) {
    const int st = j % kStages;
    const unsigned parity = ((j / kStages) - 1) & 1;
    if (j >= kStages) MbarWait(&r.empty[st], parity);
    __half* dst = ring + st * 2 * kImg;
    const __half* src = img + static_cast<int64_t>(j) * 2 * kImg;
    MbarExpectTx(&r.full_k[st], kBytes);
    BulkLoad(dst, src, kBytes, &r.full_k[st]);
    if constexpr (kSplit) {
      if (j >= kStages) MbarWait(&r.empty_v[st], parity);
    }
    MbarExpectTx(&r.full_v[st], kBytes);
    BulkLoad(dst + kImg, src + kImg, kBytes, &r.full_v[st]);
  }
}

// Q rows [lr0 + r0, lr0 + r0 + rows) of kv head kvh, head dims [d0, d0 +
// kDims), rounded to FP16 into a K-major wgmma operand of 64 rows at q (8
// dims a unit; rows past `rows` and dims past head_dim zero), by one warp
// group (wtid its thread), fenced for the tensor cores.
template <int kDims>
__device__ __forceinline__ void LoadQ(const FaArgs& a, int kvh, int lr0, int r0, int rows, int d0, __half* q,
                                      int wtid) {
  for (int u = wtid; u < kWgRows * (kDims / 8); u += 128) {
    const int m = u / (kDims / 8), dd = 8 * (u % (kDims / 8));
    float x[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = 0.0f;
    if (m < rows) {
      const int64_t base = FaRow(a, kvh, lr0 + r0 + m) * a.head_dim;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (d0 + dd + e < a.head_dim) x[e] = FaQ(a, base + d0 + dd + e);
      }
    }
    uint4 v;
    v.x = Half2Bits(x[0], x[1]);
    v.y = Half2Bits(x[2], x[3]);
    v.z = Half2Bits(x[4], x[5]);
    v.w = Half2Bits(x[6], x[7]);
    *reinterpret_cast<uint4*>(q + CoreOffset(kWgRows, m, dd)) = v;
  }
  FenceProxyAsync();
}

// One consumer's pass over the tiles. It computes tiles [0, mine) and only
// releases [mine, tiles) once their copies have landed (the other consumer
// needs them). Per tile j: issue_qk(j) (S = Q K^T into the consumer's S
// registers) goes out with issue_pv(j - 1) (O += P V of the tile before);
// once Q K^T is done, scores(j, fa, fb) turns S into P (the softmax) while
// P V runs, and after P V, next(fa, fb) rescales O and packs P. fence_s /
// fence_o keep the compiler off the registers the tensor cores own.
// pre_pv(fa, fb) runs just before P V of a tile is issued, with the factors
// of that tile's softmax (a kernel may rescale O there instead of in next).
// turns.Take(j) and turns.Pass(j) bracket tile j's issues (PingPong).
//
// PingPong<true>: two consumers take turns to issue their tiles' MMAs
// (FlashAttention-3's ping-pong): consumer c waits at barrier kBar + c
// before it issues tile j and, having issued, lets the other go, so that
// one's softmax runs while the other's MMAs do. Only the first `paired`
// tiles, which both compute, take turns; consumer 1 opens consumer 0's
// first turn and skips the last pass, so every wait meets exactly one pass.
// PingPong<false> does nothing.
template <bool kOn>
struct PingPong {
  static constexpr int kBar = 6;  // barriers 6 and 7 (2, 3: LoadQ)
  int cw = 0, paired = 0;
  __device__ __forceinline__ void Open() const {
    if (kOn && cw == 1 && paired > 0) NamedBarrierArrive(kBar, 256);
  }
  __device__ __forceinline__ void Take(int j) const {
    if (kOn && j < paired) NamedBarrier(kBar + cw, 256);
  }
  __device__ __forceinline__ void Pass(int j) const {
    if (kOn && j < paired && !(cw == 1 && j == paired - 1)) NamedBarrierArrive(kBar + (cw ^ 1), 256);
  }
};

template <int kStages, bool kSplit, class Qk, class Pv, class Scores, class Next, class FenceS, class FenceO,
          class PrePv, class Turns = PingPong<false>>
__device__ __forceinline__ void ConsumeTiles(TileRing<kStages, kSplit>& r, int mine, int tiles, int lane,
                                             Qk issue_qk, Pv issue_pv, Scores scores, Next next, FenceS fence_s,
                                             FenceO fence_o, PrePv pre_pv, Turns turns = Turns()) {
  // release_k(j): Q K^T of tile j is done (a split ring frees its K image);
  // release(j): all of tile j is done.
  const auto release_k = [&](int j) {
    if constexpr (kSplit) {
      __syncwarp();
      if (lane == 0) MbarArrive(&r.empty[j % kStages]);
    }
  };
  const auto release = [&](int j) {
    __syncwarp();
    if (lane == 0) MbarArrive(kSplit ? &r.empty_v[j % kStages] : &r.empty[j % kStages]);
  };
  const auto parity = [](int j) { return static_cast<unsigned>((j / kStages) & 1); };
  if (mine > 0) {
    float fa, fb;
    MbarWait(&r.full_k[0], 0);
    turns.Take(0);
    WgmmaFence();
    issue_qk(0);
    WgmmaCommit();
    turns.Pass(0);
    WgmmaWait<0>();
    fence_s();
    release_k(0);
    scores(0, fa, fb);
    next(fa, fb);
    for (int j = 1; j < mine; ++j) {
      MbarWait(&r.full_k[j % kStages], parity(j));
      turns.Take(j);
      WgmmaFence();
      issue_qk(j);
      WgmmaCommit();
      pre_pv(fa, fb);
      MbarWait(&r.full_v[(j - 1) % kStages], parity(j - 1));
      WgmmaFence();
      issue_pv(j - 1);
      WgmmaCommit();
      turns.Pass(j);
      WgmmaWait<1>();  // Q K^T of tile j
      fence_s();
      release_k(j);
      scores(j, fa, fb);
      WgmmaWait<0>();  // P V of tile j - 1
      fence_o();
      release(j - 1);
      next(fa, fb);
    }
    pre_pv(fa, fb);
    MbarWait(&r.full_v[(mine - 1) % kStages], parity(mine - 1));
    WgmmaFence();
    issue_pv(mine - 1);
    WgmmaCommit();
    WgmmaWait<0>();
    fence_o();
    release(mine - 1);
  }
  for (int j = mine; j < tiles; ++j) {
    MbarWait(&r.full_k[j % kStages], parity(j));
    MbarWait(&r.full_v[j % kStages], parity(j));
    release_k(j);
    release(j);
  }
}

// O *= fa on row g's accumulators, fb on row g + 8's.
template <int kAcc>
__device__ __forceinline__ void RescaleO(float (&o)[kAcc], float fa, float fb) {
#pragma unroll
  for (int i = 0; i < kAcc / 4; ++i) {
    o[4 * i] *= fa;
    o[4 * i + 1] *= fa;
    o[4 * i + 2] *= fb;
    o[4 * i + 3] *= fb;
  }
}

// The output of this lane's two rows (block rows ra, rb; nrows in the
// block): O / l in units of vref, head dims col0 + 8i + 2t (+1).
template <int kAcc>
__device__ __forceinline__ void StoreO(const FaArgs& a, const float (&o)[kAcc], SoftmaxState& st, int kvh,
                                       int lr0, int nrows, int ra, int rb, int col0, int t) {
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {  // row sums over the four lanes of a row
    st.l_a += __shfl_xor_sync(0xffffffffu, st.l_a, x);
    st.l_b += __shfl_xor_sync(0xffffffffu, st.l_b, x);
  }
  const float fa = st.vref / st.l_a, fb = st.vref / st.l_b;
  const int64_t qa_i = ra < nrows ? FaRow(a, kvh, lr0 + ra) * a.head_dim : -1;
  const int64_t qb_i = rb < nrows ? FaRow(a, kvh, lr0 + rb) * a.head_dim : -1;
  const bool pairs = (a.head_dim & 1) == 0;  // then two columns are one aligned store
#pragma unroll
  for (int i = 0; i < kAcc / 4; ++i) {
    const int c = col0 + 8 * i + 2 * t;
    if (pairs && c < a.head_dim) {
      if (qa_i >= 0) StoreTwo(a.out, a.out_dtype, qa_i + c, o[4 * i] * fa, o[4 * i + 1] * fa);
      if (qb_i >= 0) StoreTwo(a.out, a.out_dtype, qb_i + c, o[4 * i + 2] * fb, o[4 * i + 3] * fb);
      continue;
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (c + e >= a.head_dim) continue;
      if (qa_i >= 0) Store(a.out, a.out_dtype, qa_i + c + e, o[4 * i + e] * fa);
      if (qb_i >= 0) Store(a.out, a.out_dtype, qb_i + c + e, o[4 * i + 2 + e] * fb);
    }
  }
}

// Block `idx` of a flash launch over `heads` kv heads of `row_tiles` row
// tiles each: its group-local kv head hl and row tile. The kv heads go in
// bands of `band` (the last band may hold fewer), taken from the last heads
// down, so that the first blocks read the images the image pass wrote last.
// Within a band the blocks run tile-major, the last row tiles (the longest
// under causal masks) first. A band's images fit the L2 beside the next
// band's, so a tile's image is read from memory about once, not once per
// block that sees it, as when every head's longest tiles run together.
__host__ __device__ __forceinline__ void BandPlace(int idx, int heads, int band, int row_tiles, int& hl,
                                                   int& row_tile) {
  const int per_band = band * row_tiles;
  const int bi = idx / per_band, rem = idx - bi * per_band;
  const int top = heads - bi * band;            // one past the band's last head
  const int h0 = top - band > 0 ? top - band : 0;
  const int n = top - h0;                       // heads in this band
  hl = h0 + rem % n;
  row_tile = row_tiles - 1 - rem / n;
}

// Where a block of either flash kernel is: its kv head (group-local hl),
// its query rows [lr0, lr0 + nrows) of block_rows or fewer, the tokens they
// see and the tiles that hold them (BandPlace orders the blocks).
struct BlockPlace {
  int hl, kvh, lr0, nrows, tiles;
  int64_t vis_min, vis_max;
};

__device__ __forceinline__ BlockPlace PlaceBlock(const FaArgs& a, const WgImages& w, int block_rows,
                                                 int tile_tokens) {
  BlockPlace b;
  int row_tile = 0;
  BandPlace(static_cast<int>(blockIdx.x), w.heads, w.band, a.row_tiles, b.hl, row_tile);
  b.kvh = w.kvh0 + b.hl;
  b.lr0 = row_tile * block_rows;
  b.nrows = min(block_rows, a.rows - b.lr0);
  FaVisible(a, b.lr0, b.nrows, b.vis_min, b.vis_max);
  b.tiles = static_cast<int>(min(static_cast<int64_t>(w.tiles), b.vis_max / tile_tokens + 1));
  return b;
}

// The tiles that consumer rows [r0, r0 + 64) of a block compute (0 for a
// consumer with no rows), and the tokens those rows see.
__device__ __forceinline__ int ConsumerTiles(const FaArgs& a, int lr0, int nrows, int r0, int tiles, int tile_tokens,
                                             int64_t& vis_min, int64_t& vis_max) {
  const int rows = max(0, min(kWgRows, nrows - r0));
  vis_min = vis_max = -1;
  if (rows == 0) return 0;
  FaVisible(a, lr0 + r0, rows, vis_min, vis_max);
  return static_cast<int>(min(static_cast<int64_t>(tiles), vis_max / tile_tokens + 1));
}

// The warp group of this thread, broadcast so that the compiler sees it
// warp-uniform (a role it thinks divergent makes it serialize the wgmma).
__device__ __forceinline__ int WarpGroup() { return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) >> 7, 0); }

// Grid: group kv heads x row tiles of WgShape<kD>::kRows (PlaceBlock).
// kTurns: two consumers take turns issuing their MMAs (PingPong);
// kEarlyRescale: O is rescaled in ConsumeTiles' pre_pv, not in its next.
template <int kD, bool kTurns = PLUME_PREFILL_PINGPONG != 0, bool kEarlyRescale = PLUME_PREFILL_EARLY_RESCALE != 0>
__global__ void __launch_bounds__(WgShape<kD>::kBlockThreads, 1) PrefillImagesKernel(const FaArgs a, const WgImages w) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(PLUME_CUDA_EMULATION)
  using S = WgShape<kD>;
  constexpr int kTile = S::kTile, kStages = S::kStages;
  PLUME_DYNAMIC_SMEM(wg_smem_raw);
  PLUME_SHARED TileRing<kStages, S::kSplit> bars;
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(wg_smem_raw) + 127) & ~uintptr_t{127});
  __half* qs = reinterpret_cast<__half*>(smem);  // [consumer][64 rows x kD]
  __half* ring = qs + S::kQHalves;               // [stage][K image, V image]

  const int tid = threadIdx.x, wg = WarpGroup(), wtid = tid & 127;
  const BlockPlace b = PlaceBlock(a, w, S::kRows, kTile);
  const int hl = b.hl, kvh = b.kvh, lr0 = b.lr0, nrows = b.nrows, tiles = b.tiles;

  if (tid == 0) InitRing(bars, 4 * S::kConsumers);
  __syncthreads();

  if (wg == 0) {
    SetMaxRegsDec<kProducerRegs>();
    if (wtid == 0) ProduceTiles<kStages, S::kImg>(bars, ring, w.img + static_cast<int64_t>(hl) * w.tiles * 2 * S::kImg, tiles);
  } else {
    SetMaxRegsInc<S::kRegs>();
    const int cw = wg - 1;
    const int wq = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int r0 = cw * kWgRows;  // this consumer's first row in the block
    const int my_rows = max(0, min(kWgRows, nrows - r0));
    __half* q_mine = qs + cw * kWgRows * kD;
    LoadQ<kD>(a, kvh, lr0, r0, my_rows, 0, q_mine, wtid);
    NamedBarrier(2 + cw, 128);

    int64_t wg_vis_min, wg_vis_max;
    // Tiles this consumer computes; it still takes part in the rest.
    const int mine = ConsumerTiles(a, lr0, nrows, r0, tiles, kTile, wg_vis_min, wg_vis_max);
    const int ra = r0 + 16 * wq + g, rb = ra + 8;  // this lane's rows in the block
    const int64_t vis_a = ra < nrows ? FaLastVisible(a, lr0 + ra) : -1;
    const int64_t vis_b = rb < nrows ? FaLastVisible(a, lr0 + rb) : -1;
    const float4* scales = reinterpret_cast<const float4*>(w.scales) + static_cast<int64_t>(hl) * w.tiles;

    float o[S::kAcc];
#pragma unroll
    for (int i = 0; i < S::kAcc; ++i) o[i] = 0.0f;
    SoftmaxState st;
    float s[S::kS];
    uint32_t p[S::kSteps][4];
    const uint32_t q_addr = SmemAddr(q_mine);
    const uint32_t ring_addr = SmemAddr(ring);
    const auto k_addr = [&](int j) { return ring_addr + (j % kStages) * 4 * S::kImg; };
    float4 sc = scales[0];
    constexpr bool kPingPong = kTurns && S::kConsumers == 2;
    PingPong<kPingPong> turns;
    if constexpr (kPingPong) {
      int64_t other_min, other_max;
      turns.cw = cw;
      turns.paired = min(mine, ConsumerTiles(a, lr0, nrows, (cw ^ 1) * kWgRows, tiles, kTile, other_min, other_max));
      turns.Open();
    }
    ConsumeTiles(
        bars, mine, tiles, lane,
        [&](int j) {
          if (PLUME_PREFILL_VARIANT == 2) return;
#pragma unroll
          for (int k = 0; k < kD / 16; ++k) {
            const uint64_t qdesc = Desc(q_addr + k * StepBytes(kWgRows));
            const uint64_t kdesc = Desc(k_addr(j) + k * StepBytes(kTile));
            if constexpr (kTile == 128) {
              WgmmaSs128(s, qdesc, kdesc, k > 0 ? 1 : 0);
            } else if constexpr (kTile == 64) {
              WgmmaSs64(s, qdesc, kdesc, k > 0 ? 1 : 0);
            } else {
              WgmmaSs32(s, qdesc, kdesc, k > 0 ? 1 : 0);
            }
          }
        },
        [&](int j) {
          if (PLUME_PREFILL_VARIANT == 2) return;
#pragma unroll
          for (int kk = 0; kk < S::kSteps; ++kk) {
            Wgmma<kD>::Run(o, p[kk], Desc(k_addr(j) + 2 * S::kImg + kk * StepBytes(kD)), 1);
          }
        },
        [&](int j, float& fa, float& fb) {
          if (PLUME_PREFILL_VARIANT != 0) {  // timing builds: no softmax
            fa = fb = 1.0f;
            return;
          }
          const int64_t t0 = static_cast<int64_t>(j) * kTile;
          TileSoftmax(s, sc, a.scale_log2, t0 + kTile - 1 > wg_vis_min, t0, t, vis_a, vis_b, st, fa, fb);
          sc = scales[min(j + 1, w.tiles - 1)];  // the next tile's, in flight meanwhile
        },
        [&](float fa, float fb) {
          if constexpr (!kEarlyRescale) RescaleO(o, fa, fb);
          PackP(s, p);
        },
        [&] { FenceOperands(s); },
        [&] {
          FenceOperands(o);
          FenceOperands(p);
        },
        [&](float fa, float fb) {
          if constexpr (kEarlyRescale) RescaleO(o, fa, fb);
        },
        turns);
    StoreO(a, o, st, kvh, lr0, nrows, ra, rb, 0, t);
  }
#endif
}

// The launch groups: kv heads per group and their workspace.
struct WgGroups {
  int tiles = 0;
  int heads = 0;           // kv heads per group
  int band = 0;            // kv heads per L2 band
  int64_t image_bytes = 0; // one group's images
  int64_t total = 0;       // images + scales, bytes
};

inline WgGroups Groups(const AttentionProblem& p, int kd, int64_t budget = kImageBudget,
                       int64_t band_budget = kBandBudget) {
  WgGroups g;
  g.tiles = static_cast<int>((p.seq + TileTokens(kd) - 1) / TileTokens(kd));
  const int64_t per_head = int64_t{g.tiles} * 2 * ImageHalves(kd) * 2;
  g.heads = static_cast<int>(std::clamp<int64_t>(budget / per_head, 1, p.layout.kv_heads));
  g.band = static_cast<int>(std::clamp<int64_t>(band_budget / per_head, 1, g.heads));
  g.image_bytes = per_head * g.heads;
  g.total = g.image_bytes + int64_t{g.heads} * g.tiles * 4 * 4;
  return g;
}

// Calls launch(w) for each launch group of the workspace's images, in
// order: the launcher runs the image pass, then the flash kernel, for each.
template <class Launch>
void ForEachGroup(const FaArgs& a, const WgGroups& g, void* workspace, Launch launch) {
  WgImages w;
  w.img = static_cast<__half*>(workspace);
  w.scales = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + g.image_bytes);
  w.tiles = g.tiles;
  w.band = g.band;
  for (int h0 = 0; h0 < a.kv_heads; h0 += g.heads) {
    w.kvh0 = h0;
    w.heads = std::min(g.heads, a.kv_heads - h0);
    launch(w);
  }
}

}  // namespace
}  // namespace plume::cuda
