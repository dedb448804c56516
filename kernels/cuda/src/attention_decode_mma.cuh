// The tensor-core decode (DecodeMmaKernel) for padded head dims 64, 128 and
// 256 and more than kFewRows query rows per kv head. Instantiated by
// attention_decode_mma.cu.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attention_common.cuh"
#include "attention_fp8.cuh"
#include "attention_pages.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// The tensor-core decode (head dims whose padded row is 64, 128 or 256
// bytes): one block per (kv head, tile of up to 64 of its query rows,
// split of the pages), so each K/V page is read once per 64 rows. The four
// warps split the tile's 16-row m-tiles and, when there are fewer than four
// m-tiles, the page's tokens (a warp then keeps its own softmax state over
// its token slice; the block merges them at the end). Pages stream through a
// MmaGeom::kStages-deep cp.async ring in shared memory as FP8 codes; each warp
// decodes its K and V fragments straight from there to FP16 (exact) and runs
// S = Q K^T and O += P V on mma.sync m16n8k16 with FP32 accumulators.
//
// FP32 accuracy from FP16 tensor cores: a query row is scaled by a power of
// two to max |q| < 1 and split into FP16 hi + lo (hi + lo carries 22 bits;
// lo is skipped for FP16 or BF16 queries, hi is then exact); P (in [0, 1],
// scaled by 2^10 so small weights stay normal FP16) is split the same way.
// Each product is two mma, the K/V side being exact FP16.
//
// Fragment orders: the Q.K reduction index is permuted so that a lane's B
// fragment for one k-step is one 32-bit word of its K row (lane t reads
// 16-byte chunks t, t + 4, ... of the row: k-step 4h + j is codes
// 64h + 16t + 4j .. + 3), and Q's A fragment uses the same permutation. For
// P.V the output columns are permuted instead: n-tile nn's column g is the
// row's byte MmaGeom::WordDim(nn / 4, g) + nn % 4 (16g + nn at kD = 128), so
// a lane reads its 16-byte chunks (8 bytes at kD = 64) of each V row.
// Shared memory rows are XOR-swizzled so both reads are free of bank
// conflicts. The ring and its geometry: attention_pages.cuh.
//
// At kD = 256 the output takes 128 registers a thread, so the queries' hi
// fragments live in shared memory beside the lo ones, and one block runs
// per multiprocessor.
constexpr int kMmaRows = 16 * kMmaWarps;  // query rows per block at most
// Blocks per SM the registers are fitted to at kD = 64 and 128 (the macros
// are for measurement builds, scripts/build-kernel-variant.sh). At kD = 64
// four blocks (128 registers, 16-28 bytes spilled) against three (137-141
// registers, no spills) took 131072 tokens batch 4 from 150 to 90 us on an
// H100 (bench/RESULTS-gpu-attention.md, "Four blocks per SM at D = 64").
#ifndef PLUME_MMA_MIN_BLOCKS_64
#define PLUME_MMA_MIN_BLOCKS_64 4
#endif
#ifndef PLUME_MMA_MIN_BLOCKS_128
#define PLUME_MMA_MIN_BLOCKS_128 2
#endif
template <int kD>
struct MmaShape {
  using G = MmaGeom<kD>;
  static constexpr bool kQInSmem = kD > 128;            // Q's hi fragments in shared memory
  static constexpr int kOutLd = kD + kD / 32;           // epilogue row, floats (skewed)
  static constexpr int kQlo = kMmaWarps * G::kKSteps * 32 * 16;  // one set of Q fragments
  static constexpr size_t kSmem = G::kRing + kQlo * (kQInSmem ? 2 : 1);  // 32 / 64 / 160 KB
  static constexpr int kMinBlocks =
      kD > 128 ? 1 : kD == 64 ? PLUME_MMA_MIN_BLOCKS_64 : PLUME_MMA_MIN_BLOCKS_128;
  static_assert(kMmaWarps * 16 * kOutLd * 4 + kMmaWarps * 16 * 2 * 4 <= G::kRing);
};
// kShared (kD = 128 only): the page decoded once to FP16 in fragment order
// (K: [token][lane t's 8 k-steps], V: [token pair][dim] of half2), 32 KB more.
constexpr int kMmaKh = kPage * 128 * 2;
constexpr int kMmaVh = kPage * 128 * 2;
constexpr size_t kMmaSmemShared = MmaShape<128>::kSmem + kMmaKh + kMmaVh;  // 96 KB

