// The tensor-core decode for at most kFewRows query rows per kv head
// (DecodeFewKernel), padded head dims 64, 128 and 256. Instantiated by
// attention_decode_mma.cu.
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_fp8.cuh"
#include "attention_pages.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

// At most kFewRows query rows per kv head (batch 1 at GQA group 4: a decode
// step of one sequence), DecodeMmaKernel would leave 12 of its 16 M rows
// empty. This kernel swaps the operands instead: S^T = K Q^T with 16 tokens as
// M and N = 8 columns, O^T = V^T P^T. The N columns hold the rows' hi parts
// (columns 0-3) and lo parts (4-7), so the FP32 split costs no extra mma:
// 16 mma per 16 tokens at kD = 128 (DecodeMmaKernel: 16 for S and 32 for
// O), kD / 4 output registers, 4 blocks per SM (2 at kD = 256, whose ring is
// 96 KB). Block and ring as DecodeMmaKernel's (warp w takes
// tokens 16w .. 16w + 15 of every page, keeping its own softmax state).
// Fragments (g = lane / 4, t = lane % 4):
//  - K (A): tokens g and g + 8; k-step ks is the ks-th 32-bit word of 16-byte
//    chunks t, t + 4, ... of the row (DecodeMmaKernel's B order).
//  - Q^T (B): column g is row g & 3, hi part for g < 4, lo for g >= 4, in the
//    same permuted order; a row is scaled by a power of two to max |q| < 1.
//  - S^T (C): tokens g, g + 8 of columns 2t, 2t + 1; lanes t and t ^ 2 hold a
//    row's hi and lo columns, so one shuffle sums them: lane t then has rows
//    2 (t & 1) and 2 (t & 1) + 1.
//  - P^T (B): P * 2^10 in the C layout as FP16, hi in lanes t < 2 and lo in
//    t >= 2 (columns 0-3 and 4-7 again), transposed by movmatrix.
//  - V^T (A): lane group g's words of V rows 2t, 2t + 1, 2t + 8, 2t + 9
//    (MmaGeom::LoadVPart), consecutive tokens paired by prmt; m-tile mt's
//    row g is dim WordDim(mt / 2, g) + 2 (mt % 2) and row g + 8 the dim after
//    (16g + 2mt and 16g + 2mt + 1 at kD = 128).
//  - O^T (C): those dims, columns as S^T's; lanes t and t ^ 2 are summed at
//    the end.
constexpr int kFewRows = 4;
// Dynamic shared memory of DecodeFewKernel<*, kd>: the ring (48 KB at kd = 128:
// no opt-in).
inline size_t FewDecodeSmem(int kd) {
  return kd == 64 ? MmaGeom<64>::kRing : kd == 128 ? MmaGeom<128>::kRing : MmaGeom<256>::kRing;
}

// Blocks per SM the registers are fitted to (PLUME_FEW_MIN_BLOCKS_64:
// measurement builds).
#ifndef PLUME_FEW_MIN_BLOCKS_64
#define PLUME_FEW_MIN_BLOCKS_64 4
#endif
constexpr int FewMinBlocks(int kd) { return kd > 128 ? 2 : kd == 64 ? PLUME_FEW_MIN_BLOCKS_64 : 4; }

