// Attention kernels over the paged FP8 K/V cache and their launcher: the only
// translation unit that instantiates them (attention.h explains the design).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "plume/cuda/attention.h"
#include "attention_prefill.h"
#include "plume/cuda/check.h"
#include "plume/kernels/half.h"
#include "fp8_regs.cuh"

namespace plume::cuda {
namespace {

constexpr int kPage = static_cast<int>(kKvPageTokens);  // tokens per page (a K/V tile)
constexpr int kRows = 8;                                // decode: query rows per block
constexpr int kCombineThreads = 128;

// Everything the kernels read, by value.
struct Params {
  const uint8_t* const* pages;
  const float* gk;         // cache-wide K scales (TENSOR: [0], HEAD: [kv head])
  const float* gv;
  KvScaleMode mode;
  int kv_heads;
  int head_dim;
  int row_bytes;           // padded row (multiple of 16)
  int64_t head_tile;       // bytes of one kv head's rows in a page
  int64_t codes_bytes;     // K codes of a page; V codes follow
  int64_t seq;
  int num_pages;
  float decode_factor;     // 2^8 for the software E4M3 decode, else 1

  const void* q;
  DType q_dtype;
  int heads;
  int q_len;
  int group;               // heads / kv_heads
  int rows;                // batch * group * q_len: the query rows of one kv head
  int row_tiles;           // tiles of tile_rows query rows
  int tile_rows;           // kRows (FP32 decode), <= kMmaRows (tensor-core decode), kPrefillRows
  float scale;
  bool causal;

  void* out;
  DType out_dtype;

  // Decode splits and their partial results.
  int pages_per_split;
  int splits;
  float* ws_ml;            // [unit][split][tile_rows][2]: running max, sum
  float* ws_acc;           // [unit][split][tile_rows][head_dim]: unnormalized output
};

// Query row `lr` of kv head kvh (rows are batch-major, then head of the GQA
// group, then position in q_len: every batch reads the same cache): its index
// in [batch][heads][q_len].
__device__ __forceinline__ int64_t QueryIndex(const Params& p, int kvh, int lr) {
  const int per_batch = p.group * p.q_len;
  const int b = lr / per_batch;
  const int h = kvh * p.group + lr % per_batch / p.q_len;
  const int i = lr % p.q_len;
  return (static_cast<int64_t>(b) * p.heads + h) * p.q_len + i;
}

// The last token query row `lr` sees.
__device__ __forceinline__ int64_t LastVisible(const Params& p, int lr) {
  return p.causal ? p.seq - p.q_len + lr % p.q_len : p.seq - 1;
}

__device__ __forceinline__ float LoadQ(const void* q, DType t, int64_t i) {
  if (t == DType::kF32) return static_cast<const float*>(q)[i];
  if (t == DType::kF16) return __half2float(static_cast<const __half*>(q)[i]);
  return Bf16BitsToFloat(static_cast<const uint16_t*>(q)[i]);
}

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

// Four codes (c0 in the low byte) to FP16 pairs, NaN codes kept NaN on every
// path (the software E4M3 decode alone reads them as finite numbers).
template <Dec kDec>
__device__ __forceinline__ void DecodeWordNan(uint32_t w, uint32_t& lo, uint32_t& hi) {
  DecodeWord<kDec>(w, lo, hi);
  if constexpr (kDec == Dec::kE4M3Soft) {
    if (HasE4M3Nan(w)) {
      if ((w & 0x7fu) == 0x7fu) lo = (lo & 0xffff0000u) | 0x7e00u;
      if ((w & 0x7f00u) == 0x7f00u) lo = (lo & 0x0000ffffu) | 0x7e000000u;
      if ((w & 0x7f0000u) == 0x7f0000u) hi = (hi & 0xffff0000u) | 0x7e00u;
      if ((w & 0x7f000000u) == 0x7f000000u) hi = (hi & 0x0000ffffu) | 0x7e000000u;
    }
  }
}

__device__ __forceinline__ float2 HalvesToFloats(uint32_t h2) {
  __half2 h;
  static_assert(sizeof(h) == sizeof(h2));
  memcpy(&h, &h2, sizeof(h));
  return __half22float2(h);
}

template <Dec kDec>
__device__ __forceinline__ void Decode4(uint32_t w, float (&f)[4]) {
  uint32_t lo, hi;
  DecodeWordNan<kDec>(w, lo, hi);
  const float2 a = HalvesToFloats(lo), b = HalvesToFloats(hi);
  f[0] = a.x;
  f[1] = a.y;
  f[2] = b.x;
  f[3] = b.y;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr float kNegInf = -INFINITY;

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// --------------------------------------------------------------- decode

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
// sum for the combine kernel.
template <Dec kDec, int kD>
__global__ void __launch_bounds__(DecodeShape<kD>::kThreads, 1) DecodeKernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  using S = DecodeShape<kD>;
  __shared__ __align__(16) float qs[kRows][kD];           // queries, later the P.V reduction
  __shared__ float part[S::kParts][kRows][kPage];          // partial Q.K per part
  __shared__ float pw[kRows][kPage];                        // softmax weights times V scale
  __shared__ float m_s[kRows], l_s[kRows], alpha_s[kRows];

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
  int64_t last = -1;
  for (int r = 0; r < nrows; ++r) last = max(last, LastVisible(p, lr0 + r));
  __syncthreads();

  const int page_begin = split * p.pages_per_split;
  const int page_end = min(p.num_pages, static_cast<int>(Min64(
                                            page_begin + p.pages_per_split, last / kPage + 1)));

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

  const int64_t slot = static_cast<int64_t>(unit) * p.splits + split;
  for (int i = tid; i < nrows * p.head_dim; i += S::kThreads) {
    const int r = i / p.head_dim, d = i % p.head_dim;
    p.ws_acc[(slot * p.tile_rows + r) * p.head_dim + d] = qs[r][d];
  }
  if (tid < nrows) {
    p.ws_ml[(slot * p.tile_rows + tid) * 2] = m_s[tid];
    p.ws_ml[(slot * p.tile_rows + tid) * 2 + 1] = l_s[tid];
  }
}

// One block per query row: merges the splits' partial results,
// out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). The splits' maxima
// and weights are read and computed by all threads at once (a thread per
// split) and kept in shared memory; then each thread sums its columns over
// the splits with many loads in flight (latency, not bandwidth, bounds this
// kernel).
constexpr int kMaxSplits = 1024;
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const Params p) {
  __shared__ float w_s[kMaxSplits];
  __shared__ float red[kCombineThreads / 32];
  const int64_t row = blockIdx.x;  // (b * heads + h) * q_len + i
  const int i = static_cast<int>(row % p.q_len);
  const int h = static_cast<int>(row / p.q_len % p.heads);
  const int b = static_cast<int>(row / p.q_len / p.heads);
  const int kvh = h / p.group;
  const int lr = (b * p.group + h % p.group) * p.q_len + i;
  const int64_t unit = static_cast<int64_t>(kvh) * p.row_tiles + lr / p.tile_rows;
  const int r = lr % p.tile_rows;
  const int64_t base = unit * p.splits;
  const int tid = threadIdx.x;
  const float* ml = p.ws_ml + (base * p.tile_rows + r) * 2;  // split s at ml[s * tile_rows * 2]
  const int64_t ml_step = int64_t{p.tile_rows} * 2;

  float mx = kNegInf;
  for (int s = tid; s < p.splits; s += kCombineThreads) mx = fmaxf(mx, ml[s * ml_step]);
  mx = WarpMax(mx);
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  mx = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();  // red is reused below
  float l = 0.0f;
  for (int s = tid; s < p.splits; s += kCombineThreads) {
    const float ms = ml[s * ml_step];
    const float e = ms == kNegInf ? 0.0f : expf(ms - mx);
    w_s[s] = e;
    if (e != 0.0f) l += ml[s * ml_step + 1] * e;
  }
  l = WarpSum(l);
  if ((tid & 31) == 0) red[tid >> 5] = l;
  __syncthreads();
  l = 0.0f;
  for (int w = 0; w < kCombineThreads / 32; ++w) l += red[w];
  const float inv = 1.0f / l;
  const float* acc = p.ws_acc + (base * p.tile_rows + r) * p.head_dim;
  const int64_t acc_step = int64_t{p.tile_rows} * p.head_dim;
  for (int d = tid; d < p.head_dim; d += kCombineThreads) {
    float o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < p.splits; ++s) {
      const float a = acc[s * acc_step + d], e = w_s[s];  // loads independent of e
      o += e != 0.0f ? a * e : 0.0f;
    }
    Store(p.out, p.out_dtype, row * p.head_dim + d, o * inv);
  }
}

// ------------------------------------------------- decode, tensor cores

// The tensor-core decode (head dims whose padded row is 128 bytes, the common
// LLM shape): one block per (kv head, tile of up to 64 of its query rows,
// split of the pages), so each K/V page is read once per 64 rows. The four
// warps split the tile's 16-row m-tiles and, when there are fewer than four
// m-tiles, the page's tokens (a warp then keeps its own softmax state over
// its token slice; the block merges them at the end). Pages stream through a
// kMmaStages-deep cp.async ring in shared memory as FP8 codes; each warp
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
// 16-byte chunks t and t + 4 of the row: codes 16t + 4j .. 16t + 4j + 3 and
// 64 + ...), and Q's A fragment uses the same permutation. For P.V the output
// columns are permuted instead: n-tile nn's column g is the row's byte
// 16g + nn, so a lane reads one 16-byte chunk per V row and holds output
// columns 32t .. 32t + 31 in the end. Shared memory rows are XOR-swizzled by
// 16-byte chunk so both reads are free of bank conflicts.
constexpr int kMmaDim = 128;  // the padded head dim this kernel serves
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaRows = 16 * kMmaWarps;  // query rows per block at most
constexpr int kMmaStages = 3;
constexpr int kMmaTile = kPage * kMmaDim;                   // bytes of a K or V tile
constexpr int kMmaRing = kMmaStages * 2 * kMmaTile;         // the code ring, bytes
constexpr int kMmaOutLd = kMmaDim + 4;                      // epilogue row, floats
constexpr int kMmaQlo = kMmaWarps * 8 * 32 * 16;            // FP32 queries' lo fragments
constexpr size_t kMmaSmem = kMmaRing + kMmaQlo;              // 64 KB: fits sm_75 too
// kShared: the page decoded once to FP16 in fragment order (K: [token][lane
// t's 8 k-steps], V: [token pair][dim] of half2), 32 KB more.
constexpr int kMmaKh = kPage * kMmaDim * 2;
constexpr int kMmaVh = kPage * kMmaDim * 2;
constexpr size_t kMmaSmemShared = kMmaSmem + kMmaKh + kMmaVh;  // 96 KB
static_assert(kMmaWarps * 16 * kMmaOutLd * 4 + kMmaWarps * 16 * 2 * 4 <= kMmaRing);
constexpr float kPScale = 1024.0f;  // P is split as P * 2^10
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t PackHalves(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// (a, b) as an FP16 pair hi plus the pair of what it leaves, lo.
__device__ __forceinline__ void SplitHalves(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 f = __half22float2(h);
  memcpy(&hi, &h, sizeof(hi));
  lo = PackHalves(a - f.x, b - f.y);
}

// Swizzled 16-byte chunk c of row r of a K / V tile in shared memory.
__device__ __forceinline__ int KChunk(int r, int c) { return r * kMmaDim + ((c ^ ((r & 1) << 2)) << 4); }
__device__ __forceinline__ int VChunk(int r, int c) {
  return r * kMmaDim + ((c ^ (((r >> 1) & 3) << 1)) << 4);
}

// Four consecutive query values of the row at element `base` (-1: none),
// from column d (zeros past head_dim); one vector load where the row is
// aligned.
__device__ __forceinline__ void LoadQ4(const Params& p, int64_t base, int d, float (&v)[4]) {
  v[0] = v[1] = v[2] = v[3] = 0.0f;
  if (base < 0 || d >= p.head_dim) return;
  const bool vec = p.head_dim % 4 == 0 && (reinterpret_cast<uintptr_t>(p.q) & 15) == 0;
  if (vec && p.q_dtype == DType::kF32) {
    const float4 x = *reinterpret_cast<const float4*>(static_cast<const float*>(p.q) + base + d);
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
  } else if (vec) {
    const uint2 x = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.q) + base + d);
    const uint32_t w[2] = {x.x, x.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint16_t h = static_cast<uint16_t>(w[e / 2] >> (16 * (e % 2)));
      v[e] = p.q_dtype == DType::kF16 ? __half2float(__ushort_as_half(h)) : Bf16BitsToFloat(h);
    }
  } else {
    for (int e = 0; e < 4 && d + e < p.head_dim; ++e) v[e] = LoadQ(p.q, p.q_dtype, base + d + e);
  }
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

// Swizzled 16-byte chunk c (0..15) of token row r of the FP16 K tile (256
// bytes a row; lane t reads chunks 4t .. 4t + 3) and chunk c (0..31) of token
// pair tp of the FP16 V tile (512 bytes a pair; lane (g, t) reads chunks
// 4g .. 4g + 3 of pairs t and t + 4): the warps' reads are conflict-free.
__device__ __forceinline__ int KhChunk(int r, int c) {
  return r * (2 * kMmaDim) + ((c ^ (((c >> 3) & 1) << 1) ^ (r & 1)) << 4);
}
__device__ __forceinline__ int VhChunk(int tp, int c) { return tp * (4 * kMmaDim) + ((c ^ (tp & 3)) << 4); }

// kShared (for 3 or 4 m-tiles, where every warp would decode the whole page;
// used for the software FP8 decode only): the block decodes each page once
// into FP16 shared memory, already in the fragment orders below, and the
// warps read their fragments from there.
// One online-softmax step over an m-tile's score fragments (mma C layout:
// s[j][0..1] are row g, s[j][2..3] row g + 8 of the lane's quad), masked
// scores already -inf: updates the running maxima and sums of the two rows,
// turns the scores into unnormalized probabilities and returns in al_a /
// al_b the factors the rows' old outputs must be scaled by. kLog2: the
// scores are in log2 units (exp2f), else natural (expf).
template <int kN, bool kLog2>
__device__ __forceinline__ void OnlineSoftmaxStep(float (&s)[kN][4], float& m_a, float& m_b,
                                                  float& l_a, float& l_b, float& al_a,
                                                  float& al_b) {
  auto ex = [](float x) { return kLog2 ? exp2f(x) : expf(x); };
  float mx_a = kNegInf, mx_b = kNegInf;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mx_a = fmaxf(mx_a, s[j][e]);
      mx_b = fmaxf(mx_b, s[j][2 + e]);
    }
  }
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
  }
  const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
  al_a = m_a == kNegInf ? 0.0f : ex(m_a - mn_a);
  al_b = m_b == kNegInf ? 0.0f : ex(m_b - mn_b);
  m_a = mn_a;
  m_b = mn_b;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[j][e] = s[j][e] == kNegInf ? 0.0f : ex(s[j][e] - mn_a);
      s[j][2 + e] = s[j][2 + e] == kNegInf ? 0.0f : ex(s[j][2 + e] - mn_b);
      sum_a += s[j][e];
      sum_b += s[j][2 + e];
    }
  }
  l_a = l_a * al_a + sum_a;
  l_b = l_b * al_b + sum_b;
}

template <Dec kDec, bool kShared>
__global__ void __launch_bounds__(kMmaThreads, 2) DecodeMmaKernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  extern __shared__ __align__(16) __half smem[];
  uint8_t* const ring = reinterpret_cast<uint8_t*>(smem);
  uint4* const qlo_s = reinterpret_cast<uint4*>(ring + kMmaRing);  // [warp][k-step][lane]
  uint8_t* const kh = ring + kMmaRing + kMmaQlo;  // kShared: the page's K as FP16
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
  uint32_t qh[8][4];  // the lo parts go to shared memory (qlo_s): registers are short
  float qf_a = 1.0f, qf_b = 1.0f;  // 2^e: the rows' scale back
  {
    const int64_t ia = vis_a >= 0 ? QueryIndex(p, kvh, lr0 + ra) * p.head_dim : -1;
    const int64_t ib = vis_b >= 0 ? QueryIndex(p, kvh, lr0 + rb) * p.head_dim : -1;
    float qa[8][4], qb[8][4];
    float mx_a = 0.0f, mx_b = 0.0f;
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
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
    for (int ks = 0; ks < 8; ++ks) {
      float a[4], b[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a[e] = qa[ks][e] * sa;
        b[e] = qb[ks][e] * sb;
      }
      uint4 lo;
      SplitHalves(a[0], a[1], qh[ks][0], lo.x);
      SplitHalves(b[0], b[1], qh[ks][1], lo.y);
      SplitHalves(a[2], a[3], qh[ks][2], lo.z);
      SplitHalves(b[2], b[3], qh[ks][3], lo.w);
      qlo_s[(warp * 8 + ks) * 32 + lane] = lo;  // read back by this thread only
    }
  }

  int64_t last = -1;
  for (int r = 0; r < nrows; ++r) last = max(last, LastVisible(p, lr0 + r));
  const int page_begin = split * p.pages_per_split;
  const int page_end = min(p.num_pages, static_cast<int>(Min64(
                                            page_begin + p.pages_per_split, last / kPage + 1)));
  const int npg = max(0, page_end - page_begin);

  // Page i of the split (at `page`) into stage i % kMmaStages.
  auto load = [&](const uint8_t* page, int i) {
    if (i < npg) MmaLoadPage(p, ring + (i % kMmaStages) * 2 * kMmaTile, page, kvh, tid);
    CpAsyncCommit();  // empty groups too: the wait below counts groups
  };
  // The K and V scales of a page, times the decode factor; TOKEN_BLOCK ones
  // are read from the page when its copy starts and kept in registers until
  // its turn (pages i, i + 1 in flight: sc[0], sc[1]).
  const bool block_scales = p.mode == KvScaleMode::kTokenBlock;
  const float2 fixed = block_scales ? make_float2(0.0f, 0.0f)
                                    : make_float2(PageScale(p, nullptr, kvh, false),
                                                  PageScale(p, nullptr, kvh, true));
  auto scales_of = [&](const uint8_t* page) { return MmaPageScales(p, page, kvh, fixed); };
  static_assert(kMmaStages == 3);
  float2 sc[2];
#pragma unroll
  for (int i = 0; i < kMmaStages - 1; ++i) {
    const uint8_t* page = i < npg ? p.pages[page_begin + i] : nullptr;
    load(page, i);
    sc[i] = scales_of(page);
  }
  // The page table is read one page ahead, so that its latency hides behind
  // a page's math instead of delaying the next copy.
  const uint8_t* next = kMmaStages - 1 < npg ? p.pages[page_begin + kMmaStages - 1] : nullptr;

  float o[16][4];
#pragma unroll
  for (int nn = 0; nn < 16; ++nn) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.0f;
  float m_a = kNegInf, m_b = kNegInf, l_a = 0.0f, l_b = 0.0f;
  float vref = 0.0f;  // the true output is o * vref / kPScale (V scales change per page)

  for (int i = 0; i < npg; ++i) {
    CpAsyncWait<kMmaStages - 2>();
    __syncthreads();              // page i is in; every warp is done with page i - 1
    load(next, i + kMmaStages - 1);  // into page i - 1's stage
    const float2 cur = sc[0];
    sc[0] = sc[1];
    sc[1] = scales_of(next);
    next = i + kMmaStages < npg ? p.pages[page_begin + i + kMmaStages] : nullptr;
    const uint8_t* kt = ring + (i % kMmaStages) * 2 * kMmaTile;
    const uint8_t* vt = kt + kMmaTile;
    if constexpr (kShared) {
      // K: FP8 chunk cc of row r holds lane t = cc % 4's k-steps 4 (cc / 4)
      // .. + 3, one word each: their (b0, b1) pairs are 32 contiguous bytes.
#pragma unroll
      for (int k = 0; k < kPage * 8 / kMmaThreads; ++k) {
        const int idx = tid + k * kMmaThreads;
        const int r = idx >> 3, cc = idx & 7;
        const uint4 w = *reinterpret_cast<const uint4*>(kt + KChunk(r, cc));
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
        const uint4 a = *reinterpret_cast<const uint4*>(vt + VChunk(2 * tp, cc));
        const uint4 b = *reinterpret_cast<const uint4*>(vt + VChunk(2 * tp + 1, cc));
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
          [[maybe_unused]] uint32_t w[8], hw[16];  // codes, or (kShared) FP16 pairs
          if constexpr (kShared) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              const uint4 x = *reinterpret_cast<const uint4*>(kh + KhChunk(r, 4 * t + c));
              hw[4 * c] = x.x;
              hw[4 * c + 1] = x.y;
              hw[4 * c + 2] = x.z;
              hw[4 * c + 3] = x.w;
            }
          } else {
            const uint4 k0 = *reinterpret_cast<const uint4*>(kt + KChunk(r, t));
            const uint4 k1 = *reinterpret_cast<const uint4*>(kt + KChunk(r, t + 4));
            w[0] = k0.x, w[1] = k0.y, w[2] = k0.z, w[3] = k0.w;
            w[4] = k1.x, w[5] = k1.y, w[6] = k1.z, w[7] = k1.w;
          }
#pragma unroll
          for (int kk = 0; kk < 8; ++kk) {
            uint32_t b0, b1;
            if constexpr (kShared) {
              b0 = hw[2 * kk];
              b1 = hw[2 * kk + 1];
            } else {
              DecodeWordNan<kDec>(w[kk], b0, b1);
            }
            if constexpr (decltype(with_lo)::value) {
              const uint4 lo = qlo_s[(warp * 8 + kk) * 32 + lane];
              Mma(s[j], qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3], b0, b1);
              Mma(s2[j], lo.x, lo.y, lo.z, lo.w, b0, b1);
            } else {
              Mma(kk & 1 ? s2[j] : s[j], qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3], b0, b1);
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
        for (int nn = 0; nn < 16; ++nn) {
          o[nn][0] *= ca;
          o[nn][1] *= ca;
          o[nn][2] *= cb;
          o[nn][3] *= cb;
        }
      }

      // O += P V: tokens 2t, 2t + 1, 2t + 8, 2t + 9 of the 16, one 16-byte
      // chunk (g) of each V row.
      uint32_t ph[4], pl[4];
      SplitHalves(s[0][0] * kPScale, s[0][1] * kPScale, ph[0], pl[0]);
      SplitHalves(s[0][2] * kPScale, s[0][3] * kPScale, ph[1], pl[1]);
      SplitHalves(s[1][0] * kPScale, s[1][1] * kPScale, ph[2], pl[2]);
      SplitHalves(s[1][2] * kPScale, s[1][3] * kPScale, ph[3], pl[3]);
      const int r = c0 + 2 * t;
      uint32_t w0[4], w1[4], w8[4], w9[4];
      if constexpr (!kShared) {
        const uint4 v0 = *reinterpret_cast<const uint4*>(vt + VChunk(r, g));
        const uint4 v1 = *reinterpret_cast<const uint4*>(vt + VChunk(r + 1, g));
        const uint4 v8 = *reinterpret_cast<const uint4*>(vt + VChunk(r + 8, g));
        const uint4 v9 = *reinterpret_cast<const uint4*>(vt + VChunk(r + 9, g));
        w0[0] = v0.x, w0[1] = v0.y, w0[2] = v0.z, w0[3] = v0.w;
        w1[0] = v1.x, w1[1] = v1.y, w1[2] = v1.z, w1[3] = v1.w;
        w8[0] = v8.x, w8[1] = v8.y, w8[2] = v8.z, w8[3] = v8.w;
        w9[0] = v9.x, w9[1] = v9.y, w9[2] = v9.z, w9[3] = v9.w;
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t b0[4], b1[4];  // n-tiles 4q .. 4q + 3
        if constexpr (kShared) {  // token pairs r / 2 and r / 2 + 4, dims 16g + 4q ..
          const uint4 x = *reinterpret_cast<const uint4*>(vh + VhChunk(r / 2, 4 * g + q));
          const uint4 y = *reinterpret_cast<const uint4*>(vh + VhChunk(r / 2 + 4, 4 * g + q));
          b0[0] = x.x, b0[1] = x.y, b0[2] = x.z, b0[3] = x.w;
          b1[0] = y.x, b1[1] = y.y, b1[2] = y.z, b1[3] = y.w;
        } else {
          DecodeWordNan<kDec>(__byte_perm(w0[q], w1[q], 0x5140), b0[0], b0[1]);
          DecodeWordNan<kDec>(__byte_perm(w0[q], w1[q], 0x7362), b0[2], b0[3]);
          DecodeWordNan<kDec>(__byte_perm(w8[q], w9[q], 0x5140), b1[0], b1[1]);
          DecodeWordNan<kDec>(__byte_perm(w8[q], w9[q], 0x7362), b1[2], b1[3]);
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
      for (int nn = 0; nn < 16; ++nn) {
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
  // fixed order and the block writes the tile's rows for the combine kernel.
  float* const ob = reinterpret_cast<float*>(ring);     // [warp][16][kMmaOutLd]
  float* const mlb = ob + kMmaWarps * 16 * kMmaOutLd;   // [warp][16][2]
  if (active) {
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
      l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
    }
    const float f = vref / kPScale;
    float* oa = ob + (warp * 16 + g) * kMmaOutLd;
    float* obr = oa + 8 * kMmaOutLd;
#pragma unroll
    for (int nn = 0; nn < 16; ++nn) {
      // Column c at c + c / 32: the lanes' stores hit distinct banks.
      const int c0 = 32 * t + nn, c1 = c0 + 16;
      oa[c0 + t] = o[nn][0] * f;
      oa[c1 + t] = o[nn][1] * f;
      obr[c0 + t] = o[nn][2] * f;
      obr[c1 + t] = o[nn][3] * f;
    }
    if (t == 0) {
      mlb[(warp * 16 + g) * 2] = m_a;
      mlb[(warp * 16 + g) * 2 + 1] = l_a;
      mlb[(warp * 16 + g + 8) * 2] = m_b;
      mlb[(warp * 16 + g + 8) * 2 + 1] = l_b;
    }
  }
  __syncthreads();
  const int64_t slot = static_cast<int64_t>(unit) * p.splits + split;
  for (int i = tid; i < nrows * kMmaDim; i += kMmaThreads) {
    const int r = i / kMmaDim, d = i % kMmaDim;
    const int w0 = r / 16 * wt;
    float mx = kNegInf;
    for (int w = w0; w < w0 + wt; ++w) mx = fmaxf(mx, mlb[(w * 16 + r % 16) * 2]);
    float acc = 0.0f, l = 0.0f;
    for (int w = w0; w < w0 + wt; ++w) {
      const float mw = mlb[(w * 16 + r % 16) * 2];
      if (mw == kNegInf) continue;
      const float e = exp2f(mw - mx);
      acc += ob[(w * 16 + r % 16) * kMmaOutLd + d + d / 32] * e;
      l += mlb[(w * 16 + r % 16) * 2 + 1] * e;
    }
    if (d < p.head_dim) p.ws_acc[(slot * p.tile_rows + r) * p.head_dim + d] = acc;
    if (d == 0) {  // the combine kernel's max is in natural units
      p.ws_ml[(slot * p.tile_rows + r) * 2] = mx * kLn2;
      p.ws_ml[(slot * p.tile_rows + r) * 2 + 1] = l;
    }
  }
}

// ------------------------------------- decode, tensor cores, few query rows

// At most kFewRows query rows per kv head (batch 1 at GQA group 4: a decode
// step of one sequence), DecodeMmaKernel would leave 12 of its 16 M rows
// empty. This kernel swaps the operands instead: S^T = K Q^T with 16 tokens as
// M and N = 8 columns, O^T = V^T P^T. The N columns hold the rows' hi parts
// (columns 0-3) and lo parts (4-7), so the FP32 split costs no extra mma:
// 16 mma per 16 tokens (DecodeMmaKernel: 16 for S and 32 for O), 32 output
// registers, 4 blocks per SM. Block and ring as DecodeMmaKernel's (warp w takes
// tokens 16w .. 16w + 15 of every page, keeping its own softmax state).
// Fragments (g = lane / 4, t = lane % 4):
//  - K (A): tokens g and g + 8; k-step ks is the ks-th 32-bit word of 16-byte
//    chunks t and t + 4 of the row (DecodeMmaKernel's B order).
//  - Q^T (B): column g is row g & 3, hi part for g < 4, lo for g >= 4, in the
//    same permuted order; a row is scaled by a power of two to max |q| < 1.
//  - S^T (C): tokens g, g + 8 of columns 2t, 2t + 1; lanes t and t ^ 2 hold a
//    row's hi and lo columns, so one shuffle sums them: lane t then has rows
//    2 (t & 1) and 2 (t & 1) + 1.
//  - P^T (B): P * 2^10 in the C layout as FP16, hi in lanes t < 2 and lo in
//    t >= 2 (columns 0-3 and 4-7 again), transposed by movmatrix.
//  - V^T (A): chunk g of V rows 2t, 2t + 1, 2t + 8, 2t + 9, consecutive
//    tokens paired by prmt; m-tile mt's row g is dim 16g + 2mt and row g + 8
//    is dim 16g + 2mt + 1.
//  - O^T (C): those dims, columns as S^T's; lanes t and t ^ 2 are summed at
//    the end.
constexpr int kFewRows = 4;
constexpr size_t kFewSmem = kMmaRing;  // 48 KB: no opt-in
constexpr int kFewOutLd = kMmaDim + 4;
static_assert(kMmaWarps * kFewRows * (kFewOutLd + 2) * 4 <= kMmaRing);

template <Dec kDec>
__global__ void __launch_bounds__(kMmaThreads, 4) DecodeFewKernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  extern __shared__ __align__(16) __half smem[];
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
  uint32_t qf[8][2];
  float qfac;  // 2^e: row g & 3's scale back
  {
    const int r = g & 3;
    const int64_t base = r < nrows ? QueryIndex(p, kvh, lr0 + r) * p.head_dim : -1;
    float q[8][4];
    float mx = 0.0f;
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
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
    for (int ks = 0; ks < 8; ++ks) {
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

  int64_t last = -1;
  for (int r = 0; r < nrows; ++r) last = max(last, LastVisible(p, lr0 + r));
  const int page_begin = split * p.pages_per_split;
  const int page_end = min(p.num_pages, static_cast<int>(Min64(
                                            page_begin + p.pages_per_split, last / kPage + 1)));
  const int npg = max(0, page_end - page_begin);
  auto load = [&](const uint8_t* page, int i) {
    if (i < npg) MmaLoadPage(p, ring + (i % kMmaStages) * 2 * kMmaTile, page, kvh, tid);
    CpAsyncCommit();
  };
  const float2 fixed = p.mode == KvScaleMode::kTokenBlock
                           ? make_float2(0.0f, 0.0f)
                           : make_float2(PageScale(p, nullptr, kvh, false), PageScale(p, nullptr, kvh, true));
  static_assert(kMmaStages == 3);
  float2 sc[2];
#pragma unroll
  for (int i = 0; i < kMmaStages - 1; ++i) {
    const uint8_t* page = i < npg ? p.pages[page_begin + i] : nullptr;
    load(page, i);
    sc[i] = MmaPageScales(p, page, kvh, fixed);
  }
  const uint8_t* next = kMmaStages - 1 < npg ? p.pages[page_begin + kMmaStages - 1] : nullptr;

  float o[8][4];
#pragma unroll
  for (int mt = 0; mt < 8; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
  float vref = 0.0f;  // the true output is o * vref / kPScale

  for (int i = 0; i < npg; ++i) {
    CpAsyncWait<kMmaStages - 2>();
    __syncthreads();  // page i is in; every warp is done with page i - 1
    load(next, i + kMmaStages - 1);
    const float2 cur = sc[0];
    sc[0] = sc[1];
    sc[1] = MmaPageScales(p, next, kvh, fixed);
    next = i + kMmaStages < npg ? p.pages[page_begin + i + kMmaStages] : nullptr;
    const uint8_t* kt = ring + (i % kMmaStages) * 2 * kMmaTile;
    const uint8_t* vt = kt + kMmaTile;
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
        const uint4 ka0 = *reinterpret_cast<const uint4*>(kt + KChunk(r, t));
        const uint4 ka1 = *reinterpret_cast<const uint4*>(kt + KChunk(r, t + 4));
        const uint4 kb0 = *reinterpret_cast<const uint4*>(kt + KChunk(r + 8, t));
        const uint4 kb1 = *reinterpret_cast<const uint4*>(kt + KChunk(r + 8, t + 4));
        const uint32_t wa[8] = {ka0.x, ka0.y, ka0.z, ka0.w, ka1.x, ka1.y, ka1.z, ka1.w};
        const uint32_t wb[8] = {kb0.x, kb0.y, kb0.z, kb0.w, kb1.x, kb1.y, kb1.z, kb1.w};
#pragma unroll
        for (int ks = 0; ks < 8; ++ks) {
          uint32_t a0, a1, a2, a3;
          DecodeWordNan<kDec>(wa[ks], a0, a2);
          DecodeWordNan<kDec>(wb[ks], a1, a3);
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
        for (int mt = 0; mt < 8; ++mt) {
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
      const uint4 v0 = *reinterpret_cast<const uint4*>(vt + VChunk(rv, g));
      const uint4 v1 = *reinterpret_cast<const uint4*>(vt + VChunk(rv + 1, g));
      const uint4 v8 = *reinterpret_cast<const uint4*>(vt + VChunk(rv + 8, g));
      const uint4 v9 = *reinterpret_cast<const uint4*>(vt + VChunk(rv + 9, g));
      const uint32_t w0[4] = {v0.x, v0.y, v0.z, v0.w}, w1[4] = {v1.x, v1.y, v1.z, v1.w};
      const uint32_t w8[4] = {v8.x, v8.y, v8.z, v8.w}, w9[4] = {v9.x, v9.y, v9.z, v9.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t a0, a1, a2, a3;
        DecodeWordNan<kDec>(__byte_perm(w0[q], w1[q], 0x5140), a0, a1);  // dims 4q, 4q + 1 of the chunk
        DecodeWordNan<kDec>(__byte_perm(w8[q], w9[q], 0x5140), a2, a3);
        Mma(o[2 * q], a0, a1, a2, a3, b0, b1);
        DecodeWordNan<kDec>(__byte_perm(w0[q], w1[q], 0x7362), a0, a1);  // dims 4q + 2, 4q + 3
        DecodeWordNan<kDec>(__byte_perm(w8[q], w9[q], 0x7362), a2, a3);
        Mma(o[2 * q + 1], a0, a1, a2, a3, b0, b1);
      }
    }
    if (ratio != 1.0f) {  // no token of the page in this warp's slice
#pragma unroll
      for (int mt = 0; mt < 8; ++mt) {
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
  for (int mt = 0; mt < 8; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[mt][e] += __shfl_xor_sync(0xffffffffu, o[mt][e], 2);
  }
  float* const ob = reinterpret_cast<float*>(ring);         // [warp][row][kFewOutLd]
  float* const mlb = ob + kMmaWarps * kFewRows * kFewOutLd;  // [warp][row][2]
  if (t < 2) {
    const float f = vref / kPScale;
    float* o0 = ob + (warp * kFewRows + r0) * kFewOutLd + 16 * g;
    float* o1 = o0 + kFewOutLd;
#pragma unroll
    for (int mt = 0; mt < 8; ++mt) {
      o0[2 * mt] = o[mt][0] * f;
      o1[2 * mt] = o[mt][1] * f;
      o0[2 * mt + 1] = o[mt][2] * f;
      o1[2 * mt + 1] = o[mt][3] * f;
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
  // combine kernel.
  const int64_t slot = static_cast<int64_t>(unit) * p.splits + split;
  for (int i = tid; i < nrows * kMmaDim; i += kMmaThreads) {
    const int r = i / kMmaDim, d = i % kMmaDim;
    float mx = kNegInf;
    for (int w = 0; w < kMmaWarps; ++w) mx = fmaxf(mx, mlb[(w * kFewRows + r) * 2]);
    float acc = 0.0f, l = 0.0f;
    for (int w = 0; w < kMmaWarps; ++w) {
      const float mw = mlb[(w * kFewRows + r) * 2];
      if (mw == kNegInf) continue;
      const float e = exp2f(mw - mx);
      acc += ob[(w * kFewRows + r) * kFewOutLd + d] * e;
      l += mlb[(w * kFewRows + r) * 2 + 1] * e;
    }
    if (d < p.head_dim) p.ws_acc[(slot * kFewRows + r) * p.head_dim + d] = acc;
    if (d == 0) {  // the combine kernel's max is in natural units
      p.ws_ml[(slot * kFewRows + r) * 2] = mx * kLn2;
      p.ws_ml[(slot * kFewRows + r) * 2 + 1] = l;
    }
  }
}

// -------------------------------------------------------------- prefill

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

// Runtime-selected decode: the tiles are decoded once per page, so the
// branch is cheap next to the tensor-core work, and one kernel per head dim
// serves every path.
__device__ __forceinline__ void DecodeWordRt(Dec dec, uint32_t w, uint32_t& lo, uint32_t& hi) {
  switch (dec) {
    case Dec::kE4M3Soft: DecodeWordNan<Dec::kE4M3Soft>(w, lo, hi); break;
    case Dec::kE4M3Native: DecodeWordNan<Dec::kE4M3Native>(w, lo, hi); break;
    case Dec::kE5M2Soft: DecodeWordNan<Dec::kE5M2Soft>(w, lo, hi); break;
    default: DecodeWordNan<Dec::kE5M2Native>(w, lo, hi); break;
  }
}

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
  extern __shared__ __align__(16) __half smem[];
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
  int64_t last = -1;
  for (int r = 0; r < nrows; ++r) last = max(last, LastVisible(p, lr0 + r));
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

// The kernel head dim (64 ... 1024) that holds a padded row.
int KernelDim(int64_t row_bytes) {
  for (int kd : {64, 128, 256, 512, 1024}) {
    if (row_bytes <= kd) return kd;
  }
  return 0;
}

int DecodeThreads(int kd) {
  return kd >= 1024 ? DecodeShape<1024>::kThreads : DecodeShape<64>::kThreads;
}

Dec PickDec(Fp8Format format, DecodePath path) {
  const bool native = path == DecodePath::kNative;
  if (format == Fp8Format::kE4M3) return native ? Dec::kE4M3Native : Dec::kE4M3Soft;
  return native ? Dec::kE5M2Native : Dec::kE5M2Soft;
}

// The kernels' parameters for a problem; the decode split plan and its
// workspace (unused by the prefill).
Params MakeParams(const AttentionProblem& p, Dec dec, int tile_rows, int row_tiles,
                  int pages_per_split, int splits, void* workspace, int64_t off_acc) {
  const KvLayout& l = p.layout;
  Params k{};
  k.pages = p.pages;
  k.gk = p.k_scales;
  k.gv = p.v_scales;
  k.mode = l.scale_mode;
  k.kv_heads = static_cast<int>(l.kv_heads);
  k.head_dim = static_cast<int>(l.head_dim);
  k.row_bytes = static_cast<int>(l.row_bytes());
  k.head_tile = l.head_tile_bytes();
  k.codes_bytes = l.codes_bytes();
  k.seq = p.seq;
  k.num_pages = static_cast<int>(KvLayout::pages_for(p.seq));
  k.decode_factor = dec == Dec::kE4M3Soft ? 256.0f : 1.0f;
  k.q = p.q;
  k.q_dtype = p.q_dtype;
  k.heads = static_cast<int>(p.heads);
  k.q_len = static_cast<int>(p.q_len);
  k.group = static_cast<int>(p.heads / l.kv_heads);
  k.rows = static_cast<int>(p.batch) * k.group * k.q_len;
  k.row_tiles = row_tiles;
  k.tile_rows = tile_rows;
  k.scale = p.scale;
  k.causal = p.causal;
  k.out = p.out;
  k.out_dtype = p.out_dtype;
  k.pages_per_split = pages_per_split;
  k.splits = splits;
  k.ws_ml = static_cast<float*>(workspace);
  k.ws_acc = reinterpret_cast<float*>(static_cast<char*>(workspace) + off_acc);
  return k;
}

// ----------------------------------------------------------------- dispatch

using KernelFn = void (*)(Params);
using PrefillFn = void (*)(Params, Dec);

template <Dec kDec>
KernelFn PickDecodeDim(int kd) {
  switch (kd) {
    case 64: return DecodeKernel<kDec, 64>;
    case kMmaDim: return DecodeMmaKernel<kDec, false>;
    case 256: return DecodeKernel<kDec, 256>;
    case 512: return DecodeKernel<kDec, 512>;
    default: return DecodeKernel<kDec, 1024>;
  }
}

template <Dec kDec>
KernelFn PickMma(bool few, bool shared) {
  if (few) return DecodeFewKernel<kDec>;
  return shared ? DecodeMmaKernel<kDec, true> : DecodeMmaKernel<kDec, false>;
}

// The one place a kernel is chosen. For padded head dim 128: `few`, at most
// kFewRows query rows per kv head; else `shared`, the page decoded once per
// block to shared memory (tiles of 3 or 4 m-tiles, software decode).
KernelFn PickDecode(Dec dec, int kd, bool few, bool shared) {
  if (kd == kMmaDim) {
    switch (dec) {
      case Dec::kE4M3Soft: return PickMma<Dec::kE4M3Soft>(few, shared);
      case Dec::kE4M3Native: return PickMma<Dec::kE4M3Native>(few, shared);
      case Dec::kE5M2Soft: return PickMma<Dec::kE5M2Soft>(few, shared);
      default: return PickMma<Dec::kE5M2Native>(few, shared);
    }
  }
  switch (dec) {
    case Dec::kE4M3Soft: return PickDecodeDim<Dec::kE4M3Soft>(kd);
    case Dec::kE4M3Native: return PickDecodeDim<Dec::kE4M3Native>(kd);
    case Dec::kE5M2Soft: return PickDecodeDim<Dec::kE5M2Soft>(kd);
    default: return PickDecodeDim<Dec::kE5M2Native>(kd);
  }
}

struct PrefillPick {
  PrefillFn fn = nullptr;
  size_t smem = 0;
  int dv = 0;
};

PrefillPick PickPrefill(int kd) {
  switch (kd) {
    case 64: return {PrefillKernel<64>, PrefillShape<64>::kSmem, PrefillShape<64>::kDv};
    case 128: return {PrefillKernel<128>, PrefillShape<128>::kSmem, PrefillShape<128>::kDv};
    case 256: return {PrefillKernel<256>, PrefillShape<256>::kSmem, PrefillShape<256>::kDv};
    case 512: return {PrefillKernel<512>, PrefillShape<512>::kSmem, PrefillShape<512>::kDv};
    default: return {};
  }
}

bool ValidShape(const AttentionProblem& p) {
  const bool q_ok = p.q_dtype == DType::kF32 || p.q_dtype == DType::kF16 || p.q_dtype == DType::kBF16;
  const bool o_ok =
      p.out_dtype == DType::kF32 || p.out_dtype == DType::kF16 || p.out_dtype == DType::kBF16;
  const KvLayout& l = p.layout;
  const bool mode_ok = l.scale_mode == KvScaleMode::kNone || l.scale_mode == KvScaleMode::kTensor ||
                       l.scale_mode == KvScaleMode::kHead || l.scale_mode == KvScaleMode::kTokenBlock;
  return q_ok && o_ok && mode_ok && l.kv_heads > 0 && l.kv_heads <= (1 << 20) && l.head_dim > 0 &&
         KernelDim(l.row_bytes()) > 0 && p.seq > 0 && p.seq < (int64_t{1} << 37) &&
         p.batch > 0 && p.heads > 0 && p.heads % l.kv_heads == 0 && p.q_len > 0 &&
         (!p.causal || p.q_len <= p.seq) && p.batch * p.heads * p.q_len < (int64_t{1} << 31) &&
         p.batch * (p.heads / l.kv_heads) * p.q_len < (int64_t{1} << 30);
}

struct Plan {
  bool prefill = false;
  bool fa = false;  // prefill by PrefillFa
  bool wg = false;  // prefill by PrefillWgmma
  KernelFn decode = nullptr;
  size_t decode_smem = 0;
  PrefillPick pre;
  Dec dec = Dec::kE4M3Soft;
  int tile_rows = 0;
  int row_tiles = 0;
  int64_t units = 0;
  int splits = 1;
  int pages_per_split = 0;
  int64_t off_acc = 0, total = 0;  // workspace, bytes
};

cudaError_t MakePlan(const AttentionProblem& p, int device, Plan* out) {
  DeviceInfo info;
  PLUME_CUDA_TRY(GetDeviceInfo(device, &info));
  if (p.path == DecodePath::kNative && info.cc < 89) return cudaErrorNotSupported;
  Plan pl;
  pl.dec = PickDec(p.format, p.path);
  const int kd = KernelDim(p.layout.row_bytes());
  const int64_t rows = p.batch * (p.heads / p.layout.kv_heads) * p.q_len;
  const int num_pages = static_cast<int>(KvLayout::pages_for(p.seq));

  bool prefill = false;
  const bool forced = p.kernel == AttentionKernel::kPrefill || p.kernel == AttentionKernel::kPrefillMmaSync;
  if (p.kernel != AttentionKernel::kDecode && (forced || p.q_len > kAttentionDecodeMaxQ)) {
    // The flash prefills (attention_prefill*.cu) first: Hopper's, then mma.sync.
    pl.wg = p.kernel != AttentionKernel::kPrefillMmaSync && PrefillWgmmaAvailable(kd, device);
    pl.fa = !pl.wg && PrefillFaAvailable(kd, device);
    pl.pre = PickPrefill(kd);
    prefill = pl.wg || pl.fa || (pl.pre.fn != nullptr && pl.pre.smem <= static_cast<size_t>(info.smem_optin));
    if (!prefill && forced) return cudaErrorNotSupported;
    if (prefill && !pl.fa && !pl.wg) {  // raises the kernel's shared memory limit, once
      int unused = 0;
      PLUME_CUDA_TRY(KernelBlocksPerSm(reinterpret_cast<const void*>(pl.pre.fn), kPrefillThreads,
                                       pl.pre.smem, device, &unused));
    }
  }
  pl.prefill = prefill;
  if (prefill) {
    pl.tile_rows = kPrefillRows;
    pl.row_tiles = static_cast<int>((rows + kPrefillRows - 1) / kPrefillRows);
    pl.units = p.layout.kv_heads * pl.row_tiles;
    pl.total = 256;
  } else {
    const bool few = rows <= kFewRows;
    const int mma_rows = static_cast<int>(std::min<int64_t>(kMmaRows, (rows + 15) / 16 * 16));
    // The shared-page decode pays off where decoding costs most: measured on
    // an H200 at 128k tokens, batch 16, it took the software decode from 510
    // to 375 us and the native one from 315 to 346 us.
    const bool soft = pl.dec == Dec::kE4M3Soft || pl.dec == Dec::kE5M2Soft;
    const bool shared = soft && mma_rows > 32 && kMmaSmemShared <= static_cast<size_t>(info.smem_optin);
    pl.decode = PickDecode(pl.dec, kd, few, shared);
    if (kd == kMmaDim && few) {  // tensor cores, operands swapped
      pl.decode_smem = kFewSmem;
      pl.tile_rows = kFewRows;
    } else if (kd == kMmaDim) {  // tensor cores: tiles of up to 64 rows, rounded to 16
      pl.decode_smem = shared ? kMmaSmemShared : kMmaSmem;
      pl.tile_rows = mma_rows;
    } else {
      pl.tile_rows = kRows;
    }
    pl.row_tiles = static_cast<int>((rows + pl.tile_rows - 1) / pl.tile_rows);
    pl.units = p.layout.kv_heads * pl.row_tiles;
    // Enough splits for one wave of resident blocks, each with at least one
    // page.
    int bps = 1;
    PLUME_CUDA_TRY(KernelBlocksPerSm(reinterpret_cast<const void*>(pl.decode), DecodeThreads(kd),
                                     pl.decode_smem, device, &bps));
    const int64_t target = int64_t{info.sms} * std::max(bps, 1);
    int64_t splits = std::min<int64_t>({num_pages, (target + pl.units - 1) / pl.units, kMaxSplits});
    splits = std::max<int64_t>(splits, 1);
    pl.pages_per_split = static_cast<int>((num_pages + splits - 1) / splits);
    pl.splits = (num_pages + pl.pages_per_split - 1) / pl.pages_per_split;
    const int64_t slots = pl.units * pl.splits * pl.tile_rows;
    pl.off_acc = (slots * 2 * 4 + 255) / 256 * 256;
    pl.total = pl.off_acc + slots * p.layout.head_dim * 4;
  }
  if (pl.units >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  *out = pl;
  return cudaSuccess;
}

}  // namespace

int64_t AttentionWorkspaceBytes(const AttentionProblem& p, int device) {
  Plan pl;
  if (!ValidShape(p) || MakePlan(p, device, &pl) != cudaSuccess) return 0;
  return pl.total;
}

cudaError_t Attention(const AttentionProblem& p, void* workspace, int64_t workspace_bytes,
                      cudaStream_t stream) {
  if (!ValidShape(p) || p.pages == nullptr || p.q == nullptr || p.out == nullptr ||
      workspace == nullptr ||
      (p.layout.global_scales() > 0 && (p.k_scales == nullptr || p.v_scales == nullptr))) {
    return cudaErrorInvalidValue;
  }
  int device = 0;
  PLUME_CUDA_TRY(cudaGetDevice(&device));
  Plan pl;
  PLUME_CUDA_TRY(MakePlan(p, device, &pl));
  if (workspace_bytes < pl.total) return cudaErrorInvalidValue;

  const KvLayout& l = p.layout;
  const Params k = MakeParams(p, pl.dec, pl.tile_rows, pl.row_tiles, pl.pages_per_split, pl.splits,
                              workspace, pl.off_acc);
  if (pl.prefill && pl.wg) return PrefillWgmma(p, KernelDim(l.row_bytes()), stream);
  if (pl.prefill && pl.fa) return PrefillFa(p, KernelDim(l.row_bytes()), stream);
  if (pl.prefill) {
    const int slices = static_cast<int>((l.head_dim + pl.pre.dv - 1) / pl.pre.dv);
    const dim3 grid(static_cast<unsigned>(pl.units), static_cast<unsigned>(slices));
    pl.pre.fn<<<grid, kPrefillThreads, pl.pre.smem, stream>>>(k, pl.dec);
    PLUME_CUDA_TRY_LAUNCH();
    return cudaSuccess;
  }
  const int kd = KernelDim(l.row_bytes());
  const int threads = DecodeThreads(kd);
  const dim3 grid(static_cast<unsigned>(pl.units), static_cast<unsigned>(pl.splits));
  pl.decode<<<grid, threads, pl.decode_smem, stream>>>(k);
  PLUME_CUDA_TRY_LAUNCH();
  const int64_t out_rows = p.batch * p.heads * p.q_len;
  CombineKernel<<<static_cast<unsigned>(out_rows), kCombineThreads, 0, stream>>>(k);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda
