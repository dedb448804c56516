// FP8 GEMV kernels and their launcher: the only translation unit that
// instantiates them (gemv.h explains the design; NOTES.md the numbers).
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "plume/cuda/check.h"
#include "plume/cuda/gemv.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "fp8_regs.cuh"
#include "gemv_cublaslt.h"
#include "gemv_prep.cuh"
#include "gemv_splits.cuh"
#include "gemv_tuner.h"
#include "gemv_wgmma.h"

namespace plume::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 128;                     // columns per chunk (= one BLOCK128 block)
constexpr int kRowsPerBlock = kWarps * 16;      // each warp owns one 16-row mma tile
constexpr int kMaxN = 64;                       // mma columns per launch
constexpr int kXPad = kChunk + 8;               // smem row of one activation column, in halves
#ifndef PLUME_GEMV_DEPTH
#define PLUME_GEMV_DEPTH 1
#endif
constexpr int kGemvDepth = PLUME_GEMV_DEPTH;  // W chunks in flight ahead of the math
#ifndef PLUME_GEMV_STAGE_FROM
#define PLUME_GEMV_STAGE_FROM 2
#endif
// Column tiles from which activations are staged in shared memory; below,
// each warp reads them through L1.
constexpr int kStageFromNT = PLUME_GEMV_STAGE_FROM;

struct Params {
  const uint8_t* w;        // packed codes, row_bytes per row
  int64_t rows;
  int64_t row_bytes;       // padded columns (multiple of 16)
  const float* scales;
  ScaleMode mode;
  int64_t blocks_per_row;  // BLOCK128
  const uint8_t* nan_rows;
  float decode_factor;     // 2^8 for the software E4M3 decode, else 1

  const __half* x;         // [ncols][x_ld] FP16
  int64_t x_ld;            // multiple of kChunk
  int ncols;               // mma columns in use (<= kNT * 8)
  bool split;              // F32: vector v is columns 2v (hi) + 2v+1 (lo)
  const float* colmul;     // per column factor, or null for 1

  void* y;                 // [nvec][y_ld]
  DType y_dtype;
  int64_t y_ld;
  int nvec;

  int chunks;              // column chunks in a row
  int chunks_per_split;
  int splits;
  int64_t rows_pad;        // gridDim.x * kRowsPerBlock
  float* partial;          // [splits][rows_pad][kNT * 8]
  unsigned* counters;      // [gridDim.x], zero between launches
};

// ------------------------------------------------------------------- kernel

// The 32 bytes lane t of a warp reads from one row in chunk c: two 16-byte
// pieces, columns 16t.. and 64 + 16t.., so each load instruction covers 64
// contiguous bytes of every row it touches. Pieces past the row's padding
// (or rows past the end) read as 0.
__device__ __forceinline__ void LoadRow(const uint8_t* row, int64_t row_bytes, int c, int t,
                                        uint4 (&v)[2]) {
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int64_t off = static_cast<int64_t>(c) * kChunk + 64 * q + 16 * t;
    v[q] = row != nullptr && off < row_bytes
               ? __ldcs(reinterpret_cast<const uint4*>(row + off))
               : make_uint4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ uint32_t Word(const uint4 (&v)[2], int s) {
  const uint4& q = v[s >> 2];
  switch (s & 3) {
    case 0: return q.x;
    case 1: return q.y;
    case 2: return q.z;
    default: return q.w;
  }
}

// Activation columns [col][kXPad] of one chunk in shared memory, for batches
// over 8: the block's warps share them instead of each reading them from L2.
// The row pad of 16 bytes keeps the warp's 16-byte reads free of bank
// conflicts.
template <int kNT>
struct XStage {
  static constexpr int kHalves = kNT * 8 * kXPad;
};

[[maybe_unused]] __device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = __ldg(static_cast<const uint4*>(gmem));
#endif
}
__device__ __forceinline__ void CopyAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;");
#endif
}
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending));
#endif
}

// Starts copying chunk c of the activation columns in use into `dst`.
template <int kNT>
__device__ __forceinline__ void StageX(const Params& p, int c, __half* dst) {
  constexpr int kPieces = kNT * 8 * (kChunk / 8);  // 16-byte pieces
  for (int i = threadIdx.x; i < kPieces; i += kThreads) {
    const int col = i / (kChunk / 8);
    const int piece = i % (kChunk / 8);
    if (col < p.ncols) {
      CopyAsync16(dst + col * kXPad + piece * 8,
                  p.x + col * p.x_ld + static_cast<int64_t>(c) * kChunk + piece * 8);
    }
  }
  CopyAsyncCommit();
}