// Dynamic shared memory of DecodeMmaKernel<*, kd, shared>.
inline size_t MmaDecodeSmem(int kd, bool shared) {
  if (shared) return kMmaSmemShared;
  return kd == 64 ? MmaShape<64>::kSmem : kd == 128 ? MmaShape<128>::kSmem : MmaShape<256>::kSmem;
}

// Swizzled 16-byte chunk c (0..15) of token row r of the FP16 K tile (256
// bytes a row; lane t reads chunks 4t .. 4t + 3) and chunk c (0..31) of token
// pair tp of the FP16 V tile (512 bytes a pair; lane (g, t) reads chunks
// 4g .. 4g + 3 of pairs t and t + 4): the warps' reads are conflict-free.
__device__ __forceinline__ int KhChunk(int r, int c) {
  return r * (2 * 128) + ((c ^ (((c >> 3) & 1) << 1) ^ (r & 1)) << 4);
}
__device__ __forceinline__ int VhChunk(int tp, int c) { return tp * (4 * 128) + ((c ^ (tp & 3)) << 4); }

// kShared (for 3 or 4 m-tiles, where every warp would decode the whole page;
// used for the software FP8 decode only): the block decodes each page once
// into FP16 shared memory, already in the fragment orders above, and the
// warps read their fragments from there.
template <Dec kDec, int kD, bool kShared>
__global__ void __launch_bounds__(kMmaThreads, MmaShape<kD>::kMinBlocks) DecodeMmaKernel(const Params p) {
  using G = MmaGeom<kD>;
  using S = MmaShape<kD>;
  constexpr int kKSteps = G::kKSteps;
  constexpr int kVWords = G::kVWords;
  static_assert(!kShared || kD == 128);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  PLUME_DYNAMIC_SMEM(smem);
  uint8_t* const ring = reinterpret_cast<uint8_t*>(smem);
  uint4* const qlo_s = reinterpret_cast<uint4*>(ring + G::kRing);  // [warp][k-step][lane]
  uint4* const qhi_s = qlo_s + S::kQlo / 16;                      // kQInSmem: the hi ones
  uint8_t* const kh = ring + G::kRing + S::kQlo;  // kShared: the page's K as FP16
  uint8_t* const vh = kh + kMmaKh;                 // and V

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int unit = blockIdx.x;
  const int split = blockIdx.y;
  const int tile = unit % p.row_tiles;
  const int kvh = unit / p.row_tiles;
  const int lr0 = tile * p.tile_rows;
  const int nrows = min(p.tile_rows, p.rows - lr0);
  const int mtiles = (nrows + 15) / 16;
  const int wt = mtiles == 1 ? 4 : mtiles == 2 ? 2 : 1;  // warps (token slices) per m-tile
  const int mt = warp / wt;
  const bool active = mt < mtiles;
  const int ntok = kPage / wt;  // a warp's tokens of each page
  const int tok0 = warp % wt * ntok;

  // This lane's rows (g and g + 8 of the warp's m-tile), what they see, and
  // their Q fragments (k-step 4h + j: codes 64h + 16t + 4j + 0..3).
  const int ra = mt * 16 + g, rb = ra + 8;
  const int64_t vis_a = active && ra < nrows ? LastVisible(p, lr0 + ra) : -1;
  const int64_t vis_b = active && rb < nrows ? LastVisible(p, lr0 + rb) : -1;
  const bool q_lo = p.q_dtype == DType::kF32;  // FP16 and BF16 queries are exact in hi
  // The lo parts go to shared memory (qlo_s): registers are short.
  uint32_t qh[S::kQInSmem ? 1 : kKSteps][4];
  float qf_a = 1.0f, qf_b = 1.0f;  // 2^e: the rows' scale back
  {
    const int64_t ia = vis_a >= 0 ? QueryIndex(p, kvh, lr0 + ra) * p.head_dim : -1;
    const int64_t ib = vis_b >= 0 ? QueryIndex(p, kvh, lr0 + rb) * p.head_dim : -1;
    float qa[kKSteps][4], qb[kKSteps][4];
    float mx_a = 0.0f, mx_b = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const int d = 64 * (ks >> 2) + 16 * t + 4 * (ks & 3);
      LoadQ4(p, ia, d, qa[ks]);
      LoadQ4(p, ib, d, qb[ks]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        mx_a = fmaxf(mx_a, fabsf(qa[ks][e]));
        mx_b = fmaxf(mx_b, fabsf(qb[ks][e]));
      }
    }
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o));
    }
    int ea = 0, eb = 0;
    if (mx_a > 0.0f && mx_a <= 3.0e38f) frexpf(mx_a, &ea);
    if (mx_b > 0.0f && mx_b <= 3.0e38f) frexpf(mx_b, &eb);
    ea = max(ea, -120);  // 2^-ea stays finite
    eb = max(eb, -120);
    qf_a = ldexpf(1.0f, ea);
    qf_b = ldexpf(1.0f, eb);
    const float sa = ldexpf(1.0f, -ea), sb = ldexpf(1.0f, -eb);  // exact powers of two
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      float a[4], b[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a[e] = qa[ks][e] * sa;
        b[e] = qb[ks][e] * sb;
      }
      uint4 hi, lo;
      SplitHalves(a[0], a[1], hi.x, lo.x);
      SplitHalves(b[0], b[1], hi.y, lo.y);
      SplitHalves(a[2], a[3], hi.z, lo.z);
      SplitHalves(b[2], b[3], hi.w, lo.w);
      qlo_s[(warp * kKSteps + ks) * 32 + lane] = lo;  // read back by this thread only
      if constexpr (S::kQInSmem) {
        qhi_s[(warp * kKSteps + ks) * 32 + lane] = hi;
      } else {
        qh[ks][0] = hi.x, qh[ks][1] = hi.y, qh[ks][2] = hi.z, qh[ks][3] = hi.w;
      }
    }
  }

  const int64_t last = TileLastVisible(p, lr0, nrows);
  const int page_begin = split * p.pages_per_split;
  const int page_end = SplitPageEnd(p, page_begin, last);
  const int npg = max(0, page_end - page_begin);

  // Page i of the split (at `page`) into stage i % G::kStages.
  auto load = [&](const uint8_t* page, int i) {
    if (i < npg) MmaLoadPage<kD>(p, ring + (i % G::kStages) * 2 * G::kTile, page, kvh, tid);
    CpAsyncCommit();  // empty groups too: the wait below counts groups
  };
  // The K and V scales of a page, times the decode factor; TOKEN_BLOCK ones
  // are read from the page when its copy starts and kept in registers until
  // its turn (pages i .. i + kStages - 2 in flight: sc[0] ..).
  const bool block_scales = p.mode == KvScaleMode::kTokenBlock;
  const float2 fixed = block_scales ? make_float2(0.0f, 0.0f)
                                    : make_float2(PageScale(p, nullptr, kvh, false),
                                                  PageScale(p, nullptr, kvh, true));
  auto scales_of = [&](const uint8_t* page) { return MmaPageScales(p, page, kvh, fixed); };
  float2 sc[G::kStages - 1];
