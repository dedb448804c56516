// The older prefill kernel (PrefillKernel): mma.sync over FP16 tiles decoded
// once per page, the fallback where the flash prefill (attention_prefill.cu)
// does not run: sm_75, and shared memory limits it does not fit (head dim
// 256+ on sm_86/89). Instantiated by attention_prefill_fallback.cu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_fp8.cuh"
#include "attention_pages.cuh"

namespace plume::cuda::attn {

constexpr int kPrefillWarps = 4;
constexpr int kPrefillThreads = kPrefillWarps * 32;
constexpr int kPrefillRows = kPrefillWarps * 16;  // query rows per block, 16 per warp
constexpr int kMaxDv = 128;                       // output columns per block (a column slice)
constexpr int kVtLd = kPage + 8;                  // row of the transposed V tile, in halves

template <int kD>
struct PrefillShape {
  static constexpr int kDv = kD < kMaxDv ? kD : kMaxDv;
  static constexpr int kLd = kD + 8;  // Q and K rows in shared memory, in halves
  static constexpr size_t kSmem = (size_t{2} * kPrefillRows * kLd + size_t{kDv} * kVtLd) * 2;
};

__device__ __forceinline__ uint32_t Ld32(const __half* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Grid: (units, column slices), a unit being (kv head, tile of 64 of its
// query rows). Warp w owns rows 16w..16w+15 of the tile; every page's K tile
// (all head_dim columns) and V tile (the slice's columns, transposed) are
// decoded to FP16 shared memory, then S = Q K^T and O += P V run on mma.
template <int kD>
__global__ void __launch_bounds__(kPrefillThreads) PrefillKernel(const Params p, const Dec dec) {
  using S = PrefillShape<kD>;
  constexpr int kDv = S::kDv;
  constexpr int kLd = S::kLd;
  PLUME_DYNAMIC_SMEM(smem);
  __half* qs = smem;                          // [64][kLd]
  __half* ks = qs + kPrefillRows * kLd;       // [64 tokens][kLd]
  __half* vt = ks + kPage * kLd;              // [kDv columns][kVtLd tokens]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int unit = blockIdx.x;
  const int col0 = blockIdx.y * kDv;
  const int tile = unit % p.row_tiles;
  const int kvh = unit / p.row_tiles;
  const int lr0 = tile * kPrefillRows;
  const int nrows = min(kPrefillRows, p.rows - lr0);

  for (int i = tid; i < kPrefillRows * kD; i += kPrefillThreads) {
    const int r = i / kD, d = i % kD;
    const float v = r < nrows && d < p.head_dim
                        ? LoadQ(p.q, p.q_dtype, QueryIndex(p, kvh, lr0 + r) * p.head_dim + d)
                        : 0.0f;
    qs[r * kLd + d] = __float2half_rn(v);
  }
  const int64_t last = TileLastVisible(p, lr0, nrows);
  const int page_end = static_cast<int>(Min64(p.num_pages, last / kPage + 1));

  // This lane's two rows (g and g + 8 of the warp's 16) and what they see.
  const int ra = warp * 16 + g, rb = ra + 8;
  const int64_t vis_a = ra < nrows ? LastVisible(p, lr0 + ra) : -1;
  const int64_t vis_b = rb < nrows ? LastVisible(p, lr0 + rb) : -1;

  constexpr int kNo = kDv / 8;  // output n-tiles
  float o[kNo][4];
#pragma unroll
  for (int n = 0; n < kNo; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_a = kNegInf, m_b = kNegInf, l_a = 0.0f, l_b = 0.0f;
  float vref = 0.0f;  // the true output is o * vref (V scales change per page)

  for (int pg = 0; pg < page_end; ++pg) {
    const uint8_t* page = p.pages[pg];
    const int64_t t0 = static_cast<int64_t>(pg) * kPage;
    const int n = static_cast<int>(Min64(kPage, p.seq - t0));
    const uint8_t* kbase = page + kvh * p.head_tile;
    const uint8_t* vbase = page + p.codes_bytes + kvh * p.head_tile;

    __syncthreads();  // the previous page's tiles are no longer read
    // K: 16 codes per thread and step, rows past n (and columns past the row) zero.
    for (int i = tid; i < kPage * (kD / 16); i += kPrefillThreads) {
      const int r = i / (kD / 16), u = i % (kD / 16);
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < n && u * 16 < p.row_bytes) {
        v = __ldg(reinterpret_cast<const uint4*>(kbase + static_cast<int64_t>(r) * p.row_bytes + u * 16));
      }
      uint32_t h[8];
      DecodeWordRt(dec, v.x, h[0], h[1]);
      DecodeWordRt(dec, v.y, h[2], h[3]);
      DecodeWordRt(dec, v.z, h[4], h[5]);
      DecodeWordRt(dec, v.w, h[6], h[7]);
      uint4* dst = reinterpret_cast<uint4*>(ks + r * kLd + u * 16);
      dst[0] = make_uint4(h[0], h[1], h[2], h[3]);
      dst[1] = make_uint4(h[4], h[5], h[6], h[7]);
    }
    // V: the slice's columns, transposed to [column][token].
    for (int i = tid; i < kPage * (kDv / 16); i += kPrefillThreads) {
      const int r = i % kPage, u = i / kPage;
      const int c = col0 + u * 16;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < n && c < p.row_bytes) {
        v = __ldg(reinterpret_cast<const uint4*>(vbase + static_cast<int64_t>(r) * p.row_bytes + c));
      }
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t lo, hi;
        DecodeWordRt(dec, words[j], lo, hi);
        __half* col = vt + (u * 16 + 4 * j) * kVtLd + r;
        col[0] = __ushort_as_half(static_cast<unsigned short>(lo & 0xffffu));
        col[kVtLd] = __ushort_as_half(static_cast<unsigned short>(lo >> 16));
        col[2 * kVtLd] = __ushort_as_half(static_cast<unsigned short>(hi & 0xffffu));
        col[3 * kVtLd] = __ushort_as_half(static_cast<unsigned short>(hi >> 16));
      }
    }
    __syncthreads();

    // S = Q K^T for the warp's 16 rows and the page's 64 tokens.
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    const __half* qa = qs + ra * kLd + 2 * t;
    const __half* qb = qs + rb * kLd + 2 * t;
#pragma unroll 4
    for (int k0 = 0; k0 < kD; k0 += 16) {
      const uint32_t a0 = Ld32(qa + k0), a1 = Ld32(qb + k0);
      const uint32_t a2 = Ld32(qa + k0 + 8), a3 = Ld32(qb + k0 + 8);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const __half* kr = ks + (8 * j + g) * kLd + k0 + 2 * t;
        Mma(s[j], a0, a1, a2, a3, Ld32(kr), Ld32(kr + 8));
      }
    }

    // Online softmax in FP32; masked scores are -inf.
    const float kscale = PageScale(p, page, kvh, false) * p.scale;
    const float vs = PageScale(p, page, kvh, true);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tok = 8 * j + 2 * t + e;
        const bool in = tok < n;
        s[j][e] = in && t0 + tok <= vis_a ? s[j][e] * kscale : kNegInf;
        s[j][2 + e] = in && t0 + tok <= vis_b ? s[j][2 + e] * kscale : kNegInf;
      }
    }
    float al_a, al_b;
    OnlineSoftmaxStep<8, false>(s, m_a, m_b, l_a, l_b, al_a, al_b);
    // Rescale O to this page's V scale (TOKEN_BLOCK scales change per page).
    float ratio = 1.0f;
    if (vs != 0.0f) {
      if (vref != 0.0f) ratio = vref / vs;
      vref = vs;
    }