// The 16 activation pairs lane (g, t) needs for chunk c and column n*8+g,
// matching the W words of LoadRow: columns 16t.. and 64 + 16t.., read
// through L1 (the unstaged path).
__device__ __forceinline__ void LoadX(const Params& p, int c, int n, int g, int t,
                                      uint4 (&xb)[4]) {
  const int col = n * 8 + g;
  if (col >= p.ncols) {
#pragma unroll
    for (int i = 0; i < 4; ++i) xb[i] = make_uint4(0, 0, 0, 0);
    return;
  }
  const __half* src = p.x + col * p.x_ld + static_cast<int64_t>(c) * kChunk + 16 * t;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    xb[i] = __ldg(reinterpret_cast<const uint4*>(src + (i >> 1) * 64 + (i & 1) * 8));
  }
}

// Grid: (row tiles of kRowsPerBlock, column splits). Each warp multiplies its
// 16 rows by the kNT*8 activation columns over its split's chunks, writes the
// partial sums, and the last block of the row tile to finish reduces them.
template <Dec kDec, int kNT, bool kBlockScale>
__global__ void __launch_bounds__(kThreads) MmaGemvKernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (kDec == Dec::kE4M3Native || kDec == Dec::kE5M2Native) return;
#endif
  constexpr int kN = kNT * 8;
  constexpr bool kStaged = kNT >= kStageFromNT;
  extern __shared__ __align__(16) __half stage_mem[];  // 2 * XStage<kNT>::kHalves when staged
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t row_a = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp * 16 + g;
  const int64_t row_b = row_a + 8;
  const uint8_t* wa = row_a < p.rows ? p.w + row_a * p.row_bytes : nullptr;
  const uint8_t* wb = row_b < p.rows ? p.w + row_b * p.row_bytes : nullptr;
  const int c_begin = blockIdx.y * p.chunks_per_split;
  const int c_end = min(p.chunks, c_begin + p.chunks_per_split);

  float acc[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  if constexpr (kStaged) StageX<kNT>(p, c_begin, stage_mem);

  // Multiplies chunk c, whose W pieces are w[0..1] (row a) and w[2..3] (row b).
  auto process = [&](int c, const uint4 (&w)[4]) {
    if constexpr (kStaged) {
      if (c + 1 < c_end) {
        StageX<kNT>(p, c + 1, stage_mem + ((c + 1 - c_begin) & 1) * XStage<kNT>::kHalves);
        CopyAsyncWait<1>();
      } else {
        CopyAsyncWait<0>();
      }
      __syncthreads();
    }
    const __half* stage = stage_mem + ((c - c_begin) & 1) * XStage<kNT>::kHalves;
    const uint4 wa_v[2] = {w[0], w[1]};
    const uint4 wb_v[2] = {w[2], w[3]};

    uint32_t a[8][4];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      DecodeWord<kDec>(Word(wa_v, s), a[s][0], a[s][2]);
      DecodeWord<kDec>(Word(wb_v, s), a[s][1], a[s][3]);
    }

    float part[kNT][4];
    if constexpr (kBlockScale) {
#pragma unroll
      for (int n = 0; n < kNT; ++n) part[n][0] = part[n][1] = part[n][2] = part[n][3] = 0.0f;
    }
    if constexpr (kStaged) {
      // Step pairs outside, column tiles inside: consecutive mma feed
      // different accumulators, so they don't wait on each other.
#pragma unroll
      for (int s2 = 0; s2 < 4; ++s2) {
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
          const uint4 q = *reinterpret_cast<const uint4*>(
              stage + (n * 8 + g) * kXPad + 16 * t + (s2 >> 1) * 64 + (s2 & 1) * 8);
          float(&d)[4] = kBlockScale ? part[n] : acc[n];
          Mma(d, a[2 * s2][0], a[2 * s2][1], a[2 * s2][2], a[2 * s2][3], q.x, q.y);
          Mma(d, a[2 * s2 + 1][0], a[2 * s2 + 1][1], a[2 * s2 + 1][2], a[2 * s2 + 1][3], q.z, q.w);
        }
      }
    } else {
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        uint4 xb[4];
        LoadX(p, c, n, g, t, xb);
        float(&d)[4] = kBlockScale ? part[n] : acc[n];
#pragma unroll
        for (int s = 0; s < 8; ++s) {
          const uint4& q = xb[s >> 1];
          const uint32_t b0 = (s & 1) ? q.z : q.x;
          const uint32_t b1 = (s & 1) ? q.w : q.y;
          Mma(d, a[s][0], a[s][1], a[s][2], a[s][3], b0, b1);
        }
      }
    }
    if constexpr (kStaged) __syncthreads();  // the stage is refilled next time
    if constexpr (kBlockScale) {
      const float sa = row_a < p.rows ? __ldg(p.scales + row_a * p.blocks_per_row + c) : 0.0f;
      const float sb = row_b < p.rows ? __ldg(p.scales + row_b * p.blocks_per_row + c) : 0.0f;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        acc[n][0] = fmaf(part[n][0], sa, acc[n][0]);
        acc[n][1] = fmaf(part[n][1], sa, acc[n][1]);
        acc[n][2] = fmaf(part[n][2], sb, acc[n][2]);
        acc[n][3] = fmaf(part[n][3], sb, acc[n][3]);
      }
    }
  };
  auto load = [&](int c, uint4 (&w)[4]) {
    const bool in = c < c_end;
    uint4 va[2], vb[2];
    LoadRow(in ? wa : nullptr, p.row_bytes, c, t, va);
    LoadRow(in ? wb : nullptr, p.row_bytes, c, t, vb);
    w[0] = va[0];
    w[1] = va[1];
    w[2] = vb[0];
    w[3] = vb[1];
  };

  // W chunks are loaded kDepth ahead of their use, through a ring of
  // registers that the unrolled loop indexes with constants only.
  constexpr int kDepth = kGemvDepth;
  uint4 ring[kDepth + 1][4];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) load(c_begin + d, ring[d]);
  for (int c0 = c_begin; c0 < c_end; c0 += kDepth + 1) {
#pragma unroll
    for (int u = 0; u <= kDepth; ++u) {
      if (c0 + u < c_end) {
        load(c0 + u + kDepth, ring[(u + kDepth) % (kDepth + 1)]);
        process(c0 + u, ring[u]);
      }
    }
  }

  // Partial sums: [split][row][column].
  float* out = p.partial + static_cast<int64_t>(blockIdx.y) * p.rows_pad * kN;
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    const int col = n * 8 + 2 * t;
    *reinterpret_cast<float2*>(out + row_a * kN + col) = make_float2(acc[n][0], acc[n][1]);
    *reinterpret_cast<float2*>(out + row_b * kN + col) = make_float2(acc[n][2], acc[n][3]);
  }

  // The last block of this row tile to finish does the epilogue.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(p.counters + blockIdx.x, 1u) == unsigned(p.splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();

  // Finishes (row, column c) from its sum(s): F32 activations are columns
  // 2v (hi) and 2v + 1 (lo) of vector v.
  auto finish = [&](int64_t row, int v, float sum) {
    if (p.colmul != nullptr) sum *= p.colmul[p.split ? 2 * v : v];
    float scale = p.decode_factor;
    if (p.mode == ScaleMode::kTensor) scale *= p.scales[0];
    if (p.mode == ScaleMode::kRow) scale *= p.scales[row];
    sum *= scale;
    if (p.nan_rows != nullptr && p.nan_rows[row] != 0) sum = __int_as_float(0x7fc00000);
    Store(p.y, p.y_dtype, v * p.y_ld + row, sum);
  };
  SumSplits<kThreads, 1>(p.partial, p.rows_pad, kN, static_cast<int64_t>(blockIdx.x) * kRowsPerBlock,
                      kRowsPerBlock, p.rows, p.ncols, p.splits,
                      [&](int64_t row, int col, float4 s) {
                        const float c[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                          if (p.split) {
                            if (j % 2 == 0 && (col + j) / 2 < p.nvec) finish(row, (col + j) / 2, c[j] + c[j + 1]);
                          } else if (col + j < p.nvec) {
                            finish(row, col + j, c[j]);
                          }
                        }
                      });
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;  // ready for the next launch
}