#pragma unroll
  for (int i = 0; i < G::kStages - 1; ++i) {
    const uint8_t* page = i < npg ? p.pages[page_begin + i] : nullptr;
    load(page, i);
    sc[i] = scales_of(page);
  }
  // The page table is read one page ahead, so that its latency hides behind
  // a page's math instead of delaying the next copy.
  const uint8_t* next = G::kStages - 1 < npg ? p.pages[page_begin + G::kStages - 1] : nullptr;

  float o[G::kOTiles][4];
#pragma unroll
  for (int nn = 0; nn < G::kOTiles; ++nn) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.0f;
  float m_a = kNegInf, m_b = kNegInf, l_a = 0.0f, l_b = 0.0f;
  float vref = 0.0f;  // the true output is o * vref / kPScale (V scales change per page)

  for (int i = 0; i < npg; ++i) {
    CpAsyncWait<G::kStages - 2>();
    __syncthreads();              // page i is in; every warp is done with page i - 1
    load(next, i + G::kStages - 1);  // into page i - 1's stage
    const float2 cur = sc[0];
#pragma unroll
    for (int k = 0; k + 1 < G::kStages - 1; ++k) sc[k] = sc[k + 1];
    sc[G::kStages - 2] = scales_of(next);
    next = i + G::kStages < npg ? p.pages[page_begin + i + G::kStages] : nullptr;
    const uint8_t* kt = ring + (i % G::kStages) * 2 * G::kTile;
    const uint8_t* vt = kt + G::kTile;
    if constexpr (kShared) {
      // K: FP8 chunk cc of row r holds lane t = cc % 4's k-steps 4 (cc / 4)
      // .. + 3, one word each: their (b0, b1) pairs are 32 contiguous bytes.
#pragma unroll
      for (int k = 0; k < kPage * 8 / kMmaThreads; ++k) {
        const int idx = tid + k * kMmaThreads;
        const int r = idx >> 3, cc = idx & 7;
        const uint4 w = *reinterpret_cast<const uint4*>(kt + G::KChunk(r, cc));
        uint4 a, b;
        DecodeWordNan<kDec>(w.x, a.x, a.y);
        DecodeWordNan<kDec>(w.y, a.z, a.w);
        DecodeWordNan<kDec>(w.z, b.x, b.y);
        DecodeWordNan<kDec>(w.w, b.z, b.w);
        const int c = (cc & 3) * 4 + (cc >> 2) * 2;
        *reinterpret_cast<uint4*>(kh + KhChunk(r, c)) = a;
        *reinterpret_cast<uint4*>(kh + KhChunk(r, c + 1)) = b;
      }
      // V: tokens 2tp, 2tp + 1 paired per dim (half2), dims in order.
#pragma unroll
      for (int k = 0; k < kPage / 2 * 8 / kMmaThreads; ++k) {
        const int idx = tid + k * kMmaThreads;
        const int tp = idx >> 3, cc = idx & 7;
        const uint4 a = *reinterpret_cast<const uint4*>(vt + G::VChunk(2 * tp, cc));
        const uint4 b = *reinterpret_cast<const uint4*>(vt + G::VChunk(2 * tp + 1, cc));
        const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          uint4 h;
          DecodeWordNan<kDec>(__byte_perm(wa[q], wb[q], 0x5140), h.x, h.y);
          DecodeWordNan<kDec>(__byte_perm(wa[q], wb[q], 0x7362), h.z, h.w);
          *reinterpret_cast<uint4*>(vh + VhChunk(tp, cc * 4 + q)) = h;
        }
      }
      __syncthreads();  // the FP16 page is complete
    }
    if (!active) continue;
    const int64_t t0 = static_cast<int64_t>(page_begin + i) * kPage;
    const int n = static_cast<int>(Min64(kPage, p.seq - t0));
    const float ks = cur.x, vs = cur.y;
    // Scores in log2 units (exp2 is one instruction).
    const float ka = ks * p.scale * kLog2e * qf_a, kb = ks * p.scale * kLog2e * qf_b;
    // Masks: tokens of this page past n, or past what a row sees.
    const int lim_a = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis_a - t0)));
    const int lim_b = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis_b - t0)));
    // O is kept relative to the current page's V scale (TOKEN_BLOCK scales
    // change per page).
    float ratio = 1.0f;
    if (vs != 0.0f) {
      if (vref != 0.0f) ratio = vref / vs;
      vref = vs;
    }

    // The warp's tokens, 16 at a time (few registers for S).
    for (int c0 = tok0; c0 < tok0 + ntok && c0 < n; c0 += 16) {
      // S = Q K^T for 16 tokens: two n-tiles.
      // Two accumulator chains per n-tile (hi / lo, or even / odd k-steps)
      // halve the dependent mma latency.
      float s[2][4], s2[2][4];
      // One copy of the loop per query kind, so that neither pays for the
      // other's instructions (predicated off, they would still issue).
      auto qk = [&](auto with_lo) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
          s2[j][0] = s2[j][1] = s2[j][2] = s2[j][3] = 0.0f;
          const int r = c0 + 8 * j + g;
          [[maybe_unused]] uint32_t hw[16];  // kShared: FP16 pairs
          [[maybe_unused]] uint32_t w[4];    // else: the codes of 4 k-steps
          if constexpr (kShared) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              const uint4 x = *reinterpret_cast<const uint4*>(kh + KhChunk(r, 4 * t + c));
              hw[4 * c] = x.x;
              hw[4 * c + 1] = x.y;
              hw[4 * c + 2] = x.z;
              hw[4 * c + 3] = x.w;
            }
          }