template <Dec kDec, int kD>
__global__ void __launch_bounds__(kMmaThreads, FewMinBlocks(kD)) DecodeFewKernel(const Params p) {
  using G = MmaGeom<kD>;
  constexpr int kKSteps = G::kKSteps;
  constexpr int kVWords = G::kVWords;
  constexpr int kOutLd = kD + 4;
  static_assert(kMmaWarps * kFewRows * (kOutLd + 2) * 4 <= G::kRing);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  PLUME_DYNAMIC_SMEM(smem);
  uint8_t* const ring = reinterpret_cast<uint8_t*>(smem);
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int unit = blockIdx.x;
  const int split = blockIdx.y;
  const int tile = unit % p.row_tiles;
  const int kvh = unit / p.row_tiles;
  const int lr0 = tile * kFewRows;
  const int nrows = min(kFewRows, p.rows - lr0);
  const int tok0 = warp * 16;

  // Q^T: this lane's column (row g & 3, hi or lo part) at k-step ks: dims
  // 64 (ks / 4) + 16t + 4 (ks % 4) + 0..3.
  uint32_t qf[kKSteps][2];
  float qfac;  // 2^e: row g & 3's scale back
  {
    const int r = g & 3;
    const int64_t base = r < nrows ? QueryIndex(p, kvh, lr0 + r) * p.head_dim : -1;
    float q[kKSteps][4];
    float mx = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      LoadQ4(p, base, 64 * (ks >> 2) + 16 * t + 4 * (ks & 3), q[ks]);
#pragma unroll
      for (int e = 0; e < 4; ++e) mx = fmaxf(mx, fabsf(q[ks][e]));
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    int ex = 0;
    if (mx > 0.0f && mx <= 3.0e38f) frexpf(mx, &ex);
    ex = max(ex, -120);  // 2^-ex stays finite
    qfac = ldexpf(1.0f, ex);
    const float sq = ldexpf(1.0f, -ex);
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t hi, lo;
        SplitHalves(q[ks][2 * h] * sq, q[ks][2 * h + 1] * sq, hi, lo);
        qf[ks][h] = g < 4 ? hi : lo;
      }
    }
  }
  // This lane's rows for the softmax: r0 and r0 + 1.
  const int r0 = 2 * (t & 1);
  const float qf0 = __shfl_sync(0xffffffffu, qfac, 4 * r0);
  const float qf1 = __shfl_sync(0xffffffffu, qfac, 4 * r0 + 4);
  const int64_t vis0 = r0 < nrows ? LastVisible(p, lr0 + r0) : -1;
  const int64_t vis1 = r0 + 1 < nrows ? LastVisible(p, lr0 + r0 + 1) : -1;

  const int64_t last = TileLastVisible(p, lr0, nrows);
  const int page_begin = split * p.pages_per_split;
  const int page_end = SplitPageEnd(p, page_begin, last);
  const int npg = max(0, page_end - page_begin);
  auto load = [&](const uint8_t* page, int i) {
    if (i < npg) MmaLoadPage<kD>(p, ring + (i % G::kStages) * 2 * G::kTile, page, kvh, tid);
    CpAsyncCommit();
  };
  const float2 fixed = p.mode == KvScaleMode::kTokenBlock
                           ? make_float2(0.0f, 0.0f)
                           : make_float2(PageScale(p, nullptr, kvh, false), PageScale(p, nullptr, kvh, true));
  float2 sc[G::kStages - 1];
#pragma unroll
  for (int i = 0; i < G::kStages - 1; ++i) {
    const uint8_t* page = i < npg ? p.pages[page_begin + i] : nullptr;
    load(page, i);
    sc[i] = MmaPageScales(p, page, kvh, fixed);
  }
  const uint8_t* next = G::kStages - 1 < npg ? p.pages[page_begin + G::kStages - 1] : nullptr;

  float o[G::kOTTiles][4];
