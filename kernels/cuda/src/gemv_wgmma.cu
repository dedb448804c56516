// The Hopper FP8 GEMV (sm_90a; this file is compiled for that target only).
//
// A block owns 128 rows of W and a range of 128-column chunks. One producer
// warp streams each chunk's W codes (TMA, a 2-D tensor map, 128-byte swizzle)
// and the chunk's activation image (one bulk copy) into a ring of shared
// memory stages guarded by mbarriers. Two consumer warp groups, 64 rows each,
// read their codes from the stage, decode them to FP16 in registers (native
// cvt or the software bit trick, as gemv.cu), and issue wgmma m64nNk16 with
// A from those registers and the activations (B, N columns) from the stage.
// The decoded fragments are double-buffered in registers, so the decode of
// chunk i overlaps the tensor cores' work on chunk i - 1. FP32 accumulation;
// BLOCK128 sums each chunk apart and adds it times its scale in FP32.
//
// The activations are written once per call by a pre-pass (ImagePrepKernel)
// in the order gemv_wgmma_layout.h defines: FP16 (F32 as hi + lo columns,
// F32/BF16 scaled per vector by a power of two, as gemv.cu). The main kernel
// is launched with programmatic dependent launch: its producer issues the
// first stages' W loads before it waits for the pre-pass.
//
// Columns are split across blocks when the row tiles alone don't fill the
// GPU; the last block of a row tile adds the partial sums in a fixed order.
// Where the plan would split each row tile an even number of ways, a block
// takes 64 rows instead and its two warp groups take alternate chunks
// (paired stages, gemv_wgmma_layout.h), adding their sums in shared memory:
// the same number of blocks, and half the splits or none.
//
// The kernel itself is in gemv_wgmma_kernel.cuh; this file holds the
// activation pre-pass, the dispatch, the plan and the launch.
#include <cuda.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "plume/cuda/check.h"
#include "gemv_wgmma_kernel.cuh"

namespace plume::cuda::wgmma_gemv {
namespace {

// --------------------------------------------------------------- pre-pass

// Blocks (vector slot, chunk range) of the launch (slots past nvec write
// zero columns): the vector as FP16 image columns, in ImageOffset order, and
// the factor that undoes its scaling. F32 and BF16 vectors are scaled by a
// power of two found over the whole vector, so they take one block each
// (gridDim.y == 1); the others are split across chunk ranges, so the pass is
// short next to the main kernel, which waits for it before its first image
// load.
template <DType kIn>
__global__ void __launch_bounds__(kPrepThreads)
    ImagePrepKernel(const void* x, int64_t cols, int nvec, int n_cols, int chunks, __half* image,
                    float* colmul, float x_scale) {
  // Let the main kernel start its W loads now; it waits for this grid's end
  // before it reads the image.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  constexpr bool kSplit = kIn == DType::kF32;
  const int v = blockIdx.x;
  const bool live = v < nvec;
  const void* xv = static_cast<const char*>(x) + (live ? v : 0) * cols * int64_t{DTypeSize(kIn)};
  const int e = live ? VectorExponent<kIn>(xv, cols) : 0;
  const int n_hi = kSplit ? 2 * v : v;
  const int per_block = (chunks + gridDim.y - 1) / gridDim.y;
  const int64_t q_end = int64_t{min(chunks, (int(blockIdx.y) + 1) * per_block)} * kSteps * 2;
  // One 16-byte group (8 k values of one step half) per iteration.
  for (int64_t q = int64_t{blockIdx.y} * per_block * kSteps * 2 + threadIdx.x; q < q_end;
       q += kPrepThreads) {
    const int c = static_cast<int>(q / (kSteps * 2));
    const int s = static_cast<int>(q / 2 % kSteps);
    const int h = static_cast<int>(q % 2);
    alignas(16) __half hi[8];
    alignas(16) __half lo[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int64_t col = int64_t{c} * kChunk + ChunkCol(s, h * 8 + k);
      const float f = live && col < cols ? ldexpf(LoadX<kIn>(xv, col), e) : 0.0f;
      hi[k] = __float2half_rn(f);
      lo[k] = __float2half_rn(f - __half2float(hi[k]));
    }
    __half* base = image + int64_t{c} * n_cols * kChunk;
    *reinterpret_cast<uint4*>(base + ImageOffset(n_cols, n_hi, s, h * 8)) =
        *reinterpret_cast<const uint4*>(hi);
    if constexpr (kSplit) {
      *reinterpret_cast<uint4*>(base + ImageOffset(n_cols, n_hi + 1, s, h * 8)) =
          *reinterpret_cast<const uint4*>(lo);
    }
  }
  if (threadIdx.x == 0 && blockIdx.y == 0) {
    const float m = live ? ColumnFactor<kIn>(e, x_scale) : 0.0f;
    colmul[n_hi] = m;
    if (kSplit) colmul[n_hi + 1] = m;
  }
}

// ----------------------------------------------------------------- dispatch

using KernelFn = void (*)(CUtensorMap, Params);

static_assert(kPairRows == 64 && kTileRows == 128, "Plan::tile_rows() spells them");

// Whether plans of N = n may take paired stages (no block scales either).
constexpr bool PairsAt(int n) { return n <= PLUME_WGMMA_PAIR_MAX_N; }

template <Dec kDec, bool kBlock>
KernelFn PickN(int n, bool pair) {
  // The paired kernels exist for the N that PairsAt allows, without block scales.
  auto of = [&](auto n_c) -> KernelFn {
    constexpr int kN = decltype(n_c)::value;
    if constexpr (!kBlock && PairsAt(kN)) {
      if (pair) return WgmmaGemvKernel<kDec, kN, false, true>;
    }
    if (pair) return nullptr;
    return WgmmaGemvKernel<kDec, kN, kBlock, false>;
  };
  switch (n) {
    case 8: return of(std::integral_constant<int, 8>{});
    case 16: return of(std::integral_constant<int, 16>{});
    case 32: return of(std::integral_constant<int, 32>{});
    case 64: return of(std::integral_constant<int, 64>{});
    case 128:
      if constexpr (!kBlock) return of(std::integral_constant<int, 128>{});
      return nullptr;
    default: return nullptr;  // the plan never asks for another N
  }
}

KernelFn PickKernel(Fp8Format format, DecodePath path, bool block, int n, bool pair) {
  return DispatchDec<KernelFn>(format, path == DecodePath::kNative, [&](auto dec) {
    constexpr Dec kDec = decltype(dec)::value;
    return block ? PickN<kDec, true>(n, pair) : PickN<kDec, false>(n, pair);
  });
}

// Calls f(Cfg<n, pair>{}) for a plan's N and staging.
template <typename F>
auto WithCfg(int n, bool pair, F&& f) {
  auto with = [&](auto n_c) {
    constexpr int kN = decltype(n_c)::value;
    return pair ? f(Cfg<kN, true>{}) : f(Cfg<kN, false>{});
  };
  switch (n) {
    case 8: return with(std::integral_constant<int, 8>{});
    case 16: return with(std::integral_constant<int, 16>{});
    case 32: return with(std::integral_constant<int, 32>{});
    case 64: return with(std::integral_constant<int, 64>{});
    default: return with(std::integral_constant<int, 128>{});  // MakePlan's N is one of the five
  }
}
size_t SmemOf(int n, bool pair) {
  return WithCfg(n, pair, [](auto c) { return static_cast<size_t>(decltype(c)::kSmem); });
}
int BlocksPerSmOf(int n) {
  return WithCfg(n, false, [](auto c) { return decltype(c)::kBlocksPerSm; });
}
int ClusterMaxOf(int n) {
  return WithCfg(n, false, [](auto c) { return decltype(c)::kClusterMax; });
}

// How many clusters of `size` blocks of fn (with smem bytes each) the device
// runs at once (a cluster's blocks share a GPC, so fewer blocks than
// without clusters may run); asked once per kernel, size and device. Lookups
// on the launch path take no lock: an entry is published by the release
// store of `used` after its fields are written.
int MaxClusters(const void* fn, int size, size_t smem, int device) {
  struct Entry {
    std::atomic<const void*> fn{nullptr};
    std::atomic<int> size{0}, device{-1}, clusters{0};
  };
  static constexpr int kMaxEntries = 256;
  static Entry table[kMaxEntries];
  static std::atomic<int> used{0};
  static std::mutex mu;  // writers only
  const auto find = [&](int n) {
    for (int i = 0; i < n; ++i) {
      if (table[i].fn.load(std::memory_order_relaxed) == fn &&
          table[i].size.load(std::memory_order_relaxed) == size &&
          table[i].device.load(std::memory_order_relaxed) == device) {
        return i;
      }
    }
    return -1;
  };
  int hit = find(used.load(std::memory_order_acquire));
  if (hit >= 0) return table[hit].clusters.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu);
  const int n = used.load(std::memory_order_relaxed);
  hit = find(n);
  if (hit >= 0) return table[hit].clusters.load(std::memory_order_relaxed);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = static_cast<unsigned>(size);
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1, static_cast<unsigned>(size));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, fn, &cfg) != cudaSuccess) {
    cudaGetLastError();  // a "none" is an answer, not the call's error
    clusters = 0;
  }
  if (n < kMaxEntries) {  // past that, asked again each time (never seen: a few kernels and sizes)
    table[n].fn.store(fn, std::memory_order_relaxed);
    table[n].size.store(size, std::memory_order_relaxed);
    table[n].device.store(device, std::memory_order_relaxed);
    table[n].clusters.store(clusters, std::memory_order_relaxed);
    used.store(n + 1, std::memory_order_release);
  }
  return clusters;
}

int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

cudaError_t MakePlan(const GemvProblem& p, int sms, Plan* out) {
  if (p.rows <= 0 || p.cols <= 0 || p.batch <= 0 || p.rows > (int64_t{1} << 31) - kTileRows) {
    return cudaErrorInvalidValue;
  }
  Plan pl;
  const bool block = p.scale_mode == ScaleMode::kBlock128;
  pl.split = p.x_dtype == DType::kF32;
  pl.vec_per_launch = (block ? 64 : kMaxN) / (pl.split ? 2 : 1);
  const int64_t ncols = std::min<int64_t>(p.batch, pl.vec_per_launch) * (pl.split ? 2 : 1);
  pl.n = ncols <= 8 ? 8 : ncols <= 16 ? 16 : ncols <= 32 ? 32 : ncols <= 64 ? 64 : 128;
  pl.chunks = static_cast<int>((p.cols + kChunk - 1) / kChunk);
  pl.row_tiles = static_cast<int>((p.rows + kTileRows - 1) / kTileRows);
  // Splits: one block per multiprocessor at a time, so pick the split count
  // whose last wave is fullest, weighing the partial sums' extra traffic
  // against W's bytes; at least 4 chunks per split.
  const double w_bytes = double(p.rows) * double(pl.chunks) * kChunk;
  double best = 1e300;
  int best_s = 1;
  const int max_s = std::max(1, std::min(32, pl.chunks / 4));
  const double slots = double(sms) * BlocksPerSmOf(pl.n);
  for (int s = 1; s <= max_s; ++s) {
    const double blocks = double(pl.row_tiles) * s;
    const double waves = std::ceil(blocks / slots);
    const double traffic = s > 1 ? 2.0 * s * double(p.rows) * pl.n * 4 : 0.0;
    // The waves' time over the ideal (every slot busy with chunks alone).
    const double per_block = double(pl.chunks) / s + PLUME_WGMMA_BLOCK_COST;
    const double cost = waves * per_block / (double(pl.row_tiles) * pl.chunks / slots) *
                        (1.0 + traffic / w_bytes);
    if (cost < best - 1e-9) {
      best = cost;
      best_s = s;
    }
  }
  // An even split count: blocks of 64 rows with paired stages instead, as
  // many blocks with half the splits (none where the plan split in two), so
  // half the partial sums or no split-K finish at all.
  pl.pair = !block && PairsAt(pl.n) && best_s % 2 == 0 &&
            (pl.n < 64 || (pl.chunks + best_s / 2 - 1) / (best_s / 2) <= kPairMaxChunksN64);
  if (pl.pair) {
    best_s /= 2;
    pl.row_tiles = static_cast<int>((p.rows + kPairRows - 1) / kPairRows);
  }
  pl.smem = SmemOf(pl.n, pl.pair);
  pl.chunks_per_split = (pl.chunks + best_s - 1) / best_s;
  // Paired splits start on an even chunk, so only the last may end on a lone one.
  if (pl.pair && best_s > 1) pl.chunks_per_split += pl.chunks_per_split & 1;
  pl.splits = (pl.chunks + pl.chunks_per_split - 1) / pl.chunks_per_split;
  pl.cluster = !pl.pair && pl.splits > 1 && pl.splits - 1 <= ClusterMaxOf(pl.n);
  pl.slots = static_cast<int>(slots);
  pl.off_colmul = AlignUp(int64_t{pl.row_tiles} * 4, 256);
  pl.off_image = pl.off_colmul + AlignUp(kMaxN * 4, 256);
  pl.off_partial = pl.off_image + AlignUp(int64_t{pl.chunks} * pl.n * kChunk * 2, 256);
  pl.total = pl.off_partial +
             (pl.splits > 1 ? int64_t{pl.splits} * pl.row_tiles * pl.tile_rows() * pl.n * 4 : 0);
  *out = pl;
  return cudaSuccess;
}

cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream) {
  const KernelFn fn =
      PickKernel(p.format, p.path, p.scale_mode == ScaleMode::kBlock128, pl.n, pl.pair);
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (fn == nullptr || encode == nullptr) return cudaErrorNotSupported;
  int device = 0;
  PLUME_CUDA_TRY(cudaGetDevice(&device));
  int bps = 0;  // also raises the kernel's shared memory limit, once
  PLUME_CUDA_TRY(KernelBlocksPerSm(reinterpret_cast<const void*>(fn), kThreads, pl.smem, device, &bps));

  const PackedLayout layout{p.rows, p.cols};
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(layout.padded_cols()),
                              static_cast<cuuint64_t>(p.rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(layout.padded_cols())};
  const cuuint32_t box[2] = {kChunk, static_cast<cuuint32_t>(pl.tile_rows())};
  const cuuint32_t elem[2] = {1, 1};
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint32_t*>(p.words), dims, strides,
             box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             static_cast<CUtensorMapL2promotion>(PLUME_WGMMA_L2_PROMOTION), CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return cudaErrorInvalidValue;
  }

  char* ws = static_cast<char*>(workspace);
  Params k{};
  k.image = reinterpret_cast<const __half*>(ws + pl.off_image);
  k.rows = p.rows;
  k.scales = p.scales;
  k.mode = p.scale_mode;
  k.blocks_per_row = layout.blocks_per_row();
  const bool soft_e4m3 = p.format == Fp8Format::kE4M3 && p.path == DecodePath::kSoftware;
  k.nan_rows = soft_e4m3 ? p.nan_rows : nullptr;
  k.decode_factor = soft_e4m3 ? 256.0f : 1.0f;
  k.split = pl.split;
  k.colmul = reinterpret_cast<const float*>(ws + pl.off_colmul);
  k.y_dtype = p.y_dtype;
  k.y_ld = p.rows;
  k.chunks = pl.chunks;
  k.chunks_per_split = pl.chunks_per_split;
  k.splits = pl.splits;
  k.rows_pad = int64_t{pl.row_tiles} * pl.tile_rows();
  k.partial = reinterpret_cast<float*>(ws + pl.off_partial);
  k.counters = reinterpret_cast<unsigned*>(ws);
  k.desc_strides = ((uint64_t{kLeadingBytes} >> 4) << 16) | ((uint64_t{kStrideBytes} >> 4) << 32);
  // Where the device can't run the clusters, the global finish (the
  // workspace always has room for its partial sums).
  if (pl.cluster) {
    // Clusters only where they take no more waves than the blocks alone:
    // without this check, clusters of four at 4096^2 took 1.21-1.23x the
    // time of the global finish on an H100 (bench/RESULTS-gpu.md).
    const int clusters = MaxClusters(reinterpret_cast<const void*>(fn), pl.splits, pl.smem, device);
    const int64_t blocks = int64_t{pl.row_tiles} * pl.splits;
    k.cluster = clusters > 0 && (pl.row_tiles + clusters - 1) / clusters <=
                                    (blocks + pl.slots - 1) / pl.slots;
  }

  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = 1;
  attr[1].val.clusterDim.y = static_cast<unsigned>(pl.splits);
  attr[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(pl.row_tiles), static_cast<unsigned>(pl.splits));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = pl.smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = k.cluster ? 2 : 1;

  const int64_t x_elem = DTypeSize(p.x_dtype);
  const int64_t y_elem = DTypeSize(p.y_dtype);
  const int slots = pl.n / (pl.split ? 2 : 1);
  for (int64_t v0 = 0; v0 < p.batch; v0 += pl.vec_per_launch) {
    const int nvec = static_cast<int>(std::min<int64_t>(pl.vec_per_launch, p.batch - v0));
    const void* x = static_cast<const char*>(p.x) + v0 * p.cols * x_elem;
    if (PLUME_WGMMA_VARIANT != 4) {  // 4: measurement only, no pre-pass (a stale image)
      PLUME_CUDA_TRY(DispatchXDType(p.x_dtype, [&](auto in) {
        constexpr DType kIn = decltype(in)::value;
        // Chunk ranges of at least 8 chunks, where no whole-vector scale is needed.
        const bool whole = kIn == DType::kF32 || kIn == DType::kBF16;
        const unsigned ranges = whole ? 1u : static_cast<unsigned>(std::min(32, (pl.chunks + 7) / 8));
        ImagePrepKernel<kIn><<<dim3(slots, ranges), kPrepThreads, 0, stream>>>(
            x, p.cols, nvec, pl.n, pl.chunks, reinterpret_cast<__half*>(ws + pl.off_image),
            reinterpret_cast<float*>(ws + pl.off_colmul), p.x_scale);
        return cudaGetLastError();
      }));
    }
    k.nvec = nvec;
    k.y = static_cast<char*>(p.y) + v0 * p.rows * y_elem;
    PLUME_CUDA_TRY(cudaLaunchKernelEx(&cfg, fn, map, k));
  }
  return cudaSuccess;
}

}  // namespace plume::cuda::wgmma_gemv