#pragma unroll
          for (int kk = 0; kk < kKSteps; ++kk) {
            uint32_t b0, b1;
            if constexpr (kShared) {
              b0 = hw[2 * kk];
              b1 = hw[2 * kk + 1];
            } else {
              if (kk % 4 == 0) G::LoadKPart(kt, r, t, kk / 4, w);
              DecodeWordNan<kDec>(w[kk % 4], b0, b1);
            }
            uint4 hi;
            if constexpr (S::kQInSmem) {
              hi = qhi_s[(warp * kKSteps + kk) * 32 + lane];
            } else {
              hi = make_uint4(qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3]);
            }
            if constexpr (decltype(with_lo)::value) {
              const uint4 lo = qlo_s[(warp * kKSteps + kk) * 32 + lane];
              Mma(s[j], hi.x, hi.y, hi.z, hi.w, b0, b1);
              Mma(s2[j], lo.x, lo.y, lo.z, lo.w, b0, b1);
            } else {
              Mma(kk & 1 ? s2[j] : s[j], hi.x, hi.y, hi.z, hi.w, b0, b1);
            }
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] += s2[j][e];
        }
      };
      if (q_lo) {
        qk(std::true_type{});
      } else {
        qk(std::false_type{});
      }

      // Online softmax in FP32; masked scores are -inf.
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = c0 + 8 * j + 2 * t + e;
          s[j][e] = tok <= lim_a ? s[j][e] * ka : kNegInf;
          s[j][2 + e] = tok <= lim_b ? s[j][2 + e] * kb : kNegInf;
        }
      }
      float al_a, al_b;
      OnlineSoftmaxStep<2, true>(s, m_a, m_b, l_a, l_b, al_a, al_b);
      const float ca = al_a * ratio, cb = al_b * ratio;
      ratio = 1.0f;
      if (!__all_sync(0xffffffffu, ca == 1.0f && cb == 1.0f)) {  // most chunks keep the max
#pragma unroll
        for (int nn = 0; nn < G::kOTiles; ++nn) {
          o[nn][0] *= ca;
          o[nn][1] *= ca;
          o[nn][2] *= cb;
          o[nn][3] *= cb;
        }
      }

      // O += P V: tokens 2t, 2t + 1, 2t + 8, 2t + 9 of the 16, lane group
      // g's words of each V row.
      uint32_t ph[4], pl[4];
      SplitHalves(s[0][0] * kPScale, s[0][1] * kPScale, ph[0], pl[0]);
      SplitHalves(s[0][2] * kPScale, s[0][3] * kPScale, ph[1], pl[1]);
      SplitHalves(s[1][0] * kPScale, s[1][1] * kPScale, ph[2], pl[2]);
      SplitHalves(s[1][2] * kPScale, s[1][3] * kPScale, ph[3], pl[3]);
      const int r = c0 + 2 * t;
      constexpr int kPart = G::kVPart;  // V words read at a time
      uint32_t w0[kPart], w1[kPart], w8[kPart], w9[kPart];
