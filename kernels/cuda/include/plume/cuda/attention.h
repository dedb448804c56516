// Attention over a paged FP8 K/V cache resident in device memory
// (plume/kernels/kv_layout.h), on the GPU. One launcher, one dispatch point
// (src/attention_dispatch.cu). The kernels live by family: the decodes in
// src/attention_decode*.cuh (the split epilogue in src/attention_split.cuh,
// the combine kernel for the largest decodes in src/attention_combine.cuh), the
// flash prefills in src/attention_prefill.cu (mma.sync),
// src/attention_prefill_wgmma.cu (Hopper) and src/attention_prefill_images.cu
// (Hopper, over FP16 images of K / V: kAuto's prefill there), and the older
// prefill in src/attention_prefill_fallback.cuh.
// The math is the CPU reference's (plume/reference/attention.h): query head h
// reads kv head h / (heads / kv_heads); causal queries are the last q_len
// positions; masked tokens and tokens past seq are -inf scores, never zeros.
//
//  - Decode (q_len <= kAttentionDecodeMaxQ), flash-decoding: the pages are
//    split across blocks, and a combine kernel merges the splits with
//    log-sum-exp, as a second launch (on compute capability 9.0 a
//    programmatic dependent one, which starts during the decode's last
//    blocks; AttentionProblem::one_launch: the last
//    block of each tile of rows to finish merges them instead, through a
//    counter per tile in the workspace, up to 16384 tiles; slower where
//    measured). Every query row of a kv head (over the batch, the GQA group
//    and q_len) reads the same K/V, so a block takes many rows at once.
//     * Head dims padding to 128 (the common LLM shape): tensor cores. A block
//       holds up to 64 rows of one kv head (each page is read once per 64
//       rows), streams its split's pages through a cp.async ring in shared
//       memory, decodes the FP8 codes to FP16 in registers (exact; native cvt
//       on sm_89+, bit tricks elsewhere) and runs Q.K^T and P.V on mma.sync
//       with FP32 accumulators. Q (scaled by a power of two) and P are split
//       into FP16 hi + lo parts (two mma each; Q's lo part is zero and skipped
//       for F16/BF16 queries), so the result keeps FP32-level accuracy.
//       At most 4 rows per kv head (batch 1 at GQA group 4) swap the operands
//       (S^T = K Q^T, O^T = V^T P^T: tokens and head dims as M), the rows' hi
//       and lo parts side by side in the N = 8 columns (one mma for both).
//     * Other head dims: FP32 CUDA-core math, up to 8 rows per block.
//  - Prefill (longer q_len): tiled flash-attention. Each page's K and V
//    tiles are decoded once into FP16 shared memory (exact: every FP8 value
//    is an FP16), S = Q K^T and O += P V run on tensor cores with FP32
//    accumulators, the softmax state is FP32. Q and P are rounded to FP16,
//    so errors are FP16-sized. On Hopper (compute capability 9.0, head dims
//    padding to 64-512) kAuto runs kPrefillImages: a first pass decodes each
//    kv head's K and V once into FP16 images in the workspace, then a TMA +
//    wgmma flash kernel reads them. kPrefill there is the older Hopper kernel
//    at head dims padding to 128 (wgmma, a producer warp group that
//    bulk-copies and decodes the pages while two consumer warp groups
//    compute; src/attention_prefill_wgmma.cu). Elsewhere: mma.sync m16n8k16,
//    64 rows per block (src/attention_prefill.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "plume/cuda/fp8_codec.h"
#include "plume/kernels/kv_layout.h"
#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume::cuda {

inline constexpr int64_t kAttentionDecodeMaxQ = 8;

enum class AttentionKernel : uint8_t {
  // Decode for q_len <= kAttentionDecodeMaxQ; above, kPrefillImages where
  // it runs, else kPrefill.
  kAuto = 0,
  kDecode = 1,   // flash-decoding with FP32-level accuracy, any q_len
  kPrefill = 2,  // FP16 tensor-core flash-attention (no images), any q_len
  kPrefillMmaSync = 3,  // kPrefill's mma.sync kernel, even where the Hopper one runs
  // The Hopper prefill over FP16 images of K / V made by a first pass
  // (src/attention_prefill_images.cu): compute capability 9.0, head dims
  // padding to 64, 128, 256 and 512. Its workspace holds the images, FP16
  // copies of K and V (2 bytes an element against the cache's 1) for as many
  // kv heads as fit in 64 MiB (at least one); more run in launch groups.
  kPrefillImages = 4,
};

// plume's AttentionProblem (plume/kernels/problem.h: the cache, the
// queries) in device memory: `pages` is a device array of device page
// pointers, the scales, queries and output are device memory. Plus what only
// the GPU needs.
struct AttentionProblem : plume::AttentionProblem {
  DecodePath path = DecodePath::kNative;
  AttentionKernel kernel = AttentionKernel::kAuto;
  // Decode: false (the default) merges the splits with the combine kernel,
  // a second launch; true has the last block of each tile of rows merge
  // them (one launch). Measured on an H100 at e44e952, the two launches
  // took 0.18-0.97x the one launch's time at every native decode shape the
  // bench runs (bench/RESULTS-gpu-attention.md, "one launch or two").
  bool one_launch = false;
};

// Bytes of device workspace Attention needs for this problem on `device`
// (0 for an invalid shape). The workspace must be zeroed once when allocated
// (it begins with counters that each launch leaves at zero), 256-byte aligned
// (as cudaMalloc's is), and used by one stream at a time. A workspace sized
// for one problem serves every smaller one, whatever ran in it before.
int64_t AttentionWorkspaceBytes(const AttentionProblem& p, int device);

// Runs attention on `stream`. cudaErrorInvalidValue for bad arguments (a
// format, decode path or kernel outside its enum among them),
// cudaErrorNotSupported for the native path before sm_89, or for
// AttentionKernel::kPrefill where its shared memory does not fit (padded
// head_dim over 512; over 256 on sm_86/89, over 128 on sm_75), where kAuto
// runs the decode kernel instead, and for kPrefillImages off compute
// capability 9.0 or past head dim 512.
cudaError_t Attention(const AttentionProblem& p, void* workspace, int64_t workspace_bytes,
                      cudaStream_t stream);

}  // namespace plume::cuda
