// The attention launcher: validates a problem, chooses the kernel (the one
// place that does), sizes the decode splits and their workspace, and
// launches. The kernels live in their families' translation units
// (attention_kernels.cuh lists what each gives); the flash prefill in
// attention_prefill.cu (mma.sync) and attention_prefill_wgmma.cu (Hopper).
#include <algorithm>
#include <cstdint>

#include "plume/cuda/attention.h"
#include "attention_common.cuh"
#include "attention_decode.cuh"
#include "attention_decode_few.cuh"
#include "attention_decode_mma.cuh"
#include "attention_kernels.cuh"
#include "attention_prefill.h"
#include "attention_prefill_fallback.cuh"
#include "attention_split.cuh"
#include "plume/cuda/check.h"

#ifndef PLUME_FEW_PAGES
#define PLUME_FEW_PAGES 16
#endif
// 1: the Hopper decode (attention_decode_wgmma.cuh) is chosen where it
// serves. Off until it is shown to be faster: it has passed the GPU tests
// on an H100 but has not been timed (kernels/cuda/NOTES.md). A variant library
// built with -DPLUME_DECODE_WGMMA=1 (scripts/build-kernel-variant.sh,
// PLUME_VARIANT_SRCS=attention_dispatch.cu) turns it on for that test and
// its timing.
#ifndef PLUME_DECODE_WGMMA
#define PLUME_DECODE_WGMMA 0
#endif
// The Hopper decode takes tiles of more than this many rows (rounded up to
// 16); fewer stay on the mma.sync decode, whose tiles fit them.
#ifndef PLUME_DECODE_WGMMA_MIN_ROWS
#define PLUME_DECODE_WGMMA_MIN_ROWS 32
#endif

namespace plume::cuda {

using namespace attn;  // the kernels' shapes and entry points

namespace {

// The one place a decode kernel is chosen: the tensor-core decodes (`mma`)
// for padded head dims 64, 128 and 256 where their shared memory fits, with
// `few` at most kFewRows query rows per kv head and `shared` the page decoded
// once per block to shared memory (head dim 128, tiles of 3 or 4 m-tiles,
// software decode); the CUDA-core decode otherwise. nullptr for a head dim or
// decoder no kernel serves.
KernelFn PickDecode(Dec dec, int kd, bool mma, bool few, bool shared) {
  if (mma) return PickDecodeMma(dec, kd, few, shared);
  return PickDecodeCudaCores(dec, kd);
}

bool ValidShape(const AttentionProblem& p) {
  const bool q_ok = p.q_dtype == DType::kF32 || p.q_dtype == DType::kF16 || p.q_dtype == DType::kBF16;
  const bool o_ok =
      p.out_dtype == DType::kF32 || p.out_dtype == DType::kF16 || p.out_dtype == DType::kBF16;
  const KvLayout& l = p.layout;
  const bool mode_ok = l.scale_mode == KvScaleMode::kNone || l.scale_mode == KvScaleMode::kTensor ||
                       l.scale_mode == KvScaleMode::kHead || l.scale_mode == KvScaleMode::kTokenBlock;
  // Values no kernel is chosen for fail here rather than run as another.
  const bool format_ok = p.format == Fp8Format::kE4M3 || p.format == Fp8Format::kE5M2;
  const bool path_ok = p.path == DecodePath::kNative || p.path == DecodePath::kSoftware;
  const bool kernel_ok = p.kernel == AttentionKernel::kAuto || p.kernel == AttentionKernel::kDecode ||
                         p.kernel == AttentionKernel::kPrefill ||
                         p.kernel == AttentionKernel::kPrefillMmaSync ||
                         p.kernel == AttentionKernel::kPrefillImages;
  return q_ok && o_ok && mode_ok && format_ok && path_ok && kernel_ok && l.kv_heads > 0 &&
         l.kv_heads <= (1 << 20) && l.head_dim > 0 &&
         KernelDim(l.row_bytes()) > 0 && p.seq > 0 && p.seq < (int64_t{1} << 37) &&
         p.batch > 0 && p.heads > 0 && p.heads % l.kv_heads == 0 && p.q_len > 0 &&
         (!p.causal || p.q_len <= p.seq) && p.batch * p.heads * p.q_len < (int64_t{1} << 31) &&
         p.batch * (p.heads / l.kv_heads) * p.q_len < (int64_t{1} << 30);
}

struct Plan {
  bool prefill = false;
  bool fa = false;  // prefill by PrefillFa
  bool wg = false;  // prefill by PrefillWgmma
  bool img = false;  // prefill by PrefillImages
  KernelFn decode = nullptr;
  size_t decode_smem = 0;
  int decode_threads = 0;
  PrefillPick pre;
  Dec dec = Dec::kE4M3Soft;
  int tile_rows = 0;
  int row_tiles = 0;
  int64_t units = 0;
  int splits = 1;
  int pages_per_split = 0;
  bool fused = false;  // the decode's last split per unit merges (FinishSplit): one launch
  // Otherwise the combine kernel merges them; on compute capability 9.0 as
  // a programmatic dependent launch of the decode (LaunchCombineAfterDecode).
  bool combine_after_decode = false;
  // Workspace, bytes: kCounterBytes of counters lead it (every plan keeps
  // them, so that they stay zero whichever problem used the workspace
  // before); the decode's partial results, or the prefill's images, follow.
  int64_t off_acc = 0, total = 0;
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
  // kPrefillImages: that kernel or nothing, any q_len. kAuto's prefill where
  // it runs (compute capability 9.0, head dims padding to 64-512): it took
  // 0.53-0.69x the time of the Hopper and mma.sync flash prefills on an
  // H200 (bench/RESULTS-gpu-attention.md, "Hopper prefill over FP16 images").
  const bool auto_prefill = p.kernel == AttentionKernel::kAuto && p.q_len > kAttentionDecodeMaxQ;
  if (p.kernel == AttentionKernel::kPrefillImages || auto_prefill) {
    const bool images = PrefillImagesAvailable(kd, device);
    if (!images && !auto_prefill) return cudaErrorNotSupported;
    if (images) {
      pl.prefill = pl.img = true;
      pl.total = kCounterBytes + std::max<int64_t>(256, PrefillImagesWorkspaceBytes(p, kd));
      *out = pl;
      return cudaSuccess;
    }
  }
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
    pl.total = kCounterBytes;
  } else {
    // Up to 16 rows (one m-tile) take the few-rows tiles too where the cache
    // has at most PLUME_FEW_PAGES pages: at 1024 tokens batch 4 (16 rows at
    // GQA group 4) four tiles of 4 rows took 0.66-0.83x the time of one of
    // 16 on an H100, at 8192 tokens 0.99-1.18x (bench/RESULTS-gpu-attention.md,
    // "Few-rows tiles for short decodes").
    const bool few = rows <= kFewRows || (rows <= 16 && num_pages <= PLUME_FEW_PAGES);
    const int mma_rows = static_cast<int>(std::min<int64_t>(kMmaRows, (rows + 15) / 16 * 16));
    // The shared-page decode pays off where decoding costs most: measured on
    // an H200 at 128k tokens, batch 16, it took the software decode from 510
    // to 375 us and the native one from 315 to 346 us.
    const bool soft = pl.dec == Dec::kE4M3Soft || pl.dec == Dec::kE5M2Soft;
    const size_t optin = static_cast<size_t>(info.smem_optin);
    const bool shared = kd == 128 && soft && mma_rows > 32 && kMmaSmemShared <= optin;
    // Head dim 256 takes 160 KB (96 KB with few rows): Hopper and the A100
    // have it, the sm_86 / sm_89 GPUs (99 KB) run the CUDA-core decode there.
    const size_t mma_smem = !MmaDim(kd) ? 0 : few ? FewDecodeSmem(kd) : MmaDecodeSmem(kd, shared);
    const bool mma = MmaDim(kd) && mma_smem <= optin;
    // On Hopper, head dims 64 and 128 with more than
    // PLUME_DECODE_WGMMA_MIN_ROWS rows (two m-tiles by default) take the
    // warp-group decode where it is built in (PLUME_DECODE_WGMMA):
    // each page decoded once a block, wgmma for both products.
    const bool wgmma = PLUME_DECODE_WGMMA && (kd == 64 || kd == 128) && !few &&
                       mma_rows > PLUME_DECODE_WGMMA_MIN_ROWS &&
                       info.cc == 90 && DecodeWgmmaAvailable(kd, device);
    const DecodeWgmmaPick wp = wgmma ? PickDecodeWgmma(pl.dec, kd) : DecodeWgmmaPick{};
    pl.decode = wgmma ? wp.fn : PickDecode(pl.dec, kd, mma, few, shared);
    if (pl.decode == nullptr) return cudaErrorInvalidValue;
    pl.decode_threads = DecodeThreads(kd);
    if (wgmma) {  // tiles of 64 rows, three warp groups
      pl.decode_smem = wp.smem;
      pl.decode_threads = wp.threads;
      pl.tile_rows = wp.rows;
    } else if (mma && few) {  // tensor cores, operands swapped
      pl.decode_smem = mma_smem;
      pl.tile_rows = kFewRows;
    } else if (mma) {  // tensor cores: tiles of up to 64 rows, rounded to 16
      pl.decode_smem = mma_smem;
      pl.tile_rows = mma_rows;
    } else {
      pl.tile_rows = kRows;
    }
    pl.row_tiles = static_cast<int>((rows + pl.tile_rows - 1) / pl.tile_rows);
    pl.units = p.layout.kv_heads * pl.row_tiles;
    int bps = 1;
    PLUME_CUDA_TRY(KernelBlocksPerSm(reinterpret_cast<const void*>(pl.decode), pl.decode_threads,
                                     pl.decode_smem, device, &bps));
    const int64_t target = int64_t{info.sms} * std::max(bps, 1);
    // As many splits as one wave of resident blocks holds, rounded down: a
    // block past the wave runs its whole split after the wave. Rounding up
    // had batch 64 at head dims 128 and 256 take 1.4-1.6x the time on an
    // H100 (bench/RESULTS-gpu-attention.md, "One wave of splits"). Each
    // split has at least one page; past 32 splits, at least 4 pages: at 8k
    // tokens batch 1 that measured 6-8% faster (same file, "split floor").
    const int64_t most = std::max<int64_t>(32, (num_pages + 3) / 4);
    int64_t splits = std::min<int64_t>({num_pages, most, target / pl.units, kMaxSplits});
    splits = std::max<int64_t>(splits, 1);
    pl.pages_per_split = static_cast<int>((num_pages + splits - 1) / splits);
    pl.splits = (num_pages + pl.pages_per_split - 1) / pl.pages_per_split;
    const int64_t slots = pl.units * pl.splits * pl.tile_rows;
    pl.off_acc = (slots * 2 * 4 + 255) / 256 * 256;  // from the partial maxima and sums
    pl.total = kCounterBytes + pl.off_acc + slots * p.layout.head_dim * 4;
    pl.fused = p.one_launch && pl.units <= kFusedUnits;
    pl.combine_after_decode = !pl.fused && info.cc == 90;
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
  char* const ws = static_cast<char*>(workspace);
  unsigned* const counters = pl.fused ? reinterpret_cast<unsigned*>(ws) : nullptr;
  const Params k = MakeParams(p, pl.dec, pl.tile_rows, pl.row_tiles, pl.pages_per_split, pl.splits,
                              ws + kCounterBytes, pl.off_acc, counters);
  if (pl.prefill && pl.img) {
    return PrefillImages(p, KernelDim(l.row_bytes()), ws + kCounterBytes,
                         workspace_bytes - kCounterBytes, stream);
  }
  if (pl.prefill && pl.wg) return PrefillWgmma(p, KernelDim(l.row_bytes()), stream);
  if (pl.prefill && pl.fa) return PrefillFa(p, KernelDim(l.row_bytes()), stream);
  if (pl.prefill) {
    const int slices = static_cast<int>((l.head_dim + pl.pre.dv - 1) / pl.pre.dv);
    const dim3 grid(static_cast<unsigned>(pl.units), static_cast<unsigned>(slices));
    pl.pre.fn<<<grid, kPrefillThreads, pl.pre.smem, stream>>>(k, pl.dec);
    PLUME_CUDA_TRY_LAUNCH();
    return cudaSuccess;
  }
  const dim3 grid(static_cast<unsigned>(pl.units), static_cast<unsigned>(pl.splits));
  pl.decode<<<grid, pl.decode_threads, pl.decode_smem, stream>>>(k);
  PLUME_CUDA_TRY_LAUNCH();
  if (pl.fused) return cudaSuccess;  // its last blocks merged the splits
  const int64_t rows = p.batch * p.heads * p.q_len;
  if (pl.combine_after_decode) return LaunchCombineAfterDecode(k, rows, stream);
  return LaunchCombine(k, rows, stream);
}

}  // namespace plume::cuda