#pragma unroll
      for (int q = 0; q < kVWords; ++q) {
        if (!kShared && q % kPart == 0) {
          G::LoadVPart(vt, r, g, q / kPart, w0);
          G::LoadVPart(vt, r + 1, g, q / kPart, w1);
          G::LoadVPart(vt, r + 8, g, q / kPart, w8);
          G::LoadVPart(vt, r + 9, g, q / kPart, w9);
        }
        uint32_t b0[4], b1[4];  // n-tiles 4q .. 4q + 3
        if constexpr (kShared) {  // token pairs r / 2 and r / 2 + 4, dims 16g + 4q ..
          const uint4 x = *reinterpret_cast<const uint4*>(vh + VhChunk(r / 2, 4 * g + q));
          const uint4 y = *reinterpret_cast<const uint4*>(vh + VhChunk(r / 2 + 4, 4 * g + q));
          b0[0] = x.x, b0[1] = x.y, b0[2] = x.z, b0[3] = x.w;
          b1[0] = y.x, b1[1] = y.y, b1[2] = y.z, b1[3] = y.w;
        } else {
          const int x = q % kPart;
          DecodeWordNan<kDec>(__byte_perm(w0[x], w1[x], 0x5140), b0[0], b0[1]);
          DecodeWordNan<kDec>(__byte_perm(w0[x], w1[x], 0x7362), b0[2], b0[3]);
          DecodeWordNan<kDec>(__byte_perm(w8[x], w9[x], 0x5140), b1[0], b1[1]);
          DecodeWordNan<kDec>(__byte_perm(w8[x], w9[x], 0x7362), b1[2], b1[3]);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          Mma(o[4 * q + e], ph[0], ph[1], ph[2], ph[3], b0[e], b1[e]);
          Mma(o[4 * q + e], pl[0], pl[1], pl[2], pl[3], b0[e], b1[e]);
        }
      }
    }
    if (ratio != 1.0f) {  // no token of the page in this warp's slice
#pragma unroll
      for (int nn = 0; nn < G::kOTiles; ++nn) {
        o[nn][0] *= ratio;
        o[nn][1] *= ratio;
        o[nn][2] *= ratio;
        o[nn][3] *= ratio;
      }
    }
  }
  CpAsyncWait<0>();
  __syncthreads();  // the ring is free: it holds the warps' partial results now

  // Each warp's (m, l, O) per row; then the warps of an m-tile merge in a
  // fixed order and the block writes the tile's rows for the combine
  // (FinishSplit).
  float* const ob = reinterpret_cast<float*>(ring);    // [warp][16][kOutLd]
  float* const mlb = ob + kMmaWarps * 16 * S::kOutLd;  // [warp][16][2]
  if (active) {
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
      l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
    }
    const float f = vref / kPScale;
    float* oa = ob + (warp * 16 + g) * S::kOutLd;
    float* obr = oa + 8 * S::kOutLd;