#pragma unroll
  for (int mt = 0; mt < G::kOTTiles; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
  float vref = 0.0f;  // the true output is o * vref / kPScale

  for (int i = 0; i < npg; ++i) {
    CpAsyncWait<G::kStages - 2>();
    __syncthreads();  // page i is in; every warp is done with page i - 1
    load(next, i + G::kStages - 1);
    const float2 cur = sc[0];
#pragma unroll
    for (int k = 0; k + 1 < G::kStages - 1; ++k) sc[k] = sc[k + 1];
    sc[G::kStages - 2] = MmaPageScales(p, next, kvh, fixed);
    next = i + G::kStages < npg ? p.pages[page_begin + i + G::kStages] : nullptr;
    const uint8_t* kt = ring + (i % G::kStages) * 2 * G::kTile;
    const uint8_t* vt = kt + G::kTile;
    const int64_t t0 = static_cast<int64_t>(page_begin + i) * kPage;
    const int n = static_cast<int>(Min64(kPage, p.seq - t0));
    float ratio = 1.0f;
    if (cur.y != 0.0f) {
      if (vref != 0.0f) ratio = vref / cur.y;
      vref = cur.y;
    }
    if (tok0 < n) {
      // S^T for the warp's 16 tokens, two accumulator chains.
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      {
        const int r = tok0 + g;
        uint32_t wa[4], wb[4];  // the codes of 4 k-steps
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          if (ks % 4 == 0) {
            G::LoadKPart(kt, r, t, ks / 4, wa);
            G::LoadKPart(kt, r + 8, t, ks / 4, wb);
          }
          uint32_t a0, a1, a2, a3;
          DecodeWordNan<kDec>(wa[ks % 4], a0, a2);
          DecodeWordNan<kDec>(wb[ks % 4], a1, a3);
          Mma(ks & 1 ? s2 : s, a0, a1, a2, a3, qf[ks][0], qf[ks][1]);
        }
      }
      const float kf = cur.x * p.scale * kLog2e;  // scores in log2 units
      const int lim0 = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis0 - t0)));
      const int lim1 = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis1 - t0)));
      const int ta = tok0 + g, tb = ta + 8;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[e] += s2[e];
        s[e] += __shfl_xor_sync(0xffffffffu, s[e], 2);  // hi + lo columns
      }
      // s: (token ta, r0), (ta, r0 + 1), (tb, r0), (tb, r0 + 1).
      s[0] = ta <= lim0 ? s[0] * (kf * qf0) : kNegInf;
      s[1] = ta <= lim1 ? s[1] * (kf * qf1) : kNegInf;
      s[2] = tb <= lim0 ? s[2] * (kf * qf0) : kNegInf;
      s[3] = tb <= lim1 ? s[3] * (kf * qf1) : kNegInf;
      float mx0 = fmaxf(s[0], s[2]), mx1 = fmaxf(s[1], s[3]);
#pragma unroll
      for (int o2 = 4; o2 <= 16; o2 <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o2));
      }
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      const float al0 = m0 == kNegInf ? 0.0f : exp2f(m0 - mn0);
      const float al1 = m1 == kNegInf ? 0.0f : exp2f(m1 - mn1);
      m0 = mn0;
      m1 = mn1;
      s[0] = s[0] == kNegInf ? 0.0f : exp2f(s[0] - mn0);
      s[1] = s[1] == kNegInf ? 0.0f : exp2f(s[1] - mn1);
      s[2] = s[2] == kNegInf ? 0.0f : exp2f(s[2] - mn0);
      s[3] = s[3] == kNegInf ? 0.0f : exp2f(s[3] - mn1);
      l0 = l0 * al0 + (s[0] + s[2]);  // this lane's tokens; summed over g at the end
      l1 = l1 * al1 + (s[1] + s[3]);
      const float c0 = al0 * ratio, c1 = al1 * ratio;
      ratio = 1.0f;
      if (!__all_sync(0xffffffffu, c0 == 1.0f && c1 == 1.0f)) {
#pragma unroll
        for (int mt = 0; mt < G::kOTTiles; ++mt) {
          o[mt][0] *= c0;
          o[mt][1] *= c1;
          o[mt][2] *= c0;
          o[mt][3] *= c1;
        }
      }
      // P^T: this lane's part (hi or lo) of P * 2^10, transposed.
      uint32_t xa, xb, lo;
      SplitHalves(s[0] * kPScale, s[1] * kPScale, xa, lo);
      if (t >= 2) xa = lo;
      SplitHalves(s[2] * kPScale, s[3] * kPScale, xb, lo);
      if (t >= 2) xb = lo;
      const uint32_t b0 = MovTrans(xa), b1 = MovTrans(xb);
      // O^T += V^T P^T.
      const int rv = tok0 + 2 * t;
      constexpr int kPart = G::kVPart;  // V words read at a time
      uint32_t w0[kPart], w1[kPart], w8[kPart], w9[kPart];
