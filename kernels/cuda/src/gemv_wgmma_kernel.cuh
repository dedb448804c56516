// The Hopper FP8 GEMV's kernel (sm_90a), its shapes and parameters: described
// in gemv_wgmma.cu, which holds the activation pre-pass, the dispatch, the
// plan and the launch, and is the only file that includes this one
// (internal linkage).
#pragma once

#include <cuda.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "plume/kernels/layout.h"
#include "fp8_regs.cuh"
#include "gemv_prep.cuh"
#include "gemv_splits.cuh"
#include "gemv_wgmma.h"
#include "gemv_wgmma_layout.h"
#include "sm90.cuh"
#include "sm90_limits.h"
#include "wgmma.cuh"

namespace plume::cuda::wgmma_gemv {
namespace {

using namespace wgmma_layout;

// Build variants for measurement only (NOTES.md): 1 runs the pipeline with
// no math, 2 decodes but issues no MMA, 3 skips the split-K finish, 4 skips
// the activation pre-pass. 0, the default, is the kernel.
#ifndef PLUME_WGMMA_VARIANT
#define PLUME_WGMMA_VARIANT 0
#endif

// Measurement-only overrides (NOTES.md): the blocks per multiprocessor at
// N = 8, the deepest ring at N = 8 and above it, and whether a W stage is
// released as soon as its codes are in registers (1) or only when the
// chunk's MMAs are done (0).
#ifndef PLUME_WGMMA_BLOCKS_N8
#define PLUME_WGMMA_BLOCKS_N8 1
#endif
#ifndef PLUME_WGMMA_MAX_STAGES_N8
#define PLUME_WGMMA_MAX_STAGES_N8 12
#endif
#ifndef PLUME_WGMMA_MAX_STAGES
#define PLUME_WGMMA_MAX_STAGES 8
#endif
#ifndef PLUME_WGMMA_EARLY_RELEASE
#define PLUME_WGMMA_EARLY_RELEASE 1
#endif
// Split-K finish through distributed shared memory: a row tile's splits run
// as one cluster and the other splits' sums go into the first block's
// shared memory (1), instead of through global memory and a counter (0).
#ifndef PLUME_WGMMA_CLUSTER
#define PLUME_WGMMA_CLUSTER 0
#endif
// The W tensor map's L2 promotion: 0 none, 1 64 B, 2 128 B, 3 256 B.
#ifndef PLUME_WGMMA_L2_PROMOTION
#define PLUME_WGMMA_L2_PROMOTION 3
#endif
// The largest N whose plans may take paired stages (0: never). N = 128
// would halve the ring: the paired image slot holds two chunks.
#ifndef PLUME_WGMMA_PAIR_MAX_N
#define PLUME_WGMMA_PAIR_MAX_N 64
#endif
// At N = 64 the paired ring is shallower: 3 stages of two 64-row chunks (48
// KiB of W in flight) against 5 of 128 rows (80 KiB). Measured on an H100
// (bench/RESULTS-gpu.md), pairing there took 0.92-0.94x the time at 8192^2
// (64 chunks a block) and 0.78x at 4096^2 (16), where it saves a split-K
// finish, but 1.013-1.017x at 8192x28672 (224 chunks), where the stream is
// long. So N = 64 pairs only up to this many chunks a split.
constexpr int kPairMaxChunksN64 = 128;
// What a block costs beyond its chunks (filling the ring, the first TMA's
// latency, the epilogue), in chunks of 128 rows, when the plan weighs
// split counts: more splits make more, shorter blocks. With 0, 28672x8192
// took four splits (896 paired blocks, 7 waves); with 4 it takes none (224
// blocks, 2 waves), 0.86-0.92x the time at batches 1-32 on an H100, the
// other shapes' plans unchanged (bench/RESULTS-gpu.md).
#ifndef PLUME_WGMMA_BLOCK_COST
#define PLUME_WGMMA_BLOCK_COST 4
#endif

constexpr int kConsumerWarps = 8;                    // two warp groups
constexpr int kThreads = kConsumerWarps * 32 + 32;   // + the producer warp
constexpr int kMaxN = 128;
constexpr int kMaxStageMemory = 208 * 1024;

// Shared memory holds two rings: W tiles (kStages slots) and activation
// images (kImageSlots). A consumer releases a W slot as soon as its codes
// are in registers, but an image slot only when the chunk's MMAs, which read
// it, are done: about two chunks later, so the image ring has two more slots
// and the producer never waits on it before it may refill a W slot.
template <int kN, bool kPair = false>
struct Cfg {
  static constexpr int kChunkImage = kN * kChunk * 2;  // one chunk's image, a multiple of 256
  static constexpr int kImageBytes = kChunkImage * (kPair ? 2 : 1);  // an image slot
  static constexpr int kSlack = PLUME_WGMMA_EARLY_RELEASE ? 2 : 0;
  // One block per multiprocessor. At N = 8 its ring goes as deep as shared
  // memory allows (11 W slots): on an H100 that took 0.96-0.97x the time of
  // two blocks with half the ring each at 16384^2, batches 1 and 8, and
  // 0.99-1.01x at 4096^2 and 8192^2 (bench/RESULTS-gpu.md). From N = 16 the
  // ring stays at 8 slots: 10 took 1.00x the time at 16384^2 and 1.01x at
  // 8192^2 (batch 16), and two blocks' register cap made ptxas serialize the
  // wgmma (C7512).
  static constexpr int kBlocksPerSm = kN <= 8 ? PLUME_WGMMA_BLOCKS_N8 : 1;
  static constexpr int kMaxStages = kN <= 8 ? PLUME_WGMMA_MAX_STAGES_N8 : PLUME_WGMMA_MAX_STAGES;
  static constexpr int kStages =
      std::min(kMaxStages, (kMaxStageMemory / kBlocksPerSm - kSlack * kImageBytes) /
                               (kTileBytes + kImageBytes));
  static constexpr int kImageSlots = kStages + kSlack;
  static constexpr int kImageRing = kStages * kTileBytes;  // offset; W tiles are 1024-aligned
  static constexpr int kReduce = kImageRing + kImageSlots * kImageBytes;  // offset: the rings' end
  static constexpr int kPipeSmem = kReduce + 1024;  // + alignment room
  // With PLUME_WGMMA_CLUSTER=1: after the rings, room for the sums of up to
  // kClusterMax other splits of the tile ([split - 1][kTileRows][kN] floats),
  // within the shared memory a block may have (kSm90BlockSmemBytes, less
  // 1 KB for the static barriers).
  static constexpr int kSplitBytes = kTileRows * kN * 4;
  static constexpr int kClusterMax =
      PLUME_WGMMA_CLUSTER ? std::min(7, (kSm90BlockSmemBytes - 1024 - kPipeSmem) / kSplitBytes) : 0;
  static constexpr int kSmem = kPipeSmem + kClusterMax * kSplitBytes;
};

struct Params {
  const __half* image;     // [chunks][kN * kChunk]
  int64_t rows;
  const float* scales;
  ScaleMode mode;
  int64_t blocks_per_row;  // BLOCK128
  const uint8_t* nan_rows;
  float decode_factor;     // 2^8 for the software E4M3 decode, else 1
  bool split;              // F32: vector v is columns 2v (hi) + 2v+1 (lo)
  const float* colmul;     // per column factor
  void* y;                 // [nvec][y_ld]
  DType y_dtype;
  int64_t y_ld;
  int nvec;
  int chunks;
  int chunks_per_split;
  int splits;
  int64_t rows_pad;        // row_tiles * the block's rows
  float* partial;          // [splits][rows_pad][kN]
  bool cluster;            // the splits of a row tile are one cluster (1, splits, 1)
  unsigned* counters;      // [row_tiles], zero between launches
  uint64_t desc_strides;   // descriptor bits of kLeadingBytes and kStrideBytes
};

// ------------------------------------------------------- sm_90 primitives

// W tile (x = byte column, y = row) -> shared memory, completing on bar.
__device__ __forceinline__ void TmaLoadTile(void* dst, const CUtensorMap* map, int x, int y,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(SmemAddr(bar))
      : "memory");
}
// 16 bytes of shared memory at a shared-window address. The W tiles are
// read this way, not through a generic pointer (the aligned dynamic shared
// memory loses its address space): the generic loads waited on the long
// scoreboard, 30% of the warps' stall cycles at 8192^2 batch 8 in Nsight
// Compute. ROW timings moved within +-1.4% (28672x8192 batch 64: +3-4%),
// BLOCK128 at 28672x8192 took 0.91-0.97x the time (bench/RESULTS-gpu.md).
__device__ __forceinline__ uint4 LdsV4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}
// The shared-memory descriptor of one k-step of an activation image: the
// start address plus the strides (Params::desc_strides).
__device__ __forceinline__ uint64_t ImageDesc(uint32_t addr, uint64_t strides) {
  return uint64_t{(addr & 0x3FFFFu) >> 4} | strides;
}

