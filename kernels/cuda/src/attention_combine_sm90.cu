// The combine kernel as a programmatic dependent launch of the decode
// (compute capability 9.0): built for sm_90a alone, like the other Hopper
// code, and chosen by the dispatch on such a device. The decode kernel needs
// no change: without an early trigger its blocks release the combine as they
// exit, so the combine's launch and block start-up overlap the decode's tail
// instead of following it; griddepcontrol.wait in the combine still holds
// each block until the whole decode grid finished and its writes are seen.
#include "attention_combine.cuh"
#include "attention_kernels.cuh"
#include "plume/cuda/check.h"

namespace plume::cuda::attn {

cudaError_t LaunchCombineAfterDecode(const Params& k, int64_t out_rows, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(out_rows));
  cfg.blockDim = dim3(kCombineThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  PLUME_CUDA_TRY(cudaLaunchKernelEx(&cfg, CombineKernel<true>, k));
  return cudaSuccess;
}

}  // namespace plume::cuda::attn
