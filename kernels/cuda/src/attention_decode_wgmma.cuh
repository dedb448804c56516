// The Hopper decode (sm_90a; instantiated by attention_decode_wgmma.cu, run by
// the CPU emulation in tests/emu/decode_wgmma_emu_test.cc): padded head dims
// 64 and 128, more than 32 query rows per kv head (batch >= 9 at GQA group 4).
//
// One block per (kv head, tile of up to 64 of its query rows, split of the
// pages), as DecodeMmaKernel, so each page is read once per 64 rows; but the
// page is decoded once, and the MMAs are warp-group wgmma:
//  - The producer warp group streams each page's K and V codes into a ring
//    of kStages stages with bulk copies, and decodes them to FP16 into one
//    of kBuffers tile buffers in the wgmma operand layout
//    (attention_wgmma_page.cuh).
//  - Two consumer warp groups take the split's pages in turn (consumer c
//    pages c, c + 2, ...), each with its own online softmax over all 64
//    rows: S = Q K^T (m64n64k16, Q and K from shared memory), the softmax in
//    FP32, O += P V (m64nDk16, P from registers). One's softmax runs while
//    the other's MMAs do. At the end the two merge in shared memory and the
//    block writes its split's partial rows (attention_split.cuh).
//
// FP32 accuracy from FP16 tensor cores, as DecodeMmaKernel: each query row
// is scaled by a power of two to max |q| < 1 and split into FP16 hi + lo
// (lo only for FP32 queries), and P (times kPScale) is split the same way;
// the K/V side is exact FP16. So S takes D / 16 MMAs a page (twice that for
// FP32 queries) and P V 8.
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_fp8.cuh"
#include "attention_pages.cuh"
#include "attention_split.cuh"
#include "attention_wgmma_page.cuh"
#include "sm90_limits.h"
#ifndef PLUME_CUDA_EMULATION
#include "sm90.cuh"
#include "wgmma.cuh"
#endif

