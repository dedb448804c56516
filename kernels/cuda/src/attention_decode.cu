// Instantiates the CUDA-core decode kernels (attention_decode.cuh) and holds
// the combine kernel (attention_combine.cuh) for the dispatch.
#include "attention_decode.cuh"

#include "attention_combine.cuh"
#include "attention_kernels.cuh"
#include "plume/cuda/check.h"

namespace plume::cuda::attn {

KernelFn PickDecodeCudaCores(Dec dec, int kd) {
  return WithDec<KernelFn>(dec, [&](auto d) { return DecodeKernelFor<decltype(d)::value>(kd); });
}

cudaError_t LaunchCombine(const Params& k, int64_t out_rows, cudaStream_t stream) {
  CombineKernel<false><<<static_cast<unsigned>(out_rows), kCombineThreads, 0, stream>>>(k);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda::attn
