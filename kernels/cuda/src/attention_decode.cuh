// The CUDA-core decode: FP32 math, up to kRows query rows of one kv head per
// block, for the padded head dims the tensor-core decodes do not serve (64,
// 256, 512, 1024). Instantiated by attention_decode.cu.
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_fp8.cuh"
#include "attention_pages.cuh"
#include "attention_split.cuh"

namespace plume::cuda::attn {

constexpr int kRows = 8;                                // decode: query rows per block

template <int kD>
struct DecodeShape {
  static constexpr int kThreads = kD >= 1024 ? 256 : 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kParts = kThreads / kPage;       // threads per token for Q.K
  static constexpr int kUnits = kD / 16;                // 16-byte pieces of a row
  static constexpr int kUnitsPerPart = kUnits / kParts;
  static constexpr int kWords = kD / 4;                 // 4-code words of a row
  static constexpr int kGroups = kThreads / kWords;     // token groups for P.V
  static constexpr int kTokensPerGroup = kPage / kGroups;
  static_assert(kUnitsPerPart >= 1 && kGroups >= 1 && kPage % kGroups == 0);
};

// Grid: (units, splits), a unit being (kv head, tile of kRows of its query
// rows, over the batch, the GQA group and q_len). Each block runs the online
// softmax over its split's pages and writes its unnormalized output, max and
// sum, and the last split of a unit to finish merges them (FinishSplit).
template <Dec kDec, int kD>
__global__ void __launch_bounds__(DecodeShape<kD>::kThreads, 1) DecodeKernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  using S = DecodeShape<kD>;
  PLUME_SHARED __align__(16) float qs[kRows][kD];           // queries, later the P.V reduction
  PLUME_SHARED float part[S::kParts][kRows][kPage];          // partial Q.K per part
  PLUME_SHARED float pw[kRows][kPage];                        // softmax weights times V scale
  PLUME_SHARED float m_s[kRows], l_s[kRows], alpha_s[kRows];

  const int tid = threadIdx.x;
  const int unit = blockIdx.x;
  const int split = blockIdx.y;
  const int tile = unit % p.row_tiles;
  const int kvh = unit / p.row_tiles;
  const int lr0 = tile * kRows;
  const int nrows = min(kRows, p.rows - lr0);
  // Tiles of at most kRows / 2 rows (batch 1, GQA group 4, q_len 1, say)
  // skip the upper rows' math.
  const bool wide = nrows > kRows / 2;

  for (int i = tid; i < kRows * kD; i += S::kThreads) {
    const int r = i / kD, d = i % kD;
    qs[r][d] = r < nrows && d < p.head_dim
                   ? LoadQ(p.q, p.q_dtype, QueryIndex(p, kvh, lr0 + r) * p.head_dim + d)
                   : 0.0f;
  }
  if (tid < kRows) {
    m_s[tid] = kNegInf;
    l_s[tid] = 0.0f;
  }
  // The last token any row of this tile sees: pages past it are skipped.
  const int64_t last = TileLastVisible(p, lr0, nrows);
  __syncthreads();

  const int page_begin = split * p.pages_per_split;
  const int page_end = SplitPageEnd(p, page_begin, last);

  float acc[kRows][4];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;

  const int word = tid % S::kWords;  // P.V: this thread's 4 columns
  const int tgroup = tid / S::kWords;
  const bool word_in = word * 4 < p.row_bytes;

  for (int pg = page_begin; pg < page_end; ++pg) {
    const uint8_t* page = p.pages[pg];
    const int64_t t0 = static_cast<int64_t>(pg) * kPage;
    const int n = static_cast<int>(Min64(kPage, p.seq - t0));
    const uint8_t* kbase = page + kvh * p.head_tile;
    const uint8_t* vbase = page + p.codes_bytes + kvh * p.head_tile;

    // Q.K: thread (part, token) dots its part of the row with every query.
    {
      const int t = tid % kPage;
      const int prt = tid / kPage;
      float s[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r] = 0.0f;
      if (t < n) {
        const uint8_t* row = kbase + static_cast<int64_t>(t) * p.row_bytes;
        // Two 16-byte pieces in flight per step keep the registers in bounds.
        constexpr int kStep = S::kUnitsPerPart < 2 ? S::kUnitsPerPart : 2;
#pragma unroll 1
        for (int u0 = 0; u0 < S::kUnitsPerPart; u0 += kStep) {
          uint4 v[kStep];
#pragma unroll
          for (int u = 0; u < kStep; ++u) {
            const int off = (prt * S::kUnitsPerPart + u0 + u) * 16;
            v[u] = off < p.row_bytes ? __ldg(reinterpret_cast<const uint4*>(row + off))
                                     : make_uint4(0, 0, 0, 0);
          }
#pragma unroll
          for (int u = 0; u < kStep; ++u) {
            const int d0 = (prt * S::kUnitsPerPart + u0 + u) * 16;
            const uint32_t words[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              float k4[4];
              Decode4<kDec>(words[j], k4);
              auto dot = [&](int r) {
                const float4 q4 = *reinterpret_cast<const float4*>(&qs[r][d0 + 4 * j]);
                s[r] = fmaf(q4.x, k4[0], s[r]);
                s[r] = fmaf(q4.y, k4[1], s[r]);
                s[r] = fmaf(q4.z, k4[2], s[r]);
                s[r] = fmaf(q4.w, k4[3], s[r]);
              };
#pragma unroll
              for (int r = 0; r < kRows / 2; ++r) dot(r);
              if (wide) {
#pragma unroll
                for (int r = kRows / 2; r < kRows; ++r) dot(r);
              }
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[prt][r][t] = s[r];
    }
    __syncthreads();

    // Online softmax: warp w owns rows w, w + kWarps, ...; lane l tokens l, l + 32.
    {
      const float ks = PageScale(p, page, kvh, false) * p.scale;
      const float vs = PageScale(p, page, kvh, true);
      const int lane = tid & 31;
      for (int r = tid >> 5; r < kRows; r += S::kWarps) {
        const int64_t vis = r < nrows ? LastVisible(p, lr0 + r) : -1;
        float sc[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = lane + 32 * h;
          float x = 0.0f;
#pragma unroll
          for (int q = 0; q < S::kParts; ++q) x += part[q][r][t];
          sc[h] = t < n && t0 + t <= vis ? x * ks : kNegInf;
        }
        const float m_old = m_s[r];
        const float m_new = fmaxf(m_old, WarpMax(fmaxf(sc[0], sc[1])));
        float e[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) e[h] = sc[h] == kNegInf ? 0.0f : expf(sc[h] - m_new);
        const float sum = WarpSum(e[0] + e[1]);
        pw[r][lane] = e[0] * vs;
        pw[r][lane + 32] = e[1] * vs;
        if (lane == 0) {
          const float alpha = m_old == kNegInf ? 0.0f : expf(m_old - m_new);
          alpha_s[r] = alpha;
          l_s[r] = l_s[r] * alpha + sum;
          m_s[r] = m_new;
        }
      }
    }
    __syncthreads();

    // P.V: thread (group, word) adds its tokens' V columns, weighted.
    if (word_in) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float a = alpha_s[r];
        acc[r][0] *= a;
        acc[r][1] *= a;
        acc[r][2] *= a;
        acc[r][3] *= a;
      }
      const int tb = tgroup * S::kTokensPerGroup;
      const int te = min(n, tb + S::kTokensPerGroup);
      const int t_last = static_cast<int>(Min64(te, last - t0 + 1));
      for (int t = tb; t < t_last; ++t) {
        const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(
            vbase + static_cast<int64_t>(t) * p.row_bytes + word * 4));
        float v4[4];
        Decode4<kDec>(w, v4);
        auto axpy = [&](int r) {
          const float pr = pw[r][t];
          acc[r][0] = fmaf(pr, v4[0], acc[r][0]);
          acc[r][1] = fmaf(pr, v4[1], acc[r][1]);
          acc[r][2] = fmaf(pr, v4[2], acc[r][2]);
          acc[r][3] = fmaf(pr, v4[3], acc[r][3]);
        };
#pragma unroll
        for (int r = 0; r < kRows / 2; ++r) axpy(r);
        if (wide) {
#pragma unroll
          for (int r = kRows / 2; r < kRows; ++r) axpy(r);
        }
      }
    }
    // The next page's Q.K writes `part` only, which nobody reads now; its
    // barrier orders this P.V's reads of pw before the next softmax.
  }
  __syncthreads();

  // Token groups add up into qs (reused), in a fixed order.
  for (int g = 0; g < S::kGroups; ++g) {
    if (tgroup == g && word_in) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          float& dst = qs[r][word * 4 + c];
          dst = g == 0 ? acc[r][c] : dst + acc[r][c];
        }
      }
    }
    __syncthreads();
  }

  const int64_t slot = SplitSlot(p, unit, split);
  for (int i = tid; i < nrows * p.head_dim; i += S::kThreads) {
    const int r = i / p.head_dim, d = i % p.head_dim;
    StoreSplitAcc(p, slot, p.tile_rows, r, d, qs[r][d]);
  }
  if (tid < nrows) StoreSplitMl(p, slot, p.tile_rows, tid, m_s[tid], l_s[tid]);
  FinishSplit(p, unit);
}

// Threads of a decode block at padded head dim kd (every decode kernel).
inline int DecodeThreads(int kd) {
  return kd >= 1024 ? DecodeShape<1024>::kThreads : DecodeShape<64>::kThreads;
}

// The decode kernel for padded head dim kd; nullptr for a head dim it has no
// kernel for.
template <Dec kDec>
KernelFn DecodeKernelFor(int kd) {
  switch (kd) {
    case 64: return DecodeKernel<kDec, 64>;
    case 256: return DecodeKernel<kDec, 256>;
    case 512: return DecodeKernel<kDec, 512>;
    case 1024: return DecodeKernel<kDec, 1024>;
    default: return nullptr;
  }
}

}  // namespace plume::cuda::attn