#pragma unroll
      for (int q = 0; q < kVWords; ++q) {
        if (q % kPart == 0) {
          G::LoadVPart(vt, rv, g, q / kPart, w0);
          G::LoadVPart(vt, rv + 1, g, q / kPart, w1);
          G::LoadVPart(vt, rv + 8, g, q / kPart, w8);
          G::LoadVPart(vt, rv + 9, g, q / kPart, w9);
        }
        const int x = q % kPart;
        uint32_t a0, a1, a2, a3;
        DecodeWordNan<kDec>(__byte_perm(w0[x], w1[x], 0x5140), a0, a1);  // dims WordDim(q, g) + 0, 1
        DecodeWordNan<kDec>(__byte_perm(w8[x], w9[x], 0x5140), a2, a3);
        Mma(o[2 * q], a0, a1, a2, a3, b0, b1);
        DecodeWordNan<kDec>(__byte_perm(w0[x], w1[x], 0x7362), a0, a1);  // + 2, 3
        DecodeWordNan<kDec>(__byte_perm(w8[x], w9[x], 0x7362), a2, a3);
        Mma(o[2 * q + 1], a0, a1, a2, a3, b0, b1);
      }
    }
    if (ratio != 1.0f) {  // no token of the page in this warp's slice
#pragma unroll
      for (int mt = 0; mt < G::kOTTiles; ++mt) {
        o[mt][0] *= ratio;
        o[mt][1] *= ratio;
        o[mt][2] *= ratio;
        o[mt][3] *= ratio;
      }
    }
  }
  CpAsyncWait<0>();
  __syncthreads();  // the ring is free: it holds the warps' partial results now

  // Sum l over the lanes' tokens and O's hi and lo columns, then each warp's
  // (m, l, O) per row goes to shared memory.
#pragma unroll
  for (int o2 = 4; o2 <= 16; o2 <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o2);
  }
#pragma unroll
  for (int mt = 0; mt < G::kOTTiles; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[mt][e] += __shfl_xor_sync(0xffffffffu, o[mt][e], 2);
  }
  float* const ob = reinterpret_cast<float*>(ring);      // [warp][row][kOutLd]
  float* const mlb = ob + kMmaWarps * kFewRows * kOutLd;  // [warp][row][2]
  if (t < 2) {
    const float f = vref / kPScale;
    float* o0 = ob + (warp * kFewRows + r0) * kOutLd;
    float* o1 = o0 + kOutLd;
#pragma unroll
    for (int mt = 0; mt < G::kOTTiles; ++mt) {
      const int d = G::WordDim(mt >> 1, g) + 2 * (mt & 1);  // rows g and g + 8: d and d + 1
      o0[d] = o[mt][0] * f;
      o1[d] = o[mt][1] * f;
      o0[d + 1] = o[mt][2] * f;
      o1[d + 1] = o[mt][3] * f;
    }
    if (g == 0) {
      mlb[(warp * kFewRows + r0) * 2] = m0;
      mlb[(warp * kFewRows + r0) * 2 + 1] = l0;
      mlb[(warp * kFewRows + r0 + 1) * 2] = m1;
      mlb[(warp * kFewRows + r0 + 1) * 2 + 1] = l1;
    }
  }
  __syncthreads();
  // The warps merge in a fixed order; the block writes its rows for the
  // combine (FinishSplit).
  const int64_t slot = SplitSlot(p, unit, split);
  for (int i = tid; i < nrows * kD; i += kMmaThreads) {
    const int r = i / kD, d = i % kD;
    MergeWarpsToSplit<kFewRows, kOutLd, false>(p, ob, mlb, 0, kMmaWarps, r, d, slot, kFewRows,
                                                  r);
  }
  FinishSplit(p, unit);
}

}  // namespace plume::cuda::attn
