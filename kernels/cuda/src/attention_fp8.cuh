// FP8 codes to FP16 (and FP32) values in the attention kernels' registers:
// fp8_regs.cuh's DecodeWord with E4M3 NaN codes kept NaN on every path, and
// the runtime-selected decode of the older prefill kernel.
#pragma once

#include <cstdint>
#include <cstring>

#include "attention_device.cuh"

namespace plume::cuda::attn {

// Four codes (c0 in the low byte) to FP16 pairs, NaN codes kept NaN on every
// path (the software E4M3 decode alone reads them as finite numbers).
template <Dec kDec>
__device__ __forceinline__ void DecodeWordNan(uint32_t w, uint32_t& lo, uint32_t& hi) {
  DecodeWord<kDec>(w, lo, hi);
  if constexpr (kDec == Dec::kE4M3Soft) {
    // Without a branch: byte b of n has bit 7 set exactly where code b is a
    // NaN (0x7f or 0xff), and prmt's sign mode spreads that bit over the
    // code's FP16 half, which then becomes 0x7e00.
    const uint32_t n = (w & 0x7f7f7f7fu) + 0x01010101u;
    const uint32_t mlo = Prmt(n, 0x9988), mhi = Prmt(n, 0xBBAA);
    lo = (lo & ~mlo) | (0x7e007e00u & mlo);
    hi = (hi & ~mhi) | (0x7e007e00u & mhi);
  }
}

__device__ __forceinline__ float2 HalvesToFloats(uint32_t h2) {
  __half2 h;
  static_assert(sizeof(h) == sizeof(h2));
  memcpy(&h, &h2, sizeof(h));
  return __half22float2(h);
}

template <Dec kDec>
__device__ __forceinline__ void Decode4(uint32_t w, float (&f)[4]) {
  uint32_t lo, hi;
  DecodeWordNan<kDec>(w, lo, hi);
  const float2 a = HalvesToFloats(lo), b = HalvesToFloats(hi);
  f[0] = a.x;
  f[1] = a.y;
  f[2] = b.x;
  f[3] = b.y;
}

// Runtime-selected decode: the tiles are decoded once per page, so the
// branch is cheap next to the tensor-core work, and one kernel per head dim
// serves every path.
__device__ __forceinline__ void DecodeWordRt(Dec dec, uint32_t w, uint32_t& lo, uint32_t& hi) {
  switch (dec) {
    case Dec::kE4M3Soft: DecodeWordNan<Dec::kE4M3Soft>(w, lo, hi); break;
    case Dec::kE4M3Native: DecodeWordNan<Dec::kE4M3Native>(w, lo, hi); break;
    case Dec::kE5M2Soft: DecodeWordNan<Dec::kE5M2Soft>(w, lo, hi); break;
    default: DecodeWordNan<Dec::kE5M2Native>(w, lo, hi); break;
  }
}

}  // namespace plume::cuda::attn
