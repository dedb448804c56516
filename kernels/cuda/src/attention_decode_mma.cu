// Instantiates the tensor-core decode kernels (attention_decode_mma.cuh,
// attention_decode_few.cuh) for the dispatch.
#include "attention_decode_few.cuh"
#include "attention_decode_mma.cuh"
#include "attention_kernels.cuh"

namespace plume::cuda::attn {

namespace {

template <int kD>
KernelFn PickDecodeMmaAt(Dec dec, bool few, bool shared) {
  return WithDec<KernelFn>(dec, [&](auto d) -> KernelFn {
    constexpr Dec kDec = decltype(d)::value;
    if (few) return DecodeFewKernel<kDec, kD>;
    if constexpr (kD == 128) {
      if (shared) return DecodeMmaKernel<kDec, kD, true>;
    }
    return shared ? nullptr : DecodeMmaKernel<kDec, kD, false>;
  });
}

}  // namespace

KernelFn PickDecodeMma(Dec dec, int kd, bool few, bool shared) {
  switch (kd) {
    case 64: return PickDecodeMmaAt<64>(dec, few, shared);
    case 128: return PickDecodeMmaAt<128>(dec, few, shared);
    case 256: return PickDecodeMmaAt<256>(dec, few, shared);
    default: return nullptr;
  }
}

}  // namespace plume::cuda::attn
