// IEEE binary16 (F16) and bfloat16 (BF16) <-> float conversions, usable from
// host and device code. Float -> F16/BF16 rounds to nearest, ties to even;
// NaN stays NaN (quieted, sign and top payload bits kept); infinities and
// subnormals are exact. F16 overflow (|x| >= 65520) becomes +-inf.
#pragma once

#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

#include "plume/kernels/types.h"

namespace plume {

PLUME_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

PLUME_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Rounds the low `shift` bits away from `v` (shift in [1, 31]), nearest-even.
PLUME_HD uint32_t RoundShiftRne(uint32_t v, int shift) {
  const uint32_t q = v >> shift;
  const uint32_t rem = v & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
}

PLUME_HD uint16_t FloatToHalfBits(float f) {
  const uint32_t x = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) {  // NaN: quiet it, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 -> inf
  if (a >= 0x38800000u) {  // normal half (>= 2^-14)
    const uint32_t rebased = a - (112u << 23);  // exponent bias 127 -> 15
    return static_cast<uint16_t>(sign | RoundShiftRne(rebased, 13));
  }
  // Subnormal half: units of 2^-24.
  const int e = static_cast<int>(a >> 23);
  if (e == 0) return sign;  // float zero / subnormal: far below 2^-25
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - e;  // value * 2^24 = m * 2^(e - 126)
  if (shift >= 25) return sign;  // < 2^-25 (ties to 0 handled below only at 2^-25)
  return static_cast<uint16_t>(sign | RoundShiftRne(m, shift));
}

PLUME_HD float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return BitsToFloat(FloatToBits(v) | sign);
  }
  if (e == 31) return BitsToFloat(sign | 0x7f800000u | (m << 13));
  return BitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}

PLUME_HD uint16_t FloatToBf16Bits(float f) {
  const uint32_t x = FloatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

PLUME_HD float Bf16BitsToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

}  // namespace plume