#pragma unroll
    for (int nn = 0; nn < G::kOTiles; ++nn) {
      // Column c at c + c / 32 (at kD = 128 the lanes' stores hit distinct
      // banks).
      const int c0 = G::WordDim(nn >> 2, 2 * t) + (nn & 3), c1 = G::WordDim(nn >> 2, 2 * t + 1) + (nn & 3);
      oa[c0 + c0 / 32] = o[nn][0] * f;
      oa[c1 + c1 / 32] = o[nn][1] * f;
      obr[c0 + c0 / 32] = o[nn][2] * f;
      obr[c1 + c1 / 32] = o[nn][3] * f;
    }
    if (t == 0) {
      mlb[(warp * 16 + g) * 2] = m_a;
      mlb[(warp * 16 + g) * 2 + 1] = l_a;
      mlb[(warp * 16 + g + 8) * 2] = m_b;
      mlb[(warp * 16 + g + 8) * 2 + 1] = l_b;
    }
  }
  __syncthreads();
  const int64_t slot = SplitSlot(p, unit, split);
  for (int i = tid; i < nrows * kD; i += kMmaThreads) {
    const int r = i / kD, d = i % kD;
    MergeWarpsToSplit<16, S::kOutLd, true>(p, ob, mlb, r / 16 * wt, wt, r % 16, d, slot,
                                           p.tile_rows, r);
  }
  FinishSplit(p, unit);
}

}  // namespace plume::cuda::attn