namespace plume::cuda::attn {

template <int kD>
struct WgDecode {
  static_assert(kD == 64 || kD == 128);
  static constexpr int kRows = 64;  // query rows of a block (its tile_rows)
  static constexpr int kThreads = 3 * 128;
  static constexpr int kStages = 4;   // pages of FP8 codes in flight
  static constexpr int kBuffers = 4;  // FP16 pages, two per consumer
  // Registers a thread (setmaxnreg): 384 threads start at 168; the producer
  // gives back what the consumers take, and all return to 168 for the end.
  static constexpr int kBaseRegs = (65536 / kThreads) & ~7;  // 168
  static constexpr int kProducerRegs = 72;
  static constexpr int kConsumerRegs = 216;
  static_assert(2 * (kConsumerRegs - kBaseRegs) <= kBaseRegs - kProducerRegs);
  static constexpr int kQBytes = kRows * kD * 2;  // Q hi (or lo), FP16
  static constexpr int kTileBytes = kPage * kD * 2;  // a page's K (or V) in FP16
  static constexpr int kRawBytes = 2 * kPage * kD;  // a page's K and V codes
  static constexpr int kOutLd = kD + kD / 32;        // the end's rows, floats (skewed)
  static constexpr size_t kSmem = 2 * size_t{kQBytes} + size_t{kBuffers} * 2 * kTileBytes +
                                  size_t{kStages} * kRawBytes;
  static_assert(kSmem <= size_t{kSm90BlockSmemBytes});
  static_assert(2 * kRows * kOutLd * 4 + 2 * kRows * 2 * 4 <= kBuffers * 2 * kTileBytes);
};

template <int kStages, int kBuffers>
struct WgDecodeBars {
  uint64_t raw_full[kStages];
  uint64_t tile_full[kBuffers];
  uint64_t tile_empty[kBuffers];
};

template <int kD, Dec kDec>
__global__ void __launch_bounds__(WgDecode<kD>::kThreads, 1) DecodeWgmmaKernel(const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(PLUME_CUDA_EMULATION)
  using W = WgDecode<kD>;
  PLUME_DYNAMIC_SMEM(smem_raw);
  PLUME_SHARED WgDecodeBars<W::kStages, W::kBuffers> bars;
  PLUME_SHARED float qf_s[W::kRows];  // each row's power of two (see above)
  uint8_t* const smem = reinterpret_cast<uint8_t*>(smem_raw);
  __half* const q_hi = reinterpret_cast<__half*>(smem);
  __half* const q_lo = q_hi + W::kQBytes / 2;
  __half* const tiles = q_lo + W::kQBytes / 2;  // [buffer][K, V^T]
  uint8_t* const raw = reinterpret_cast<uint8_t*>(tiles) + W::kBuffers * 2 * W::kTileBytes;  // [stage][K, V]

  const int tid = static_cast<int>(threadIdx.x);
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0), wtid = tid & 127;
  const int unit = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.y);
  const int tile = unit % p.row_tiles, kvh = unit / p.row_tiles;
  const int lr0 = tile * p.tile_rows;
  const int nrows = min(p.tile_rows, p.rows - lr0);
  const int64_t last = TileLastVisible(p, lr0, nrows);
  const int page_begin = split * p.pages_per_split;
  const int npg = max(0, SplitPageEnd(p, page_begin, last) - page_begin);
  const int64_t koff = static_cast<int64_t>(kvh) * p.head_tile;
  const int64_t voff = p.codes_bytes + koff;
  const unsigned tile_bytes = static_cast<unsigned>(kPage * p.row_bytes);
  // The end's (m, l, O) per consumer and row, over the tile buffers.
  float* const ob = reinterpret_cast<float*>(tiles);  // [consumer][64][kOutLd]
  float* const mlb = ob + 2 * W::kRows * W::kOutLd;   // [consumer][64][2]

  if (tid == 0) {
    for (int s = 0; s < W::kStages; ++s) MbarInit(&bars.raw_full[s], 1);
    for (int b = 0; b < W::kBuffers; ++b) {
      MbarInit(&bars.tile_full[b], 128);  // every producer thread
      MbarInit(&bars.tile_empty[b], 4);   // the consumer's four warps
    }
    FenceMbarrierInit();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    SetMaxRegsDec<W::kProducerRegs>();
    const auto issue = [&](int i) {
      uint8_t* st = raw + (i % W::kStages) * W::kRawBytes;
      const uint8_t* page = p.pages[page_begin + i];
      MbarExpectTx(&bars.raw_full[i % W::kStages], 2 * tile_bytes);
      BulkLoad(st, page + koff, tile_bytes, &bars.raw_full[i % W::kStages]);
      BulkLoad(st + kPage * kD, page + voff, tile_bytes, &bars.raw_full[i % W::kStages]);
    };
    if (wtid == 0) {
      for (int i = 0; i < min(npg, W::kStages); ++i) issue(i);
    }
    if (p.row_bytes < kD) {  // columns past row_bytes are never decoded: zero
      for (int i = wtid; i < W::kBuffers * 2 * W::kTileBytes / 16; i += 128) {
        reinterpret_cast<uint4*>(tiles)[i] = make_uint4(0, 0, 0, 0);
      }
      NamedBarrier(1, 128);
    }
    for (int i = 0; i < npg; ++i) {
      const int b = i % W::kBuffers;
      if (i >= W::kBuffers) MbarWait(&bars.tile_empty[b], ((i / W::kBuffers) - 1) & 1);
      MbarWait(&bars.raw_full[i % W::kStages], (i / W::kStages) & 1);
      const uint8_t* st = raw + (i % W::kStages) * W::kRawBytes;
      __half* kh = tiles + b * W::kTileBytes;  // halves: K then V^T, kTileBytes / 2 each
      if (p.row_bytes == kD) {
        DecodeKPage<kDec, kD>(st, kh, kD, wtid);
        DecodeVPage<kDec, kD, kD>(st + kPage * kD, kh + W::kTileBytes / 2, kD, wtid);
      } else {
        DecodeKPage<kDec, 0>(st, kh, p.row_bytes, wtid);
        DecodeVPage<kDec, kD, 0>(st + kPage * kD, kh + W::kTileBytes / 2, p.row_bytes, wtid);
      }
      FenceProxyAsync();
      MbarArrive(&bars.tile_full[b]);
      NamedBarrier(1, 128);  // every producer thread is done with the stage: refill it
      if (wtid == 0 && i + W::kStages < npg) {
        FenceProxyAsync();
        issue(i + W::kStages);
      }
    }
    NamedBarrier(3, W::kThreads);  // the consumers have given their registers back
    SetMaxRegsInc<W::kBaseRegs>();
  } else {
    // ----------------------------------------------------------- consumers
    SetMaxRegsInc<W::kConsumerRegs>();
    float o[kD / 2];  // O rows 16w + g, + 8 (m64nD accumulators)
    float m_a = kNegInf, m_b = kNegInf, l_a = 0.0f, l_b = 0.0f;
    float vref = 0.0f;  // the true output is o * vref / kPScale
    const int cw = wg - 1;  // consumer index
    const int w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int ra = 16 * w + g, rb = ra + 8;  // a consumer lane's rows in the tile

    const bool q_lo_on = p.q_dtype == DType::kF32;  // FP16 and BF16 queries are exact in hi
    {
      // Q: four threads a row, kD / 4 dims each, scaled by the row's power
      // of two and split into FP16 hi + lo; rows past the tile zero.
      constexpr int kDims = kD / 4;
      const int ct = tid - 128, m = ct >> 2, d0 = kDims * (ct & 3);
      const int64_t base = m < nrows ? QueryIndex(p, kvh, lr0 + m) * p.head_dim : -1;
      float x[kDims];
      float mx = 0.0f;
#pragma unroll
      for (int k = 0; k < kDims / 4; ++k) {
        float v[4];
        LoadQ4(p, base, d0 + 4 * k, v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          x[4 * k + e] = v[e];
          mx = fmaxf(mx, fabsf(v[e]));
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      int ex = 0;
      if (mx > 0.0f && mx <= 3.0e38f) frexpf(mx, &ex);
      ex = max(ex, -120);  // 2^-ex stays finite
      const float sc = ldexpf(1.0f, -ex);  // an exact power of two
      if ((ct & 3) == 0) qf_s[m] = ldexpf(1.0f, ex);
#pragma unroll
      for (int k = 0; k < kDims / 8; ++k) {  // 8 dims a store
        uint32_t hi[4], lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) SplitHalves(x[8 * k + 2 * e] * sc, x[8 * k + 2 * e + 1] * sc, hi[e], lo[e]);
        const int off = CoreOffset(W::kRows, m, d0 + 8 * k);
        *reinterpret_cast<uint4*>(q_hi + off) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        if (q_lo_on) *reinterpret_cast<uint4*>(q_lo + off) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
      }
      FenceProxyAsync();
      NamedBarrier(2, 256);
    }
    const int64_t vis_a = ra < nrows ? LastVisible(p, lr0 + ra) : -1;
    const int64_t vis_b = rb < nrows ? LastVisible(p, lr0 + rb) : -1;
    const float kfa = p.scale * kLog2e * qf_s[ra], kfb = p.scale * kLog2e * qf_s[rb];
    const bool block_scales = p.mode == KvScaleMode::kTokenBlock;
    const float fixed_k = block_scales ? 0.0f : PageScale(p, nullptr, kvh, false);
    const float fixed_v = block_scales ? 0.0f : PageScale(p, nullptr, kvh, true);
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;
    const uint32_t qh_addr = SmemAddr(q_hi), ql_addr = SmemAddr(q_lo);
    const uint32_t tiles_addr = SmemAddr(tiles);

    for (int i = cw; i < npg; i += 2) {
      const int b = i % W::kBuffers;
      float ks = fixed_k, vs = fixed_v;
      if (block_scales) {  // loads issued before the wait, which hides them
        const uint8_t* page = p.pages[page_begin + i];
        ks = PageScale(p, page, kvh, false);
        vs = PageScale(p, page, kvh, true);
      }
      MbarWait(&bars.tile_full[b], (i / W::kBuffers) & 1);
      const uint32_t k_addr = tiles_addr + b * 2 * W::kTileBytes;
      const uint32_t v_addr = k_addr + W::kTileBytes;

      // S = Q K^T over the head dim (hi, then lo).
      float s[8][4];
      float(&sf)[32] = reinterpret_cast<float(&)[32]>(s);
      WgmmaFence();
#pragma unroll
      for (int k = 0; k < kD / 16; ++k) {
        WgmmaSs64(sf, CoreDesc(qh_addr + k * CoreStepBytes(W::kRows)), CoreDesc(k_addr + k * CoreStepBytes(kPage)),
                  k > 0 ? 1 : 0);
      }
      if (q_lo_on) {
#pragma unroll
        for (int k = 0; k < kD / 16; ++k) {
          WgmmaSs64(sf, CoreDesc(ql_addr + k * CoreStepBytes(W::kRows)),
                    CoreDesc(k_addr + k * CoreStepBytes(kPage)), 1);
        }
      }
      WgmmaCommit();
      WgmmaWait<0>();
      FenceOperands(sf);

      // Scores in log2 units; -inf past the page's tokens or what a row sees.
      const int64_t t0 = static_cast<int64_t>(page_begin + i) * kPage;
      const int n = static_cast<int>(Min64(kPage, p.seq - t0));
      const int lim_a = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis_a - t0)));
      const int lim_b = static_cast<int>(max(int64_t{-1}, Min64(n - 1, vis_b - t0)));
      const float ka = ks * kfa, kb = ks * kfb;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = 8 * j + 2 * t + e;
          s[j][e] = tok <= lim_a ? s[j][e] * ka : kNegInf;
          s[j][2 + e] = tok <= lim_b ? s[j][2 + e] * kb : kNegInf;
        }
      }
      float al_a, al_b;
      OnlineSoftmaxStep<8, true>(s, m_a, m_b, l_a, l_b, al_a, al_b);
      // O is kept relative to the current page's V scale.
      float ratio = 1.0f;
      if (vs != 0.0f) {
        if (vref != 0.0f) ratio = vref / vs;
        vref = vs;
      }
      const float ca = al_a * ratio, cb = al_b * ratio;
      if (!__all_sync(0xffffffffu, ca == 1.0f && cb == 1.0f)) {
#pragma unroll
        for (int j = 0; j < kD / 8; ++j) {
          o[4 * j] *= ca;
          o[4 * j + 1] *= ca;
          o[4 * j + 2] *= cb;
          o[4 * j + 3] *= cb;
        }
      }

      // P as the A fragments of P V, hi and lo: k-step kk is tokens 16kk ..
      // 16kk + 15 (row g, row g + 8, row g tokens + 8, row g + 8 tokens + 8).
      uint32_t ph[4][4], pl[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        SplitHalves(s[2 * kk][0] * kPScale, s[2 * kk][1] * kPScale, ph[kk][0], pl[kk][0]);
        SplitHalves(s[2 * kk][2] * kPScale, s[2 * kk][3] * kPScale, ph[kk][1], pl[kk][1]);
        SplitHalves(s[2 * kk + 1][0] * kPScale, s[2 * kk + 1][1] * kPScale, ph[kk][2], pl[kk][2]);
        SplitHalves(s[2 * kk + 1][2] * kPScale, s[2 * kk + 1][3] * kPScale, ph[kk][3], pl[kk][3]);
      }
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint64_t vd = CoreDesc(v_addr + kk * CoreStepBytes(kD));
        Wgmma<kD>::Run(o, ph[kk], vd, 1);
        Wgmma<kD>::Run(o, pl[kk], vd, 1);
      }
      WgmmaCommit();
      WgmmaWait<0>();
      FenceOperands(o);
      FenceOperands(ph);
      FenceOperands(pl);
      __syncwarp();
      if (lane == 0) MbarArrive(&bars.tile_empty[b]);
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      l_a += __shfl_xor_sync(0xffffffffu, l_a, x);
      l_b += __shfl_xor_sync(0xffffffffu, l_b, x);
    }
    SetMaxRegsDec<W::kBaseRegs>();
    NamedBarrier(3, W::kThreads);
    // Both consumers are done with the tile buffers, which now take their
    // (m, l, O) per row.
    const float f = vref / kPScale;
    float* oa = ob + (cw * W::kRows + ra) * W::kOutLd;
    float* orb = oa + 8 * W::kOutLd;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t + e;
        oa[c + c / 32] = o[4 * j + e] * f;
        orb[c + c / 32] = o[4 * j + 2 + e] * f;
      }
    }
    if (t == 0) {
      mlb[(cw * W::kRows + ra) * 2] = m_a;
      mlb[(cw * W::kRows + ra) * 2 + 1] = l_a;
      mlb[(cw * W::kRows + rb) * 2] = m_b;
      mlb[(cw * W::kRows + rb) * 2 + 1] = l_b;
    }
  }

  // The two consumers' rows merged in a fixed order into the split's rows.
  __syncthreads();
  const int64_t slot = SplitSlot(p, unit, split);
  for (int i = tid; i < nrows * kD; i += W::kThreads) {
    const int r = i / kD, d = i % kD;
    MergeWarpsToSplit<W::kRows, W::kOutLd, true>(p, ob, mlb, 0, 2, r, d, slot, p.tile_rows, r);
  }
  FinishSplit(p, unit);
#endif
}

}  // namespace plume::cuda::attn