__device__ __forceinline__ uint32_t Word(const uint4& lo, const uint4& hi, int s) {
  const uint4& q = s < 4 ? lo : hi;
  switch (s & 3) {
    case 0: return q.x;
    case 1: return q.y;
    case 2: return q.z;
    default: return q.w;
  }
}

// The finished value of (row, vector v) from its column sum(s).
__device__ __forceinline__ float Finish(const Params& p, int64_t row, int col, float sum) {
  sum *= p.colmul[col];
  float scale = p.decode_factor;
  if (p.mode == ScaleMode::kTensor) scale *= p.scales[0];
  if (p.mode == ScaleMode::kRow) scale *= p.scales[row];
  sum *= scale;
  if (p.nan_rows != nullptr && p.nan_rows[row] != 0) sum = __int_as_float(0x7fc00000);
  return sum;
}

// Every thread of the cluster arrives (release) / waits for all to have
// arrived (acquire). In a launch without clusters the cluster is the block.
__device__ __forceinline__ void ClusterArrive() {
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}
__device__ __forceinline__ void ClusterWait() {
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}
// Stores (a, b) at shared-memory address `addr` of the cluster's block `rank`.
__device__ __forceinline__ void StoreToRank(uint32_t addr, unsigned rank, float a, float b) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  asm volatile("st.shared::cluster.v2.f32 [%0], {%1, %2};" ::"r"(remote), "f"(a), "f"(b)
               : "memory");
}

