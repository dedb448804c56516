// Flash-attention prefill over the paged FP8 K/V cache (FA2-style, mma.sync,
// sm_80+): its own translation unit, so that nvcc builds it in parallel with
// the other attention kernels. The dispatch (attention_dispatch.cu) calls it
// for q_len > 8 (or kPrefill) where it fits and keeps the older prefill
// kernel (attention_prefill_fallback.cuh) for sm_75 and for shared memory
// limits this one does not fit (head dim 256+ on sm_86/89).
//
// A block takes 64 query rows of one kv head: four row warps of 16 rows each,
// times kC warps that share those rows (kC = 2 at head dim 512, where one
// warp's 16 x 512 FP32 output would not fit its registers).
//  - Q is rounded to FP16 in shared memory once; every page's K and V tiles
//    (64 tokens, the page) are decoded once to FP16 shared memory (exact) and
//    read as mma fragments with ldmatrix (.trans for V), rows padded by 16
//    bytes so that ldmatrix is conflict-free.
//  - The next page's FP8 codes are loaded into registers while the current
//    page computes: K's during Q.K^T, V's during P.V.
//  - S = Q.K^T (FP32 accumulators) over the whole head dim: with kC = 2 each
//    of the pair takes 32 of the page's 64 tokens. Online softmax in FP32, in
//    log2 units; the pair swaps its row maxima and its P fragments (FP16)
//    through shared memory. P is the A operand of O += P.V as it lies in the
//    registers; each warp of a pair owns half the output columns.
//  - Masks (causal, tokens past seq) only on pages that need them: -inf
//    scores. Causal tiles skip the pages past their last visible token, and
//    the heaviest row tiles are launched first.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "attention_prefill.h"
#include "attention_prefill_common.cuh"
#include "fp8_regs.cuh"
#include "plume/cuda/check.h"

namespace plume::cuda {
namespace {

constexpr int kFaTok = static_cast<int>(kKvPageTokens);  // tokens per page (a K/V tile)

template <int kD>
struct FaShape {
  // Measured on an H200 (bench/RESULTS-gpu-attention.md): 128 rows per block
  // at D = 128 was 8% slower; 4 warps per 16 rows at D = 512 11% slower.
  static constexpr int kRows = 64;  // query rows per block
  static constexpr int kRowWarps = kRows / 16;
  static constexpr int kMinBlocks = kD <= 128 ? 3 : 1;  // <= 168 registers at D <= 128
  static constexpr int kC = kD >= 512 ? 2 : 1;  // warps sharing 16 query rows
  static constexpr int kWarps = kRowWarps * kC;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kDw = kD / kC;     // output columns per warp
  static constexpr int kTw = kFaTok / kC;  // tokens of S per warp
  static constexpr int kLd = kD + 8;      // halves per shared-memory row (16 bytes of padding)
  static constexpr int kChunks = kD / 16;  // 16-code pieces of a row
  static constexpr int kLoads = kFaTok * kChunks / kThreads;  // per thread and tile
  static constexpr size_t kTiles = (size_t{kRows} + 2 * kFaTok) * kLd * 2;  // Q, K, V
  // Pair exchange: P fragments [warp][8][32] words, row maxima and sums [2][64].
  static constexpr size_t kSmem = kTiles + (kC > 1 ? size_t{kWarps} * 256 * 4 + 2 * kC * 64 * 4 : 0);
  static_assert(kLoads * kThreads == kFaTok * kChunks && kTw % 16 == 0 && kDw % 16 == 0);
};

// Four 8x8 FP16 matrices from shared memory (lane l gives row l % 8 of matrix
// l / 8), as mma fragments; Trans transposes each.
template <bool kTrans>
__device__ __forceinline__ void Ldsm4(uint32_t (&r)[4], const __half* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(SmemAddr(p)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(SmemAddr(p)));
  }
#else
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

// The kC warps of row warp rw meet; barrier 0 is __syncthreads.
template <int kC>
__device__ __forceinline__ void GroupSync(int rw) {
  asm volatile("bar.sync %0, %1;" ::"r"(rw + 1), "n"(32 * kC) : "memory");
}


// One tile's FP8 codes of this thread (kLoads pieces of 16), zeros past the
// page's n tokens and past the row.
template <int kD>
__device__ __forceinline__ void LoadTile(const FaArgs& a, const uint8_t* base, int n, int tid,
                                         uint4 (&buf)[FaShape<kD>::kLoads]) {
  using S = FaShape<kD>;
#pragma unroll
  for (int it = 0; it < S::kLoads; ++it) {
    const int i = tid + it * S::kThreads;
    const int r = i / S::kChunks, u = i % S::kChunks;
    buf[it] = make_uint4(0, 0, 0, 0);
    if (r < n && u * 16 < a.row_bytes) {
      buf[it] = __ldg(reinterpret_cast<const uint4*>(base + static_cast<int64_t>(r) * a.row_bytes + u * 16));
    }
  }
}

template <int kD, Dec kDec>
__device__ __forceinline__ void StoreTileAs(const uint4 (&buf)[FaShape<kD>::kLoads], __half* dst, int tid) {
  using S = FaShape<kD>;
#pragma unroll
  for (int it = 0; it < S::kLoads; ++it) {
    const int i = tid + it * S::kThreads;
    const int r = i / S::kChunks, u = i % S::kChunks;
    const uint32_t w[4] = {buf[it].x, buf[it].y, buf[it].z, buf[it].w};
    uint32_t h[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) DecodeNanSafe<kDec>(w[j], h[j]);
    uint4* d = reinterpret_cast<uint4*>(dst + r * S::kLd + u * 16);
    d[0] = make_uint4(h[0][0], h[0][1], h[1][0], h[1][1]);
    d[1] = make_uint4(h[2][0], h[2][1], h[3][0], h[3][1]);
  }
}

// Decodes this thread's codes into an FP16 tile; the switch is uniform.
template <int kD>
__device__ __forceinline__ void StoreTile(Dec dec, const uint4 (&buf)[FaShape<kD>::kLoads], __half* dst, int tid) {
  switch (dec) {
    case Dec::kE4M3Soft: StoreTileAs<kD, Dec::kE4M3Soft>(buf, dst, tid); break;
    case Dec::kE4M3Native: StoreTileAs<kD, Dec::kE4M3Native>(buf, dst, tid); break;
    case Dec::kE5M2Soft: StoreTileAs<kD, Dec::kE5M2Soft>(buf, dst, tid); break;
    default: StoreTileAs<kD, Dec::kE5M2Native>(buf, dst, tid); break;
  }
}

// Grid: kv_heads x row tiles, tile-major with the last tiles (the longest
// under causal masks) first.
template <int kD>
__global__ void __launch_bounds__(FaShape<kD>::kThreads, FaShape<kD>::kMinBlocks) PrefillFaKernel(const FaArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using S = FaShape<kD>;
  constexpr int kC = S::kC, kLd = S::kLd, kDw = S::kDw, kTw = S::kTw, kRows = S::kRows;
  extern __shared__ __align__(16) __half fa_smem[];
  __half* qs = fa_smem;          // [64 rows][kLd]
  __half* ks = qs + kRows * kLd;     // [64 tokens][kLd]
  __half* vs = ks + kFaTok * kLd;   // [64 tokens][kLd]
  uint32_t* pex = reinterpret_cast<uint32_t*>(vs + kFaTok * kLd);  // [warp][8][32]
  float* mex = reinterpret_cast<float*>(pex + S::kWarps * 256);      // [kC][64] row maxima
  float* lex = mex + kC * 64;                                        // [kC][64] row sums

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int rw = warp % S::kRowWarps, cw = warp / S::kRowWarps;
  const int kvh = static_cast<int>(blockIdx.x % a.kv_heads);
  const int tile = a.row_tiles - 1 - static_cast<int>(blockIdx.x / a.kv_heads);
  const int lr0 = tile * kRows;
  const int nrows = min(kRows, a.rows - lr0);

  // Q, rounded to FP16; rows past the end and columns past head_dim zero.
  for (int i = tid; i < kRows * (kD / 2); i += S::kThreads) {
    const int r = i / (kD / 2), d = 2 * (i % (kD / 2));
    float x0 = 0.0f, x1 = 0.0f;
    if (r < nrows) {
      const int64_t base = FaRow(a, kvh, lr0 + r) * a.head_dim;
      if (d < a.head_dim) x0 = FaQ(a, base + d);
      if (d + 1 < a.head_dim) x1 = FaQ(a, base + d + 1);
    }
    *reinterpret_cast<__half2*>(qs + r * kLd + d) = __floats2half2_rn(x0, x1);
  }

  // The tokens the tile's rows see: all of [0, vis_min], none past vis_max.
  int64_t vis_min, vis_max;
  FaVisible(a, lr0, nrows, vis_min, vis_max);
  const int page_end = static_cast<int>(min(static_cast<int64_t>(a.num_pages), vis_max / kFaTok + 1));
  // This lane's rows (g and g + 8 of the warp's 16) and their last tokens.
  const int ra = rw * 16 + g, rb = ra + 8;
  const auto last_of = [&](int r) -> int64_t { return r < nrows ? FaLastVisible(a, lr0 + r) : -1; };
  const int64_t vis_a = last_of(ra), vis_b = last_of(rb);

  const int64_t koff = static_cast<int64_t>(kvh) * a.head_tile;
  const int64_t voff = a.codes_bytes + koff;
  const auto tokens = [&](int pg) {
    return static_cast<int>(min(static_cast<int64_t>(kFaTok), a.seq - static_cast<int64_t>(pg) * kFaTok));
  };

  uint4 buf[S::kLoads];
  LoadTile<kD>(a, a.pages[0] + koff, tokens(0), tid, buf);
  StoreTile<kD>(a.dec, buf, ks, tid);
  LoadTile<kD>(a, a.pages[0] + voff, tokens(0), tid, buf);
  StoreTile<kD>(a.dec, buf, vs, tid);
  __syncthreads();

  constexpr int kNo = kDw / 8;  // output n-tiles of the warp
  float o[kNo][4];
#pragma unroll
  for (int n = 0; n < kNo; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_a = kFaNegInf, m_b = kFaNegInf, l_a = 0.0f, l_b = 0.0f;
  float vref = 0.0f;  // the true output is o * vref (V scales may change per page)

  // ldmatrix lane addresses (fixed parts).
  const __half* q_ld = qs + (rw * 16 + (lane & 15)) * kLd + (lane >> 4) * 8;
  const __half* k_ld = ks + (cw * kTw + (lane & 7) + (lane >> 4) * 8) * kLd + ((lane >> 3) & 1) * 8;
  const __half* v_ld = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * kLd + cw * kDw + (lane >> 4) * 8;

  for (int pg = 0; pg < page_end; ++pg) {
    const uint8_t* page = a.pages[pg];
    const int64_t t0 = static_cast<int64_t>(pg) * kFaTok;
    const bool more = pg + 1 < page_end;
    if (more) LoadTile<kD>(a, a.pages[pg + 1] + koff, tokens(pg + 1), tid, buf);

    // S = Q K^T: the warp's 16 rows x its kTw tokens, the whole head dim.
    float s[kTw / 8][4];
#pragma unroll
    for (int j = 0; j < kTw / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll 4
    for (int k0 = 0; k0 < kD; k0 += 16) {
      uint32_t qa[4];
      Ldsm4<false>(qa, q_ld + k0);
#pragma unroll
      for (int jj = 0; jj < kTw / 16; ++jj) {
        uint32_t kb[4];
        Ldsm4<false>(kb, k_ld + jj * 16 * kLd + k0);
        Mma(s[2 * jj], qa[0], qa[1], qa[2], qa[3], kb[0], kb[1]);
        Mma(s[2 * jj + 1], qa[0], qa[1], qa[2], qa[3], kb[2], kb[3]);
      }
    }

    // Scores in log2 units; -inf where masked (only pages that need it).
    const float kscale = FaScale(a, page, kvh, false) * a.scale_log2;
    const float vscale = FaScale(a, page, kvh, true);
    const bool mask = t0 + kFaTok - 1 > vis_min;
    float mx_a = kFaNegInf, mx_b = kFaNegInf;
#pragma unroll
    for (int j = 0; j < kTw / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float xa = s[j][e] * kscale, xb = s[j][2 + e] * kscale;
        if (mask) {
          const int64_t tok = t0 + cw * kTw + 8 * j + 2 * t + e;
          xa = tok <= vis_a ? xa : kFaNegInf;
          xb = tok <= vis_b ? xb : kFaNegInf;
        }
        s[j][e] = xa;
        s[j][2 + e] = xb;
        mx_a = fmaxf(mx_a, xa);
        mx_b = fmaxf(mx_b, xb);
      }
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, x));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, x));
    }
    if constexpr (kC > 1) {
      if (t == 0) {
        mex[cw * 64 + ra] = mx_a;
        mex[cw * 64 + rb] = mx_b;
      }
      GroupSync<kC>(rw);
#pragma unroll
      for (int w = 0; w < kC; ++w) {
        mx_a = fmaxf(mx_a, mex[w * 64 + ra]);
        mx_b = fmaxf(mx_b, mex[w * 64 + rb]);
      }
    }
    float base_a, base_b, al_a, al_b;
    FaRebase(m_a, mx_a, base_a, al_a);
    FaRebase(m_b, mx_b, base_b, al_b);
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int j = 0; j < kTw / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[j][e] = exp2f(s[j][e] - base_a);
        s[j][2 + e] = exp2f(s[j][2 + e] - base_b);
        sum_a += s[j][e];
        sum_b += s[j][2 + e];
      }
    }
    l_a = l_a * al_a + sum_a;
    l_b = l_b * al_b + sum_b;
    const float ratio = FaVRatio(vscale, vref);  // O to this page's V scale
#pragma unroll
    for (int n = 0; n < kNo; ++n) {
      o[n][0] *= al_a * ratio;
      o[n][1] *= al_a * ratio;
      o[n][2] *= al_b * ratio;
      o[n][3] *= al_b * ratio;
    }

    // P as A fragments of P.V (16 tokens a k-step). With kC > 1 the group
    // gathers them through shared memory: k-step kk is warp kk / kOwn's.
    constexpr int kOwn = kTw / 16;
    uint32_t pa[kFaTok / 16][4];
#pragma unroll
    for (int kk = 0; kk < kOwn; ++kk) {
      pa[kk][0] = Half2Bits(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = Half2Bits(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = Half2Bits(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = Half2Bits(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    if constexpr (kC > 1) {
      uint32_t* mine = pex + warp * 256 + lane;
#pragma unroll
      for (int kk = 0; kk < kOwn; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) mine[(kk * 4 + r) * 32] = pa[kk][r];
      }
      GroupSync<kC>(rw);
#pragma unroll
      for (int kk = 0; kk < kFaTok / 16; ++kk) {
        const uint32_t* from = pex + ((kk / kOwn) * S::kRowWarps + rw) * 256 + (kk % kOwn) * 4 * 32 + lane;
#pragma unroll
        for (int r = 0; r < 4; ++r) pa[kk][r] = from[r * 32];
      }
    }

    // Every warp is done with this page's K tile: the next one replaces it,
    // and the next V tile's codes load during P.V.
    __syncthreads();
    if (more) {
      StoreTile<kD>(a.dec, buf, ks, tid);
      LoadTile<kD>(a, a.pages[pg + 1] + voff, tokens(pg + 1), tid, buf);
    }

    // O += P V over the warp's kDw columns.
#pragma unroll
    for (int kk = 0; kk < kFaTok / 16; ++kk) {
#pragma unroll
      for (int c = 0; c < kDw / 16; ++c) {
        uint32_t vb[4];
        Ldsm4<true>(vb, v_ld + kk * 16 * kLd + c * 16);
        Mma(o[2 * c], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], vb[0], vb[1]);
        Mma(o[2 * c + 1], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], vb[2], vb[3]);
      }
    }
    // The next V tile replaces this one once every warp is done with it. No
    // barrier after: the next page's Q.K^T does not read V, and the barrier
    // before its P.V orders these stores before those reads.
    if (more) {
      __syncthreads();
      StoreTile<kD>(a.dec, buf, vs, tid);
    }
  }

  // Row sums: over the four lanes of a row, then over the pair.
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, x);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, x);
  }
  if constexpr (kC > 1) {
    if (t == 0) {
      lex[cw * 64 + ra] = l_a;
      lex[cw * 64 + rb] = l_b;
    }
    GroupSync<kC>(rw);
    l_a = l_b = 0.0f;
#pragma unroll
    for (int w = 0; w < kC; ++w) {
      l_a += lex[w * 64 + ra];
      l_b += lex[w * 64 + rb];
    }
  }
  const float fa = vref / l_a, fb = vref / l_b;
  const int64_t qa_i = ra < nrows ? FaRow(a, kvh, lr0 + ra) * a.head_dim : -1;
  const int64_t qb_i = rb < nrows ? FaRow(a, kvh, lr0 + rb) * a.head_dim : -1;
  const bool pairs = (a.head_dim & 1) == 0;  // then two columns are one aligned store
#pragma unroll
  for (int n = 0; n < kNo; ++n) {
    const int c = cw * kDw + 8 * n + 2 * t;
    if (pairs && c < a.head_dim) {
      if (qa_i >= 0) StoreTwo(a.out, a.out_dtype, qa_i + c, o[n][0] * fa, o[n][1] * fa);
      if (qb_i >= 0) StoreTwo(a.out, a.out_dtype, qb_i + c, o[n][2] * fb, o[n][3] * fb);
      continue;
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (c + e >= a.head_dim) continue;
      if (qa_i >= 0) Store(a.out, a.out_dtype, qa_i + c + e, o[n][e] * fa);
      if (qb_i >= 0) Store(a.out, a.out_dtype, qb_i + c + e, o[n][2 + e] * fb);
    }
  }
#endif
}

using FaFn = void (*)(FaArgs);

struct FaPick {
  FaFn fn = nullptr;
  int threads = 0;
  int rows = 0;
  size_t smem = 0;
};

template <int kD>
FaPick FaFor() {
  return {PrefillFaKernel<kD>, FaShape<kD>::kThreads, FaShape<kD>::kRows, FaShape<kD>::kSmem};
}

FaPick PickFa(int kd) {
  switch (kd) {
    case 64: return FaFor<64>();
    case 128: return FaFor<128>();
    case 256: return FaFor<256>();
    case 512: return FaFor<512>();
    default: return {};
  }
}

}  // namespace

bool PrefillFaAvailable(int kd, int device) {
  const FaPick f = PickFa(kd);
  DeviceInfo info;
  if (f.fn == nullptr || GetDeviceInfo(device, &info) != cudaSuccess || info.cc < 80 ||
      f.smem > static_cast<size_t>(info.smem_optin)) {
    return false;
  }
  int unused = 0;
  return KernelBlocksPerSm(reinterpret_cast<const void*>(f.fn), f.threads, f.smem, device, &unused) ==
         cudaSuccess;
}

cudaError_t PrefillFa(const AttentionProblem& p, int kd, cudaStream_t stream) {
  const FaPick f = PickFa(kd);
  if (f.fn == nullptr) return cudaErrorNotSupported;
  const FaArgs a = MakeFaArgs(p, f.rows);
  const int64_t blocks = static_cast<int64_t>(a.row_tiles) * a.kv_heads;
  if (blocks >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  f.fn<<<static_cast<unsigned>(blocks), f.threads, f.smem, stream>>>(a);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda
