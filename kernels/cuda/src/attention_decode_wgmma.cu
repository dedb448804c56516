// Instantiates the Hopper decode (attention_decode_wgmma.cuh) for the
// dispatch. Built for sm_90a alone (kernels/cuda/CMakeLists.txt); the
// dispatch runs it on compute capability 9.0 only.
#include "attention_decode_wgmma.cuh"
#include "attention_kernels.cuh"

namespace plume::cuda::attn {

namespace {

template <int kD>
DecodeWgmmaPick PickAt(Dec dec) {
  using W = WgDecode<kD>;
  DecodeWgmmaPick f;
  f.fn = WithDec<KernelFn>(dec, [](auto d) -> KernelFn { return DecodeWgmmaKernel<kD, decltype(d)::value>; });
  f.smem = W::kSmem;
  f.threads = W::kThreads;
  f.rows = W::kRows;
  return f;
}

}  // namespace

DecodeWgmmaPick PickDecodeWgmma(Dec dec, int kd) {
  switch (kd) {
    case 64: return PickAt<64>(dec);
    case 128: return PickAt<128>(dec);
    default: return {};
  }
}

bool DecodeWgmmaAvailable(int kd, int device) {
  return Sm90RunsEveryDecoder(device, [&](Dec dec) {
    const DecodeWgmmaPick f = PickDecodeWgmma(dec, kd);
    return KernelFit{reinterpret_cast<const void*>(f.fn), f.smem, f.threads};
  });
}

}  // namespace plume::cuda::attn
