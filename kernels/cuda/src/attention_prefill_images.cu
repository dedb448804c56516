// The Hopper flash prefill over FP16 images of K and V (sm_90a; this file is
// compiled for that target only), head dims padding to 64, 128, 256 and 512.
// Selected with AttentionKernel::kPrefillImages on compute capability 9.0.
// On an H200 it took 0.53-0.69x the time of kAuto's prefill at every head
// dim (bench/RESULTS-gpu-attention.md), but is not yet the default: its
// workspace of FP16 images is not counted against the server's memory budget.
// Its CPU emulation: tests/emu/prefill_images_emu_test.cc. Two launches per
// group of kv heads:
//
//  1. The image pass decodes each kv head's FP8 K and V once, exactly, into
//     FP16 images in the workspace, one image per tile of TileTokens(kd)
//     tokens (two pages, one at head dim 256), already in the wgmma operand
//     layout (attention_prefill_image.h; V transposed), with the pages' K and
//     V scales beside them. Tokens past the sequence are zero. Every query
//     tile then reads the images instead of decoding the codes again (a
//     query tile of a causal S = 4096 prefill would decode on average 16
//     pages itself).
//  2. The flash kernel: a block takes 128 query rows of one kv head, three
//     warp groups. The producer (one thread) bulk-copies each tile's K and V
//     images into a ring of shared-memory stages completing on mbarriers.
//     Two consumers, 64 rows each, run S = Q K^T (wgmma m64n128k16, m64n64k16
//     at head dim 256; Q and K from shared memory), the online softmax on S
//     in registers (FP32), and O += P V (wgmma m64nDk16, P from registers in
//     the accumulator's own layout, rounded to FP16). A consumer issues the
//     next tile's Q K^T and this tile's P V together, and runs the softmax of
//     the next tile while P V is in flight. At head dim 512 a block takes 64
//     rows and the two consumers split the head dim
//     (attention_prefill_wide.cuh).
// K scales multiply the scores per page; V scales are folded into P per page
// against the tile's larger scale, and the output is kept in units of a
// running V scale (FaVRatio), as in the other prefills.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "attention_prefill.h"
#include "attention_prefill_images.cuh"
#include "attention_prefill_wide.cuh"
#include "plume/cuda/check.h"

namespace plume::cuda {
namespace {

using ImageFn = void (*)(FaArgs, WgImages);
using WgFn = void (*)(FaArgs, WgImages);

struct WgPick {
  ImageFn image = nullptr;
  WgFn fn = nullptr;
  size_t smem = 0;
  int rows = 0;     // query rows per block
  int threads = 0;  // threads per block
};

template <int kD>
WgPick WgFor(Dec dec) {
  const ImageFn image = dec == Dec::kE4M3Soft     ? PrefillImageKernel<kD, Dec::kE4M3Soft>
                        : dec == Dec::kE4M3Native ? PrefillImageKernel<kD, Dec::kE4M3Native>
                        : dec == Dec::kE5M2Soft   ? PrefillImageKernel<kD, Dec::kE5M2Soft>
                                                  : PrefillImageKernel<kD, Dec::kE5M2Native>;
  if constexpr (kD == 512) {
    return {image, PrefillImagesWideKernel<kD>, WideShape<kD>::kSmem, kWgRows, kThreads};
  } else {
    return {image, PrefillImagesKernel<kD>, WgShape<kD>::kSmem, WgShape<kD>::kRows, WgShape<kD>::kBlockThreads};
  }
}

// nullptr members for a head dim no kernel serves.
WgPick PickWg(int kd, Dec dec) {
  switch (kd) {
    case 64: return WgFor<64>(dec);
    case 128: return WgFor<128>(dec);
    case 256: return WgFor<256>(dec);
    case 512: return WgFor<512>(dec);
    default: return {};
  }
}

}  // namespace

bool PrefillImagesAvailable(int kd, int device) {
  return Sm90RunsEveryDecoder(device, [&](Dec dec) {
    const WgPick f = PickWg(kd, dec);
    return KernelFit{reinterpret_cast<const void*>(f.fn), f.smem, f.threads};
  });
}

int64_t PrefillImagesWorkspaceBytes(const AttentionProblem& p, int kd) { return Groups(p, kd).total; }

cudaError_t PrefillImages(const AttentionProblem& p, int kd, void* workspace, int64_t workspace_bytes,
                         cudaStream_t stream) {
  const WgPick f = PickWg(kd, MakeFaArgs(p, FlashRows(kd)).dec);
  if (f.fn == nullptr) return cudaErrorNotSupported;
  const FaArgs a = MakeFaArgs(p, f.rows);
  const WgGroups g = Groups(p, kd);
  if (a.row_bytes > kd) return cudaErrorNotSupported;
  if (workspace == nullptr || workspace_bytes < g.total ||
      reinterpret_cast<uintptr_t>(workspace) % 128 != 0) {
    return cudaErrorInvalidValue;
  }
  if (int64_t{a.row_tiles} * g.heads >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  ForEachGroup(a, g, workspace, [&](const WgImages& w) {
    if (err != cudaSuccess) return;
    f.image<<<dim3(static_cast<unsigned>(g.tiles), static_cast<unsigned>(w.heads)), kImageThreads, 0,
              stream>>>(a, w);
    err = cudaGetLastError();
    if (err != cudaSuccess) return;
    f.fn<<<static_cast<unsigned>(int64_t{a.row_tiles} * w.heads), f.threads, f.smem, stream>>>(a, w);
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace plume::cuda