// ------------------------------------------------------------------ kernel

template <Dec kDec, int kN, bool kBlock, bool kPair>
__global__ void __launch_bounds__(kThreads, Cfg<kN, kPair>::kBlocksPerSm)
    WgmmaGemvKernel(const __grid_constant__ CUtensorMap w_map, const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(!(kPair && kBlock), "paired stages carry no block scales");
  using C = Cfg<kN, kPair>;
  // Rows of W this block owns; with paired stages both warp groups' sums
  // are for the same 64 rows.
  constexpr int kRows = kPair ? kPairRows : kTileRows;
  constexpr int kM = kN / 2;  // accumulators per thread
  // Without block scales, even and odd k-steps add into separate sums, so
  // consecutive MMAs don't wait on each other (where the registers allow:
  // not under the two-blocks-per-SM cap, where ptxas would serialize).
  constexpr int kSets = !kBlock && kN <= 64 && C::kBlocksPerSm == 1 ? 2 : 1;
  extern __shared__ uint8_t smem_raw[];
  __shared__ uint64_t full[C::kStages];       // W tile and image of a chunk landed
  __shared__ uint64_t empty[C::kStages];      // W slot free
  __shared__ uint64_t img_empty[C::kImageSlots];  // image slot free
  __shared__ bool last;
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int c_begin = blockIdx.y * p.chunks_per_split;
  const int n_chunks = min(p.chunks, c_begin + p.chunks_per_split) - c_begin;
  // Stages this block fills: a chunk each, or with paired stages two (the
  // last may hold one).
  const int n_loads = kPair ? (n_chunks + 1) / 2 : n_chunks;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  auto chunk = [&](int i) { return c_begin + i; };  // the i-th chunk this block takes

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      MbarInit(&full[s], 1);
      MbarInit(&empty[s], kConsumerWarps);
    }
    for (int s = 0; s < C::kImageSlots; ++s) MbarInit(&img_empty[s], kConsumerWarps);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // This block has started: the others of its cluster may write into its
  // shared memory once they have waited for this (the finish below).
  if (p.cluster) ClusterArrive();

  float acc[kM];
  float acc2[kSets][kM];  // without block scales: one sum per k-step set, folded into acc
