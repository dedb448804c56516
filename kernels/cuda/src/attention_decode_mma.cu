// Instantiates the tensor-core decode kernels (attention_decode_mma.cuh,
// attention_decode_few.cuh) for the dispatch.
#include "attention_decode_few.cuh"
#include "attention_decode_mma.cuh"
#include "attention_kernels.cuh"

namespace plume::cuda::attn {

KernelFn PickDecodeMma(Dec dec, bool few, bool shared) {
  return WithDec<KernelFn>(dec, [&](auto d) -> KernelFn {
    constexpr Dec kDec = decltype(d)::value;
    if (few) return DecodeFewKernel<kDec>;
    return shared ? DecodeMmaKernel<kDec, true> : DecodeMmaKernel<kDec, false>;
  });
}

}  // namespace plume::cuda::attn
