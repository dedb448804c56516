// What each attention kernel translation unit gives the dispatch
// (attention_dispatch.cu): the kernels it instantiates, as pointers to
// launch. Every kernel template is instantiated in exactly one of them.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "attention_common.cuh"

namespace plume::cuda::attn {

// attention_decode.cu: the CUDA-core decode for padded head dim kd (64, 256,
// 512, 1024); nullptr for any other head dim or an unknown decoder.
KernelFn PickDecodeCudaCores(Dec dec, int kd);

// attention_decode.cu: merges the splits' partial results of `k` into its
// output, one block per output row (out_rows of them).
cudaError_t LaunchCombine(const Params& k, int64_t out_rows, cudaStream_t stream);
// attention_combine_sm90.cu (sm_90a; compute capability 9.0 only): the same,
// launched as a programmatic dependent of the decode kernel just launched on
// `stream`, so that its start-up overlaps the decode's last blocks.
cudaError_t LaunchCombineAfterDecode(const Params& k, int64_t out_rows, cudaStream_t stream);

// attention_decode_mma.cu: the tensor-core decode for padded head dim kd
// (64, 128, 256): DecodeFewKernel where `few` (at most kFewRows rows per kv
// head), else DecodeMmaKernel, with the page decoded once to shared memory
// where `shared` (kd 128 only); nullptr for any other head dim, an unknown
// decoder or `shared` at another head dim.
KernelFn PickDecodeMma(Dec dec, int kd, bool few, bool shared);

// attention_decode_wgmma.cu (sm_90a; compute capability 9.0 only): the
// Hopper decode for padded head dim kd, 64 or 128 (DecodeWgmmaKernel), and
// how it is launched; fn nullptr for another head dim or an unknown decoder.
struct DecodeWgmmaPick {
  KernelFn fn = nullptr;
  size_t smem = 0;  // dynamic shared memory, bytes
  int threads = 0;
  int rows = 0;     // query rows a tile (Params::tile_rows)
};
DecodeWgmmaPick PickDecodeWgmma(Dec dec, int kd);
// Whether it runs at padded head dim kd on `device` (compute capability 9.0,
// its shared memory).
bool DecodeWgmmaAvailable(int kd, int device);

using PrefillFn = void (*)(Params, Dec);

struct PrefillPick {
  PrefillFn fn = nullptr;
  size_t smem = 0;  // dynamic shared memory, bytes
  int dv = 0;       // output columns per block
};

// attention_prefill_fallback.cu: the older prefill kernel for padded head dim
// kd (64 ... 512); fn nullptr for any other.
PrefillPick PickPrefill(int kd);

}  // namespace plume::cuda::attn