#pragma unroll
    for (int nn = 0; nn < kNo; ++nn) {
      o[nn][0] *= al_a * ratio;
      o[nn][1] *= al_a * ratio;
      o[nn][2] *= al_b * ratio;
      o[nn][3] *= al_b * ratio;
    }

    // O += P V: P's accumulator fragments are the A fragments of the next mma.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t a0 = PackHalves(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t a1 = PackHalves(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t a2 = PackHalves(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t a3 = PackHalves(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nn = 0; nn < kNo; ++nn) {
        const __half* vr = vt + (8 * nn + g) * kVtLd + 16 * kk + 2 * t;
        Mma(o[nn], a0, a1, a2, a3, Ld32(vr), Ld32(vr + 8));
      }
    }
  }

  // The row sums are spread over the four lanes of a row.
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
  }
  const float fa = vref / l_a, fb = vref / l_b;
  const int64_t qa_i = ra < nrows ? QueryIndex(p, kvh, lr0 + ra) : -1;
  const int64_t qb_i = rb < nrows ? QueryIndex(p, kvh, lr0 + rb) : -1;
#pragma unroll
  for (int nn = 0; nn < kNo; ++nn) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = col0 + 8 * nn + 2 * t + e;
      if (c >= p.head_dim) continue;
      if (qa_i >= 0) Store(p.out, p.out_dtype, qa_i * p.head_dim + c, o[nn][e] * fa);
      if (qb_i >= 0) Store(p.out, p.out_dtype, qb_i * p.head_dim + c, o[nn][2 + e] * fb);
    }
  }
}

}  // namespace plume::cuda::attn