// --------------------------------------------------------------- pre-pass

// One block per vector: activations to FP16 columns (see gemv.h), zero-padded
// to x_ld, with the factor that undoes the per-vector scaling in colmul.
template <DType kIn>
__global__ void __launch_bounds__(kPrepThreads)
    PrepKernel(const void* x, int64_t cols, __half* out, int64_t x_ld, float* colmul,
               float x_scale) {
  const int v = blockIdx.x;
  const void* xv = static_cast<const char*>(x) + v * cols * static_cast<int64_t>(DTypeSize(kIn));
  const int e = VectorExponent<kIn>(xv, cols);  // the vector is multiplied by 2^e
  constexpr bool kSplit = kIn == DType::kF32;
  __half* hi = out + (kSplit ? 2 * v : v) * x_ld;
  __half* lo = hi + x_ld;
  for (int64_t i = threadIdx.x; i < x_ld; i += kPrepThreads) {
    const float f = i < cols ? ldexpf(LoadX<kIn>(xv, i), e) : 0.0f;
    const __half h = __float2half_rn(f);
    hi[i] = h;
    if constexpr (kSplit) lo[i] = __float2half_rn(f - __half2float(h));
  }
  if (threadIdx.x == 0) {
    const float m = ColumnFactor<kIn>(e, x_scale);
    colmul[kSplit ? 2 * v : v] = m;
    if (kSplit) colmul[2 * v + 1] = m;
  }
}

