// Instantiates the older prefill kernel (attention_prefill_fallback.cuh) for
// the dispatch.
#include "attention_prefill_fallback.cuh"

#include "attention_kernels.cuh"

namespace plume::cuda::attn {

PrefillPick PickPrefill(int kd) {
  switch (kd) {
    case 64: return {PrefillKernel<64>, PrefillShape<64>::kSmem, PrefillShape<64>::kDv};
    case 128: return {PrefillKernel<128>, PrefillShape<128>::kSmem, PrefillShape<128>::kDv};
    case 256: return {PrefillKernel<256>, PrefillShape<256>::kSmem, PrefillShape<256>::kDv};
    case 512: return {PrefillKernel<512>, PrefillShape<512>::kSmem, PrefillShape<512>::kDv};
    default: return {};
  }
}

}  // namespace plume::cuda::attn