#pragma unroll
  for (int j = 0; j < kM; ++j) {
    acc[j] = 0.0f;
#pragma unroll
    for (int q = 0; q < kSets; ++q) acc2[q][j] = 0.0f;
  }
  const int wg = warp >> 2;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int wg_row = kPair ? 0 : wg * 64;  // this warp group's first row in the block's rows

  if (warp == kConsumerWarps) {
    // ---------------------------------------------------------- producer
    if (lane == 0) {
      // Chunks in stage i: one, or with paired stages two but the last.
      auto count = [&](int i) { return kPair ? min(2, n_chunks - 2 * i) : 1; };
      auto first = [&](int i) { return kPair ? PairChunk(i, 0) : i; };
      auto w_load = [&](int i) {
        const int st = i % C::kStages;
        MbarExpectTx(&full[st], static_cast<unsigned>(count(i) * (kRows * kChunk + C::kChunkImage)));
        for (int h = 0; h < count(i); ++h) {
          TmaLoadTile(smem + st * kTileBytes + h * kRows * kChunk, &w_map,
                      chunk(first(i) + h) * kChunk, static_cast<int>(row0), &full[st]);
        }
      };
      auto image_load = [&](int i) {
        BulkLoad(smem + C::kImageRing + (i % C::kImageSlots) * C::kImageBytes,
                 p.image + static_cast<int64_t>(chunk(first(i))) * kN * kChunk,
                 static_cast<unsigned>(count(i) * C::kChunkImage), &full[i % C::kStages]);
      };
      const int pre = min(n_loads, C::kStages);
      for (int i = 0; i < pre; ++i) w_load(i);
      // The activation image is the pre-pass's output.
      asm volatile("griddepcontrol.wait;" ::: "memory");
      for (int i = 0; i < pre; ++i) image_load(i);
      for (int i = pre; i < n_loads; ++i) {
        MbarWait(&empty[i % C::kStages], ((i / C::kStages) - 1) & 1);
        w_load(i);
        if (i >= C::kImageSlots) {
          MbarWait(&img_empty[i % C::kImageSlots], ((i / C::kImageSlots) - 1) & 1);
        }
        image_load(i);
      }
    }
  } else {
    // --------------------------------------------------------- consumers
    const int w = warp & 3;
    const int ra = wg * 64 + AccRow(w, g, 0);  // the slot rows this lane reads
    const int rb = ra + 8;
    const int64_t row_a = row0 + wg_row + AccRow(w, g, 0);  // the matrix rows they hold
    const int64_t row_b = row_a + 8;
    const uint32_t smem_base = SmemAddr(smem);
    uint32_t a[2][kSteps][4];
    // BLOCK128: one chunk's sums, added times their scales once its MMAs are
    // done. The scales of this lane's rows are read a chunk ahead (slot b).
    // At N = 8 two sets of sums take turns (slot b, as the fragments do), so
    // chunk i's MMAs are issued before chunk i - 1's sums are read: measured
    // on an H100 at two blocks per SM, 0.71-0.86x the time of one set, which
    // also spilled 100-144 bytes there. From N = 16 one set, and chunk i - 1's
    // MMAs finish before chunk i's start: two sets took 1.01-1.07x its time at
    // N = 16 and 32 (bench/RESULTS-fp8-checkpoints.md).
    constexpr int kParts = kBlock && kN <= 8 ? 2 : 1;
    float part[kParts][kBlock ? kM : 1];
#pragma unroll
    for (int q = 0; q < kParts; ++q) {
#pragma unroll
      for (int j = 0; j < (kBlock ? kM : 1); ++j) part[q][j] = 0.0f;
    }
    float sa[2] = {0.0f, 0.0f}, sb[2] = {0.0f, 0.0f};
    auto load_scales = [&](int i, float& da, float& db) {
      const int64_t c = chunk(i);
      da = row_a < p.rows ? __ldg(p.scales + row_a * p.blocks_per_row + c) : 0.0f;
      db = row_b < p.rows ? __ldg(p.scales + row_b * p.blocks_per_row + c) : 0.0f;
    };
    // Adds the sums of the chunk whose scales are in slot b (its sums are in
    // part[b] where two sets take turns).
    auto add_part = [&](auto b_c) {
      constexpr int b = decltype(b_c)::value;
      constexpr int q = kParts == 2 ? b : 0;
#pragma unroll
      for (int j = 0; j < kM; ++j) acc[j] = fmaf(part[q][j], ((j >> 1) & 1) ? sb[b] : sa[b], acc[j]);
    };

    // Stage i with fragment buffer b (a constant: the registers are never
    // indexed at run time): chunk i, or with paired stages chunk
    // PairChunk(i, wg). Its codes are decoded while the tensor cores still
    // work on the stage before.
    auto step = [&](int i, auto b_c) {
      constexpr int b = decltype(b_c)::value;
      const int st = i % C::kStages;
      if constexpr (kBlock) load_scales(i, sa[b], sb[b]);
      MbarWait(&full[st], (i / C::kStages) & 1);
#if PLUME_WGMMA_VARIANT == 1  // measurement only: the pipeline alone, no math
      __syncwarp();
      if (lane == 0) {
        MbarArrive(&empty[st]);
        MbarArrive(&img_empty[i % C::kImageSlots]);
      }
      return;
#endif
      const uint32_t tile = smem_base + st * kTileBytes;
      const uint4 va0 = LdsV4(tile + SwizzledOffset(ra, 32 * t));
      const uint4 va1 = LdsV4(tile + SwizzledOffset(ra, 32 * t + 16));
      const uint4 vb0 = LdsV4(tile + SwizzledOffset(rb, 32 * t));
      const uint4 vb1 = LdsV4(tile + SwizzledOffset(rb, 32 * t + 16));
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        DecodeWord<kDec>(Word(va0, va1, s), a[b][s][0], a[b][s][2]);
        DecodeWord<kDec>(Word(vb0, vb1, s), a[b][s][1], a[b][s][3]);
      }
      if constexpr (C::kSlack > 0) {  // the codes are in registers: the W slot is free
        __syncwarp();
        if (lane == 0) MbarArrive(&empty[st]);
      }
      const uint32_t image = smem_base + C::kImageRing + (i % C::kImageSlots) * C::kImageBytes +
                             (kPair ? wg * C::kChunkImage : 0);
      // Chunk i - 1 is done: its image slot is free (and its W slot, when
      // that is released late).
      auto release_previous = [&] {
        __syncwarp();
        if (lane == 0) {
          MbarArrive(&img_empty[(i - 1) % C::kImageSlots]);
          if constexpr (C::kSlack == 0) MbarArrive(&empty[(i - 1) % C::kStages]);
        }
      };
      [[maybe_unused]] constexpr int pq = kParts == 2 ? b : 0;  // the sums chunk i writes
      if constexpr (kBlock && kParts == 1) {
        // Chunk i - 1's sums are read before chunk i's MMAs are issued, so
        // no accumulator is read while an MMA that writes it is in flight.
        if (i > 0) {
          WgmmaWait<0>();
          FenceOperands(part[0]);
          FenceOperands(a[b ^ 1]);
          release_previous();
          add_part(std::integral_constant<int, b ^ 1>{});
        }
        FenceOperands(part[0]);
      } else if constexpr (kBlock) {
        FenceOperands(part[pq]);
      } else {
#pragma unroll
        for (int q = 0; q < kSets; ++q) FenceOperands(acc2[q]);
      }
      WgmmaFence();
#if PLUME_WGMMA_VARIANT == 2  // measurement only: decode, but no MMA
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        asm volatile("" ::"r"(a[b][s][0]), "r"(a[b][s][1]), "r"(a[b][s][2]), "r"(a[b][s][3]), "r"(image));
      }
#else
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const uint64_t desc = ImageDesc(image + s * StepBytes(kN), p.desc_strides);
        if constexpr (kBlock) {
          Wgmma<kN>::Run(part[pq], a[b][s], desc, s > 0 ? 1 : 0);
        } else {
          Wgmma<kN>::Run(acc2[s % kSets], a[b][s], desc, 1);
        }
      }
#endif
      WgmmaCommit();
      if constexpr (!kBlock) {
        WgmmaWait<1>();
        FenceOperands(a[b ^ 1]);
#pragma unroll
        for (int q = 0; q < kSets; ++q) FenceOperands(acc2[q]);
        if (i > 0) release_previous();
      } else if constexpr (kParts == 2) {
        // Chunk i - 1's MMAs are done (chunk i's may still run): its sums,
        // in the other set, go into acc.
        WgmmaWait<1>();
        FenceOperands(a[b ^ 1]);
        FenceOperands(part[pq ^ 1]);
        if (i > 0) {
          release_previous();
          add_part(std::integral_constant<int, b ^ 1>{});
        }
      }
    };
    // Stages both groups compute; with paired stages and an odd chunk count
    // a last one holds group 0's chunk alone, and group 1 skips it (nothing
    // waits on the barriers it would arrive on there).
    const int n_full = kPair ? n_chunks / 2 : n_chunks;
    const bool lone = kPair && (n_chunks & 1) != 0 && wg == 0;
    int i = 0;
    for (; i + 1 < n_full; i += 2) {
      step(i, std::integral_constant<int, 0>{});
      step(i + 1, std::integral_constant<int, 1>{});
    }
    if (i < n_full) {
      step(i, std::integral_constant<int, 0>{});
      if (lone) step(i + 1, std::integral_constant<int, 1>{});
    } else if (lone) {
      step(i, std::integral_constant<int, 0>{});
    }
    WgmmaWait<0>();
    FenceOperands(a[0]);
    FenceOperands(a[1]);
    if constexpr (kBlock) {
#pragma unroll
      for (int q = 0; q < kParts; ++q) FenceOperands(part[q]);
      // The last chunk's scale slot: n_chunks - 1 is even -> 0.
      if (((n_chunks - 1) & 1) == 0) {
        add_part(std::integral_constant<int, 0>{});
      } else {
        add_part(std::integral_constant<int, 1>{});
      }
    } else {
#pragma unroll
      for (int q = 0; q < kSets; ++q) {
        FenceOperands(acc2[q]);
#pragma unroll
        for (int j = 0; j < kM; ++j) acc[j] += acc2[q][j];
      }
    }
    if constexpr (kPair) {
      // Warp group 1's sums go to warp group 0 through shared memory. Past
      // the first barrier both groups' MMAs are done and every stage has
      // landed (group 0 waited on each), so the W ring is free.
      float* red = reinterpret_cast<float*>(smem);
      NamedBarrier(1, kConsumerWarps * 32);
      if (wg == 1) {
#pragma unroll
        for (int j = 0; j < kM; j += 2) {
          *reinterpret_cast<float2*>(red + AccRow(w, g, j) * kN + AccCol(t, j)) =
              make_float2(acc[j], acc[j + 1]);
        }
      }
      NamedBarrier(1, kConsumerWarps * 32);
      if (wg == 0) {
#pragma unroll
        for (int j = 0; j < kM; j += 2) {
          const float2 v =
              *reinterpret_cast<const float2*>(red + AccRow(w, g, j) * kN + AccCol(t, j));
          acc[j] += v.x;
          acc[j + 1] += v.y;
        }
      }
    }
  }

  // ---------------------------------------------------------------- epilogue
  // The warps holding finished sums: both groups', or with paired stages group 0's.
  const bool consumer = warp < (kPair ? kConsumerWarps / 2 : kConsumerWarps);
  // A consumer lane's finished sums -> y.
  auto store_acc = [&] {
#pragma unroll
    for (int j = 0; j < kM; j += 2) {
      const int64_t row = row0 + wg_row + AccRow(warp & 3, g, j);
      const int col = AccCol(t, j);  // even: col and col + 1
      if (row >= p.rows) continue;
      if (p.split) {
        const int v = col >> 1;
        if (v < p.nvec) Store(p.y, p.y_dtype, v * p.y_ld + row, Finish(p, row, col, acc[j] + acc[j + 1]));
      } else {
        if (col < p.nvec) Store(p.y, p.y_dtype, col * p.y_ld + row, Finish(p, row, col, acc[j]));
        if (col + 1 < p.nvec) {
          Store(p.y, p.y_dtype, (col + 1) * p.y_ld + row, Finish(p, row, col + 1, acc[j + 1]));
        }
      }
    }
  };
  if (p.splits == 1) {
    if (consumer) store_acc();
    return;
  }

  if (p.cluster) {
    // The tile's splits are blocks 0 .. splits - 1 of one cluster. Splits
    // r > 0 store their sums into block 0's shared memory (every block has
    // started: the first barrier's phase), and block 0 adds them to its own
    // in split order, as the global finish below adds them.
    const unsigned rank = blockIdx.y;
    const int split_floats = kRows * kN;
    ClusterWait();
    if (consumer && rank > 0) {
      const uint32_t red = SmemAddr(smem + C::kReduce) + 4u * (rank - 1) * split_floats;
#pragma unroll
      for (int j = 0; j < kM; j += 2) {
        const int r = wg_row + AccRow(warp & 3, g, j);
        StoreToRank(red + 4u * (r * kN + AccCol(t, j)), 0, acc[j], acc[j + 1]);
      }
    }
    ClusterArrive();
    if (rank > 0 || !consumer) return;
    ClusterWait();
    const float* sums = reinterpret_cast<const float*>(smem + C::kReduce);
    for (int q = 1; q < p.splits; ++q) {
#pragma unroll
      for (int j = 0; j < kM; j += 2) {
        const int r = wg_row + AccRow(warp & 3, g, j);
        const float2 v = *reinterpret_cast<const float2*>(
            sums + (q - 1) * split_floats + r * kN + AccCol(t, j));
        acc[j] += v.x;
        acc[j + 1] += v.y;
      }
    }
    store_acc();
    return;
  }

  // Partial sums [split][row][column]; the last block of the row tile adds them.
  if (consumer) {
    float* out = p.partial + (static_cast<int64_t>(blockIdx.y) * p.rows_pad + row0) * kN;
#pragma unroll
    for (int j = 0; j < kM; j += 2) {
      const int r = wg_row + AccRow(warp & 3, g, j);
      *reinterpret_cast<float2*>(out + static_cast<int64_t>(r) * kN + AccCol(t, j)) =
          make_float2(acc[j], acc[j + 1]);
    }
  }
#if PLUME_WGMMA_VARIANT == 3  // measurement only: partial sums written, never added
  return;
#endif
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(p.counters + blockIdx.x, 1u) == unsigned(p.splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  SumSplits<kThreads, 2>(p.partial, p.rows_pad, kN, row0, kRows, p.rows,
                      p.split ? 2 * p.nvec : p.nvec, p.splits, [&](int64_t row, int col, float4 s) {
                        const float c[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                          const int v = p.split ? (col + j) / 2 : col + j;
                          if ((p.split && j % 2 != 0) || v >= p.nvec) continue;
                          const float sum = p.split ? c[j] + c[j + 1] : c[j];
                          Store(p.y, p.y_dtype, v * p.y_ld + row, Finish(p, row, col + j, sum));
                        }
                      });
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;  // ready for the next launch
#endif
}

}  // namespace
}  // namespace plume::cuda::wgmma_gemv