__global__ void FindNanRowsKernel(const uint32_t* words, int64_t total, int64_t words_per_row,
                                  uint8_t* nan_rows, int* any_nan) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (HasE4M3Nan(words[i])) {
      nan_rows[i / words_per_row] = 1;
      *any_nan = 1;
    }
  }
}

// ----------------------------------------------------------------- dispatch

using KernelFn = void (*)(Params);

template <Dec kDec, bool kBlock>
KernelFn PickNT(int nt) {
  switch (nt) {
    case 1: return MmaGemvKernel<kDec, 1, kBlock>;
    case 2: return MmaGemvKernel<kDec, 2, kBlock>;
    case 4: return MmaGemvKernel<kDec, 4, kBlock>;
    case 8: return MmaGemvKernel<kDec, 8, kBlock>;
  }
  return nullptr;  // the plan never asks for another tile count
}

// The one place a kernel is chosen.
KernelFn PickKernel(Fp8Format format, DecodePath path, bool block, int nt) {
  return DispatchDec<KernelFn>(format, path == DecodePath::kNative, [&](auto dec) {
    constexpr Dec kDec = decltype(dec)::value;
    return block ? PickNT<kDec, true>(nt) : PickNT<kDec, false>(nt);
  });
}

struct Plan {
  GemvKernel kernel = GemvKernel::kMma;
  wgmma_gemv::Plan hopper;  // kWgmma
  lt_gemv::Plan lt;         // kCublasLt
  // kMma:
  bool prep = false;       // activations go through PrepKernel
  bool split = false;      // F32: two FP16 columns per vector
  int vec_per_tile = 0;    // vectors per launch
  int nt = 1;              // mma column tiles of 8
  KernelFn fn = nullptr;
  size_t smem = 0;         // dynamic shared memory of fn
  int chunks = 0;
  int64_t x_ld = 0;
  int row_tiles = 0;
  int splits = 1;
  int chunks_per_split = 0;
  // Workspace offsets, bytes.
  int64_t off_colmul = 0, off_x = 0, off_partial = 0, total = 0;
};

int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// plume's own kernel family for a device of compute capability cc when
// nothing was measured: the Hopper kernels where they run.
GemvKernel StaticChoice(int cc) {
  return wgmma_gemv::Runs(cc) ? GemvKernel::kWgmma : GemvKernel::kMma;
}

// Whether kAuto measures p's candidates on `cc`: more than one family may
// run it (the Hopper kernels beside the mma.sync ones, or cuBLASLt's FP8
// GEMM for FP8 activations).
bool Tunable(const GemvProblem& p, int cc) {
  return wgmma_gemv::Runs(cc) || (lt_gemv::Runs(cc) && lt_gemv::Takes(p));
}

