// The Hopper flash prefill (sm_90a; this file is compiled for that target
// only), head dims padding to 128. The dispatch (attention_dispatch.cu) runs
// it on compute capability 9.0 in place of the mma.sync flash prefill
// (attention_prefill.cu), whose structure it keeps: a block takes 128 query
// rows of one kv head, one K/V page (64 tokens) at a time, online softmax in
// FP32, Q and P rounded to FP16, K and V exact in FP16.
//
// Three warp groups:
//  - The producer streams each page's K and V codes (two contiguous tiles)
//    into a ring of shared-memory stages with bulk copies that complete on
//    mbarriers, and decodes them to FP16 into one of two tile buffers in the
//    wgmma operand layout (attention_wgmma_page.cuh: K-major, 8 x 8 core
//    matrices, no swizzle): K as [token][dim], V transposed to [dim][token]
//    so that both products read K-major operands.
//  - Two consumers, 64 rows each, run S = Q K^T (wgmma m64n64k16, Q and K
//    from shared memory), the softmax on S in registers, and O += P V
//    (wgmma m64nDk16, P from registers in the accumulator's own layout, V
//    from shared memory). Each releases the tile buffer once its P V is done.
// The producer keeps few registers (setmaxnreg) so the consumers get more.
//
// Measured on an H200 (bench/RESULTS-gpu-attention.md): 1.26x the mma.sync
// prefill at 32 heads S=4096 D=128 causal, no gain at D=64 (which therefore
// stays on mma.sync), and slower (654 -> 798 us) when the next page's Q K^T
// was issued before this page's softmax, or when the consumers took turns
// issuing Q K^T (docs/bench-raw/attention-hopper).
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "attention_prefill.h"
#include "attention_prefill_common.cuh"
#include "attention_wgmma_page.cuh"
#include "plume/cuda/check.h"
#include "sm90.cuh"
#include "sm90_limits.h"
#include "wgmma.cuh"

namespace plume::cuda {
namespace {

constexpr int kTok = static_cast<int>(kKvPageTokens);  // tokens per page: a tile
constexpr int kWgRows = 64;                             // query rows per consumer
constexpr int kBlockRows = 2 * kWgRows;
constexpr int kThreads = 3 * 128;
constexpr int kProducerRegs = 56;
constexpr int kConsumerRegs = 224;
constexpr int kRawStages = 4;
// Measurement builds only (scripts/build-kernel-variant.sh; wrong results):
// 1 the producer skips the FP8 decode, 2 the consumers skip all math, 3 the
// consumers skip the softmax (P is S rounded to FP16).
#ifndef PLUME_WG_PREFILL_VARIANT
#define PLUME_WG_PREFILL_VARIANT 0
#endif
constexpr int kVariant = PLUME_WG_PREFILL_VARIANT;

template <int kD>
struct WgShape {
  static constexpr int kTileHalves = kTok * kD;    // a decoded K or V tile
  static constexpr int kQHalves = kBlockRows * kD;
  static constexpr int kRawBytes = 2 * kTok * kD;  // K and V codes (row_bytes <= kD)
  static constexpr size_t kSmem =
      size_t{kQHalves} * 2 + size_t{2} * 2 * kTileHalves * 2 + size_t{kRawStages} * kRawBytes + 128;
  static_assert(kSmem <= size_t{kSm90BlockSmemBytes});
  static constexpr int kAcc = kD / 2;  // O accumulators per thread
};

using attn::CoreDesc;
using attn::CoreOffset;

// Grid: kv_heads x row tiles, tile-major with the last tiles (the longest
// under causal masks) first.
template <int kD, Dec kDec>
__global__ void __launch_bounds__(kThreads, 1) PrefillWgmmaKernel(const FaArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = WgShape<kD>;
  extern __shared__ uint8_t wg_smem_raw[];
  __shared__ uint64_t raw_full[kRawStages];
  __shared__ uint64_t tile_full[2];
  __shared__ uint64_t tile_empty[2];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(wg_smem_raw) + 127) & ~uintptr_t{127});
  __half* qs = reinterpret_cast<__half*>(smem);                        // [consumer][64 rows x kD]
  __half* tiles = qs + S::kQHalves;                                    // [buffer][K, V^T]
  uint8_t* raw = reinterpret_cast<uint8_t*>(tiles + 4 * S::kTileHalves);  // [stage][K, V codes]

  const int tid = threadIdx.x;
  const int wg = tid >> 7, wtid = tid & 127;
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int tile = a.row_tiles - 1 - static_cast<int>(blockIdx.x / a.kv_heads);
  const int lr0 = tile * kBlockRows;
  const int nrows = min(kBlockRows, a.rows - lr0);
  int64_t vis_min, vis_max;
  FaVisible(a, lr0, nrows, vis_min, vis_max);
  const int pages = static_cast<int>(min(static_cast<int64_t>(a.num_pages), vis_max / kTok + 1));
  const int64_t koff = static_cast<int64_t>(kvh) * a.head_tile;
  const int64_t voff = a.codes_bytes + koff;
  const unsigned tile_bytes = static_cast<unsigned>(kTok * a.row_bytes);

  if (tid == 0) {
    for (int s = 0; s < kRawStages; ++s) MbarInit(&raw_full[s], 1);
    for (int b = 0; b < 2; ++b) {
      MbarInit(&tile_full[b], 128);
      MbarInit(&tile_empty[b], 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    SetMaxRegsDec<kProducerRegs>();
    const auto issue = [&](int pg) {
      uint8_t* st = raw + (pg % kRawStages) * S::kRawBytes;
      const uint8_t* page = a.pages[pg];
      MbarExpectTx(&raw_full[pg % kRawStages], 2 * tile_bytes);
      BulkLoad(st, page + koff, tile_bytes, &raw_full[pg % kRawStages]);
      BulkLoad(st + kTok * kD, page + voff, tile_bytes, &raw_full[pg % kRawStages]);
    };
    if (wtid == 0) {
      for (int pg = 0; pg < min(pages, kRawStages); ++pg) issue(pg);
    }
    // Columns past row_bytes are never decoded: zero in both buffers.
    for (int i = wtid; i < 4 * S::kTileHalves / 8; i += 128) {
      reinterpret_cast<uint4*>(tiles)[i] = make_uint4(0, 0, 0, 0);
    }
    NamedBarrier(1, 128);
    for (int pg = 0; pg < pages; ++pg) {
      const int b = pg & 1;
      if (pg >= 2) MbarWait(&tile_empty[b], ((pg >> 1) - 1) & 1);
      MbarWait(&raw_full[pg % kRawStages], (pg / kRawStages) & 1);
      const uint8_t* st = raw + (pg % kRawStages) * S::kRawBytes;
      __half* kh = tiles + b * 2 * S::kTileHalves;
      if constexpr (kVariant != 1) {
        if (a.row_bytes == kD) {  // the common case: head_dim a multiple of 16 near kD
          attn::DecodeKPage<kDec, kD>(st, kh, kD, wtid);
          attn::DecodeVPage<kDec, kD, kD>(st + kTok * kD, kh + S::kTileHalves, kD, wtid);
        } else {
          attn::DecodeKPage<kDec, 0>(st, kh, a.row_bytes, wtid);
          attn::DecodeVPage<kDec, kD, 0>(st + kTok * kD, kh + S::kTileHalves, a.row_bytes, wtid);
        }
      }
      FenceProxyAsync();
      MbarArrive(&tile_full[b]);
      // Every producer thread is done with the stage: refill it.
      NamedBarrier(1, 128);
      if (wtid == 0 && pg + kRawStages < pages) {
        FenceProxyAsync();
        issue(pg + kRawStages);
      }
    }
  } else {
    // ----------------------------------------------------------- consumers
    SetMaxRegsInc<kConsumerRegs>();
    const int cw = wg - 1;
    const int w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int r0 = cw * kWgRows;  // this consumer's first row in the block
    const int my_rows = max(0, min(kWgRows, nrows - r0));
    __half* q_mine = qs + cw * kWgRows * kD;

    // Q, rounded to FP16, 8 dims a unit; rows past the end and dims past
    // head_dim zero.
    for (int u = wtid; u < kWgRows * (kD / 8); u += 128) {
      const int m = u / (kD / 8), d0 = 8 * (u % (kD / 8));
      float x[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = 0.0f;
      if (m < my_rows) {
        const int64_t base = FaRow(a, kvh, lr0 + r0 + m) * a.head_dim;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          if (d0 + e < a.head_dim) x[e] = FaQ(a, base + d0 + e);
        }
      }
      uint4 v;
      v.x = Half2Bits(x[0], x[1]);
      v.y = Half2Bits(x[2], x[3]);
      v.z = Half2Bits(x[4], x[5]);
      v.w = Half2Bits(x[6], x[7]);
      *reinterpret_cast<uint4*>(q_mine + CoreOffset(kWgRows, m, d0)) = v;
    }
    FenceProxyAsync();
    NamedBarrier(2 + cw, 128);

    int64_t wg_vis_min = -1, wg_vis_max = -1;
    if (my_rows > 0) FaVisible(a, lr0 + r0, my_rows, wg_vis_min, wg_vis_max);
    const int ra = r0 + 16 * w + g, rb = ra + 8;  // this lane's rows in the block
    const int64_t vis_a = ra < nrows ? FaLastVisible(a, lr0 + ra) : -1;
    const int64_t vis_b = rb < nrows ? FaLastVisible(a, lr0 + rb) : -1;

    float o[S::kAcc];
#pragma unroll
    for (int i = 0; i < S::kAcc; ++i) o[i] = 0.0f;
    float m_a = kFaNegInf, m_b = kFaNegInf, l_a = 0.0f, l_b = 0.0f;
    float vref = 0.0f;  // the true output is o * vref (V scales may change per page)
    const uint32_t q_addr = SmemAddr(q_mine);
    const uint32_t tiles_addr = SmemAddr(tiles);

    for (int pg = 0; pg < pages; ++pg) {
      const int b = pg & 1;
      const int64_t t0 = static_cast<int64_t>(pg) * kTok;
      const bool active = t0 <= wg_vis_max;
      float kscale = 0.0f, vscale = 0.0f;
      if (active) {
        const uint8_t* page = a.pages[pg];
        kscale = FaScale(a, page, kvh, false) * a.scale_log2;
        vscale = FaScale(a, page, kvh, true);
      }
      MbarWait(&tile_full[b], (pg >> 1) & 1);
      if (active && kVariant != 2) {
        const uint32_t k_addr = tiles_addr + b * 4 * S::kTileHalves;
        const uint32_t v_addr = k_addr + 2 * S::kTileHalves;
        // S = Q K^T over the head dim.
        float s[32];
        WgmmaFence();
#pragma unroll
        for (int k = 0; k < kD / 16; ++k) {
          WgmmaSs64(s, CoreDesc(q_addr + k * kWgRows * 32), CoreDesc(k_addr + k * kTok * 32), k > 0 ? 1 : 0);
        }
        WgmmaCommit();
        WgmmaWait<0>();
        FenceOperands(s);

        // Scores in log2 units; -inf where masked (only pages that need it).
        // s[4j + e] is row g, s[4j + 2 + e] row g + 8, token 8j + 2t + e.
        const bool mask = kVariant != 3 && t0 + kTok - 1 > wg_vis_min;
        float mx_a = kFaNegInf, mx_b = kFaNegInf;
        if constexpr (kVariant != 3) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float xa = s[4 * j + e] * kscale, xb = s[4 * j + 2 + e] * kscale;
              if (mask) {
                const int64_t tok = t0 + 8 * j + 2 * t + e;
                xa = tok <= vis_a ? xa : kFaNegInf;
                xb = tok <= vis_b ? xb : kFaNegInf;
              }
              s[4 * j + e] = xa;
              s[4 * j + 2 + e] = xb;
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
          FaRebase(m_a, mx_a, base_a, al_a);
          FaRebase(m_b, mx_b, base_b, al_b);
          float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              s[4 * j + e] = exp2f(s[4 * j + e] - base_a);
              s[4 * j + 2 + e] = exp2f(s[4 * j + 2 + e] - base_b);
              sum_a += s[4 * j + e];
              sum_b += s[4 * j + 2 + e];
            }
          }
          l_a = l_a * al_a + sum_a;
          l_b = l_b * al_b + sum_b;
          const float ratio = FaVRatio(vscale, vref);  // O to this page's V scale
          const float fa = al_a * ratio, fb = al_b * ratio;
#pragma unroll
          for (int j = 0; j < S::kAcc / 4; ++j) {
            o[4 * j] *= fa;
            o[4 * j + 1] *= fa;
            o[4 * j + 2] *= fb;
            o[4 * j + 3] *= fb;
          }
        }  // kVariant != 3
        // P as the A fragments of P V: k-step kk is tokens 16kk .. 16kk + 15.
        uint32_t pa[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          pa[kk][0] = Half2Bits(s[8 * kk], s[8 * kk + 1]);
          pa[kk][1] = Half2Bits(s[8 * kk + 2], s[8 * kk + 3]);
          pa[kk][2] = Half2Bits(s[8 * kk + 4], s[8 * kk + 5]);
          pa[kk][3] = Half2Bits(s[8 * kk + 6], s[8 * kk + 7]);
        }
        WgmmaFence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) Wgmma<kD>::Run(o, pa[kk], CoreDesc(v_addr + kk * kD * 32), 1);
        WgmmaCommit();
        WgmmaWait<0>();
        FenceOperands(o);
        FenceOperands(pa);
      }
      __syncwarp();
      if (lane == 0) MbarArrive(&tile_empty[b]);
    }

    // Row sums over the four lanes of a row, then the output.
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      l_a += __shfl_xor_sync(0xffffffffu, l_a, x);
      l_b += __shfl_xor_sync(0xffffffffu, l_b, x);
    }
    const float fa = vref / l_a, fb = vref / l_b;
    const int64_t qa_i = ra < nrows ? FaRow(a, kvh, lr0 + ra) * a.head_dim : -1;
    const int64_t qb_i = rb < nrows ? FaRow(a, kvh, lr0 + rb) * a.head_dim : -1;
    const bool pairs = (a.head_dim & 1) == 0;  // then two columns are one aligned store
#pragma unroll
    for (int j = 0; j < S::kAcc / 4; ++j) {
      const int c = 8 * j + 2 * t;
      if (pairs && c < a.head_dim) {
        if (qa_i >= 0) StoreTwo(a.out, a.out_dtype, qa_i + c, o[4 * j] * fa, o[4 * j + 1] * fa);
        if (qb_i >= 0) StoreTwo(a.out, a.out_dtype, qb_i + c, o[4 * j + 2] * fb, o[4 * j + 3] * fb);
        continue;
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (c + e >= a.head_dim) continue;
        if (qa_i >= 0) Store(a.out, a.out_dtype, qa_i + c + e, o[4 * j + e] * fa);
        if (qb_i >= 0) Store(a.out, a.out_dtype, qb_i + c + e, o[4 * j + 2 + e] * fb);
      }
    }
  }
#endif
}

using WgFn = void (*)(FaArgs);

struct WgPick {
  WgFn fn = nullptr;
  size_t smem = 0;
};

template <int kD>
WgPick WgFor(Dec dec) {
  const WgFn fn = dec == Dec::kE4M3Soft     ? PrefillWgmmaKernel<kD, Dec::kE4M3Soft>
                  : dec == Dec::kE4M3Native ? PrefillWgmmaKernel<kD, Dec::kE4M3Native>
                  : dec == Dec::kE5M2Soft   ? PrefillWgmmaKernel<kD, Dec::kE5M2Soft>
                                            : PrefillWgmmaKernel<kD, Dec::kE5M2Native>;
  return {fn, WgShape<kD>::kSmem};
}

WgPick PickWg(int kd, Dec dec) {
  switch (kd) {
    case 128: return WgFor<128>(dec);
    default: return {};
  }
}

}  // namespace

bool PrefillWgmmaAvailable(int kd, int device) {
  return Sm90RunsEveryDecoder(device, [&](Dec dec) {
    const WgPick f = PickWg(kd, dec);
    return KernelFit{reinterpret_cast<const void*>(f.fn), f.smem, kThreads};
  });
}

cudaError_t PrefillWgmma(const AttentionProblem& p, int kd, cudaStream_t stream) {
  const FaArgs a = MakeFaArgs(p, kBlockRows);
  const WgPick f = PickWg(kd, a.dec);
  if (f.fn == nullptr || a.row_bytes > kd) return cudaErrorNotSupported;
  const int64_t blocks = static_cast<int64_t>(a.row_tiles) * a.kv_heads;
  if (blocks >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  f.fn<<<static_cast<unsigned>(blocks), kThreads, f.smem, stream>>>(a);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda
