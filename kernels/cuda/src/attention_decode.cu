// Instantiates the CUDA-core decode kernels (attention_decode.cuh) for the
// dispatch.
#include "attention_decode.cuh"

#include "attention_kernels.cuh"

namespace plume::cuda::attn {

KernelFn PickDecodeCudaCores(Dec dec, int kd) {
  return WithDec<KernelFn>(dec, [&](auto d) { return DecodeKernelFor<decltype(d)::value>(kd); });
}

}  // namespace plume::cuda::attn