// The kernel family for p on `device` (compute capability cc).
// cudaErrorNotSupported when a forced one does not run there. kAuto: the
// measured choice for p's key once there is one (Gemv measures on first
// use), else the static one.
cudaError_t Resolve(const GemvProblem& p, int device, int cc, GemvKernel* out) {
  switch (p.kernel) {
    case GemvKernel::kAuto: {
      const GemvKernel measured =
          Tunable(p, cc) ? gemv_tuner::Lookup(gemv_tuner::KeyOf(p, device)) : GemvKernel::kAuto;
      *out = measured != GemvKernel::kAuto ? measured : StaticChoice(cc);
      return cudaSuccess;
    }
    case GemvKernel::kMma: *out = GemvKernel::kMma; return cudaSuccess;
    case GemvKernel::kWgmma:
      if (!wgmma_gemv::Runs(cc)) return cudaErrorNotSupported;
      *out = GemvKernel::kWgmma;
      return cudaSuccess;
    case GemvKernel::kCublasLt:
      if (!lt_gemv::Runs(cc) || !lt_gemv::Takes(p)) return cudaErrorNotSupported;
      *out = GemvKernel::kCublasLt;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;  // a kernel value this dispatch does not know
}

// The bytes at the start of a workspace that plume's kernels keep their
// per-row-tile counters in (both families tile rows by 128): the cuBLASLt
// path's buffers start past them, so a measurement that runs every family
// on one workspace leaves the counters at zero.
int64_t CounterBytes(int64_t rows) {
  return AlignUp((rows + kRowsPerBlock - 1) / kRowsPerBlock * 4, 256);
}

cudaError_t MakePlan(const GemvProblem& p, int device, const DeviceInfo& info, Plan* out) {
  Plan pl;
  PLUME_CUDA_TRY(Resolve(p, device, info.cc, &pl.kernel));
  if (pl.kernel == GemvKernel::kCublasLt) {
    const cudaError_t e = lt_gemv::MakePlan(p, device, info.cc, CounterBytes(p.rows), &pl.lt);
    if (e == cudaSuccess) {
      pl.total = pl.lt.total;
      *out = pl;
      return cudaSuccess;
    }
    // kAuto measured cuBLASLt for p's bucket, but it has no algorithm for
    // this call (its exact batch or alignment): plume's kernel runs it.
    if (e != cudaErrorNotSupported || p.kernel != GemvKernel::kAuto) return e;
    pl.kernel = StaticChoice(info.cc);
  }
  if (pl.kernel == GemvKernel::kWgmma) {
    PLUME_CUDA_TRY(wgmma_gemv::MakePlan(p, info.sms, &pl.hopper));
    pl.total = pl.hopper.total;
    *out = pl;
    return cudaSuccess;
  }
  pl.chunks = static_cast<int>((p.cols + kChunk - 1) / kChunk);
  // F16 rows that start 16-byte aligned and hold whole chunks are read in place.
  pl.prep = !(p.x_dtype == DType::kF16 && p.cols % kChunk == 0 &&
              reinterpret_cast<uintptr_t>(p.x) % 16 == 0);
  pl.split = p.x_dtype == DType::kF32;
  pl.vec_per_tile = pl.split ? kMaxN / 2 : kMaxN;
  pl.x_ld = pl.prep ? static_cast<int64_t>(pl.chunks) * kChunk : p.cols;
  const int64_t ncols = std::min<int64_t>(p.batch, pl.vec_per_tile) * (pl.split ? 2 : 1);
  pl.nt = ncols <= 8 ? 1 : ncols <= 16 ? 2 : ncols <= 32 ? 4 : 8;
  pl.fn = PickKernel(p.format, p.path, p.scale_mode == ScaleMode::kBlock128, pl.nt);
  if (pl.fn == nullptr) return cudaErrorInvalidValue;
  pl.smem = pl.nt >= kStageFromNT ? size_t{2} * pl.nt * 8 * kXPad * sizeof(__half) : 0;
  int bps = 1;
  PLUME_CUDA_TRY(KernelBlocksPerSm(reinterpret_cast<const void*>(pl.fn), kThreads, pl.smem, device, &bps));
  pl.row_tiles = static_cast<int>((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  // Split the columns so that the grid fills the GPU in one wave, keeping at
  // least 4 chunks per split (8 when the activations are staged, whose
  // pipeline takes longer to fill); measured in docs/bench-raw/gemv-splits.txt.
  const int64_t slots = int64_t{info.sms} * bps;
  int splits = static_cast<int>(std::min<int64_t>(slots / pl.row_tiles, 32));
  splits = std::max(1, std::min(splits, pl.chunks / (pl.nt >= kStageFromNT ? 8 : 4)));
  pl.chunks_per_split = (pl.chunks + splits - 1) / splits;
  pl.splits = (pl.chunks + pl.chunks_per_split - 1) / pl.chunks_per_split;
  const int64_t counters = AlignUp(int64_t{pl.row_tiles} * 4, 256);
  pl.off_colmul = counters;
  pl.off_x = pl.off_colmul + AlignUp(kMaxN * 4, 256);
  // Room for the pre-pass output whether or not this call needs it, so the
  // size doesn't depend on the activations' address.
  const int64_t x_bytes = AlignUp(int64_t{kMaxN} * pl.chunks * kChunk * 2, 256);
  pl.off_partial = pl.off_x + x_bytes;
  pl.total = pl.off_partial + int64_t{pl.splits} * pl.row_tiles * kRowsPerBlock * pl.nt * 8 *
                                  int64_t{sizeof(float)};
  *out = pl;
  return cudaSuccess;
}

cudaError_t LaunchPrep(DType t, int nvec, const void* x, int64_t cols, __half* out, int64_t x_ld,
                       float* colmul, float x_scale, cudaStream_t stream) {
  return DispatchXDType(t, [&](auto in) {
    PrepKernel<decltype(in)::value><<<dim3(static_cast<unsigned>(nvec)), kPrepThreads, 0, stream>>>(
        x, cols, out, x_ld, colmul, x_scale);
    return cudaGetLastError();
  });
}

// Shape and types; the workspace size depends on nothing else. Values no
// kernel is chosen for fail here rather than run as another: a format or
// decode path outside its enum, and any scale mode but the four resident
// ones (BLOCK128X128 is held as BLOCK128; the kernels never see it).
bool ValidShape(const GemvProblem& p) {
  const bool x_ok = p.x_dtype == DType::kF32 || p.x_dtype == DType::kF16 ||
                    p.x_dtype == DType::kBF16 || p.x_dtype == DType::kE4M3 ||
                    p.x_dtype == DType::kE5M2;
  const bool y_ok = p.y_dtype == DType::kF32 || p.y_dtype == DType::kF16 ||
                    p.y_dtype == DType::kBF16;
  const bool format_ok = p.format == Fp8Format::kE4M3 || p.format == Fp8Format::kE5M2;
  const bool mode_ok = p.scale_mode == ScaleMode::kNone || p.scale_mode == ScaleMode::kTensor ||
                       p.scale_mode == ScaleMode::kRow || p.scale_mode == ScaleMode::kBlock128;
  const bool path_ok = p.path == DecodePath::kNative || p.path == DecodePath::kSoftware;
  return p.rows > 0 && p.cols > 0 && x_ok && y_ok && format_ok && mode_ok && path_ok &&
         p.rows <= (int64_t{1} << 31) / kMaxN;
}

bool ValidProblem(const GemvProblem& p) {
  return ValidShape(p) && p.words != nullptr && p.x != nullptr && p.y != nullptr && p.batch > 0 &&
         (p.scale_mode == ScaleMode::kNone || p.scales != nullptr);
}

}  // namespace

const char* GemvKernelName(GemvKernel k) {
  switch (k) {
    case GemvKernel::kAuto: return "auto";
    case GemvKernel::kMma: return "mma";
    case GemvKernel::kWgmma: return "wgmma";
    case GemvKernel::kCublasLt: return "cublaslt";
  }
  return "unknown";
}

bool ParseGemvKernel(const char* name, GemvKernel* out) {
  const std::string_view n = name == nullptr ? "" : name;
  for (GemvKernel k :
       {GemvKernel::kAuto, GemvKernel::kMma, GemvKernel::kWgmma, GemvKernel::kCublasLt}) {
    if (n == GemvKernelName(k)) {
      *out = k;
      return true;
    }
  }
  return false;
}

GemvKernel ChosenGemvKernel(const GemvProblem& p, int device, bool* measured) {
  DeviceInfo info;
  Plan pl;
  if (measured != nullptr) *measured = false;
  if (!ValidShape(p) || p.batch <= 0 || GetDeviceInfo(device, &info) != cudaSuccess ||
      MakePlan(p, device, info, &pl) != cudaSuccess) {
    return GemvKernel::kAuto;
  }
  if (measured != nullptr && p.kernel == GemvKernel::kAuto && Tunable(p, info.cc)) {
    *measured = gemv_tuner::Lookup(gemv_tuner::KeyOf(p, device)) != GemvKernel::kAuto;
  }
  return pl.kernel;
}

DecodePath DefaultDecodePath(int device) {
  DeviceInfo info;
  if (GetDeviceInfo(device, &info) != cudaSuccess) return DecodePath::kSoftware;
  return info.cc >= 89 ? DecodePath::kNative : DecodePath::kSoftware;
}

namespace {

// A call's plan, and whether kAuto still has to measure its candidates
// (then `candidates` holds each family's plan and `total` the largest
// workspace; with a cuBLASLt candidate, `lt_check` is its plan with F32
// results, and two F32 result buffers for the check lie at `off_check`).
struct CallPlan {
  Plan plan;
  bool tune = false;
  int ncandidates = 0;
  Plan candidates[gemv_tuner::kMaxCandidates];
  Plan lt_check;
  int64_t off_check = 0, check_bytes = 0;
  int64_t total = 0;
};

cudaError_t PlanFor(const GemvProblem& p, int device, CallPlan* out) {
  if (!ValidShape(p) || p.batch <= 0) return cudaErrorInvalidValue;
  DeviceInfo info;
  PLUME_CUDA_TRY(GetDeviceInfo(device, &info));
  if (p.path == DecodePath::kNative && info.cc < 89) return cudaErrorNotSupported;
  CallPlan c;
  PLUME_CUDA_TRY(MakePlan(p, device, info, &c.plan));
  c.total = c.plan.total;
  const bool tune = p.kernel == GemvKernel::kAuto && Tunable(p, info.cc) &&
                    gemv_tuner::Lookup(gemv_tuner::KeyOf(p, device)) == GemvKernel::kAuto;
  if (tune) {
    GemvProblem forced = p;
    for (GemvKernel k : {GemvKernel::kMma, GemvKernel::kWgmma, GemvKernel::kCublasLt}) {
      forced.kernel = k;
      Plan cand;
      cudaError_t e = MakePlan(forced, device, info, &cand);
      if (e == cudaSuccess && k == GemvKernel::kCublasLt) {
        // The check's run: F32 results into a workspace buffer (256-byte
        // aligned, as a null y reads).
        GemvProblem f32 = forced;
        f32.y = nullptr;
        f32.y_dtype = DType::kF32;
        e = MakePlan(f32, device, info, &c.lt_check);
        c.total = std::max(c.total, c.lt_check.total);
      }
      if (e == cudaErrorNotSupported) continue;  // not on this device, or not for p
      PLUME_CUDA_TRY(e);
      c.total = std::max(c.total, cand.total);
      c.candidates[c.ncandidates++] = cand;
    }
    c.tune = c.ncandidates > 1;
    if (c.tune && c.lt_check.kernel == GemvKernel::kCublasLt) {
      c.off_check = AlignUp(c.total, 256);
      c.check_bytes = AlignUp(p.batch * p.rows * int64_t{sizeof(float)}, 256);
      c.total = c.off_check + 2 * c.check_bytes;
    }
  }
  *out = c;
  return cudaSuccess;
}

cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream);

// Measures the candidates on the call's own data (gemv_tuner::TuneAndLaunch)
// and records the fastest correct one for p's key. Skipped (the static
// choice runs) while the stream is being captured into a graph.
cudaError_t TuneAndLaunch(const GemvProblem& p, int device, const CallPlan& c, void* ws,
                          cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PLUME_CUDA_TRY(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return Launch(p, c.plan, ws, stream);
  GemvKernel kernels[gemv_tuner::kMaxCandidates];
  for (int i = 0; i < c.ncandidates; ++i) kernels[i] = c.candidates[i].kernel;
  gemv_tuner::Check check;
  check.launch = [&](int i, float* y) {
    GemvProblem q = p;
    q.y = y;
    q.y_dtype = DType::kF32;
    const bool lt = c.candidates[i].kernel == GemvKernel::kCublasLt;
    return Launch(q, lt ? c.lt_check : c.candidates[i], ws, stream);
  };
  check.a = reinterpret_cast<float*>(static_cast<char*>(ws) + c.off_check);
  check.b = reinterpret_cast<float*>(static_cast<char*>(ws) + c.off_check + c.check_bytes);
  check.count = p.batch * p.rows;
  return gemv_tuner::TuneAndLaunch(
      gemv_tuner::KeyOf(p, device), kernels, c.ncandidates,
      [&](int i) { return Launch(p, c.candidates[i], ws, stream); }, check, stream);
}

cudaError_t Run(const GemvProblem& p, int device, const CallPlan& c, void* ws, cudaStream_t stream) {
  return c.tune ? TuneAndLaunch(p, device, c, ws, stream) : Launch(p, c.plan, ws, stream);
}

}  // namespace

int64_t GemvWorkspaceBytes(const GemvProblem& p, int device) {
  CallPlan c;
  return PlanFor(p, device, &c) == cudaSuccess ? c.total : 0;
}

cudaError_t Gemv(const GemvProblem& p, void* workspace, int64_t workspace_bytes,
                 cudaStream_t stream) {
  if (workspace == nullptr || !ValidProblem(p)) return cudaErrorInvalidValue;
  int device = 0;
  PLUME_CUDA_TRY(cudaGetDevice(&device));
  CallPlan c;
  PLUME_CUDA_TRY(PlanFor(p, device, &c));
  if (workspace_bytes < c.plan.total) return cudaErrorInvalidValue;
  c.tune = c.tune && workspace_bytes >= c.total;  // room for both candidates
  return Run(p, device, c, workspace, stream);
}

cudaError_t Gemv(const GemvProblem& p, const std::function<void*(int64_t bytes)>& workspace,
                 cudaStream_t stream) {
  if (!ValidProblem(p)) return cudaErrorInvalidValue;
  int device = 0;
  PLUME_CUDA_TRY(cudaGetDevice(&device));
  CallPlan c;
  PLUME_CUDA_TRY(PlanFor(p, device, &c));
  void* ws = workspace(c.total);
  if (ws == nullptr) return cudaErrorMemoryAllocation;
  return Run(p, device, c, ws, stream);
}

namespace {

cudaError_t LaunchMma(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream);

cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream) {
  switch (pl.kernel) {
    case GemvKernel::kMma: return LaunchMma(p, pl, workspace, stream);
    case GemvKernel::kWgmma: return wgmma_gemv::Launch(p, pl.hopper, workspace, stream);
    case GemvKernel::kCublasLt: return lt_gemv::Launch(p, pl.lt, workspace, stream);
    case GemvKernel::kAuto: break;  // a plan always holds a resolved family
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchMma(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream) {
  char* ws = static_cast<char*>(workspace);
  Params k{};
  k.w = reinterpret_cast<const uint8_t*>(p.words);
  k.rows = p.rows;
  k.row_bytes = PackedLayout{p.rows, p.cols}.padded_cols();
  k.scales = p.scales;
  k.mode = p.scale_mode;
  k.blocks_per_row = PackedLayout{p.rows, p.cols}.blocks_per_row();
  const bool soft_e4m3 = p.format == Fp8Format::kE4M3 && p.path == DecodePath::kSoftware;
  k.nan_rows = soft_e4m3 ? p.nan_rows : nullptr;
  k.decode_factor = soft_e4m3 ? 256.0f : 1.0f;
  k.x_ld = pl.x_ld;
  k.split = pl.split;
  k.colmul = pl.prep ? reinterpret_cast<float*>(ws + pl.off_colmul) : nullptr;
  k.y_dtype = p.y_dtype;
  k.y_ld = p.rows;
  k.chunks = pl.chunks;
  k.chunks_per_split = pl.chunks_per_split;
  k.splits = pl.splits;
  k.rows_pad = int64_t{pl.row_tiles} * kRowsPerBlock;
  k.partial = reinterpret_cast<float*>(ws + pl.off_partial);
  k.counters = reinterpret_cast<unsigned*>(ws);

  const int64_t x_elem = DTypeSize(p.x_dtype);
  const int64_t y_elem = DTypeSize(p.y_dtype);
  for (int64_t v0 = 0; v0 < p.batch; v0 += pl.vec_per_tile) {
    const int nvec = static_cast<int>(std::min<int64_t>(pl.vec_per_tile, p.batch - v0));
    const void* x = static_cast<const char*>(p.x) + v0 * p.cols * x_elem;
    if (pl.prep) {
      k.x = reinterpret_cast<const __half*>(ws + pl.off_x);
      PLUME_CUDA_TRY(LaunchPrep(p.x_dtype, nvec, x, p.cols, reinterpret_cast<__half*>(ws + pl.off_x),
                                pl.x_ld, reinterpret_cast<float*>(ws + pl.off_colmul), p.x_scale,
                                stream));
    } else {
      k.x = static_cast<const __half*>(x);
    }
    k.nvec = nvec;
    k.ncols = pl.split ? 2 * nvec : nvec;
    k.y = static_cast<char*>(p.y) + v0 * p.rows * y_elem;
    const dim3 grid(static_cast<unsigned>(pl.row_tiles), static_cast<unsigned>(pl.splits));
    pl.fn<<<grid, kThreads, pl.smem, stream>>>(k);
    PLUME_CUDA_TRY_LAUNCH();
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t FindNanRows(const uint32_t* words, int64_t rows, int64_t cols, uint8_t* nan_rows,
                        int* any_nan, cudaStream_t stream) {
  if (words == nullptr || nan_rows == nullptr || any_nan == nullptr || rows <= 0 || cols <= 0) {
    return cudaErrorInvalidValue;
  }
  const PackedLayout l{rows, cols};
  PLUME_CUDA_TRY(cudaMemsetAsync(nan_rows, 0, static_cast<size_t>(rows), stream));
  const int64_t total = l.total_words();
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 4096));
  FindNanRowsKernel<<<blocks, 256, 0, stream>>>(words, total, l.words_per_row(), nan_rows, any_nan);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda
