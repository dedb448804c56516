// OCP FP8 (E4M3 / E5M2) decode and encode, usable from host and device code.
//
// E4M3: bias 7, max +-448, no infinities, NaN is S.1111.111 (0x7F / 0xFF),
//       subnormals (exponent 0) are m/8 * 2^-6.
// E5M2: bias 15, max +-57344, infinities 0x7C / 0xFC, NaN exponent 11111 with
//       mantissa != 0, subnormals m/4 * 2^-14.
//
// Decode is exact. Encode rounds to nearest, ties to even, with correct
// subnormals (values at or below half the smallest subnormal become +-0; the
// sign of zero is kept). "Overflow" means the value rounds (RNE at the
// format's precision, unbounded exponent) above max: E4M3 > 464, E5M2 >= 61440.
//   saturate = true (default): overflow and +-inf become +-max.
//   saturate = false: overflow becomes NaN (E4M3) or +-inf (E5M2); +-inf
//   input becomes NaN (E4M3) or +-inf (E5M2).
// NaN input becomes a NaN code with the input's sign: E4M3 0x7F|sign, E5M2
// the canonical quiet 0x7E|sign (the payload is not kept).
#pragma once

#include <cstdint>

#include "plume/kernels/half.h"
#include "plume/kernels/types.h"

namespace plume::fp8 {

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;

PLUME_HD constexpr float MaxValue(Fp8Format f) {
  return f == Fp8Format::kE4M3 ? kE4M3Max : kE5M2Max;
}

PLUME_HD float DecodeE4M3(uint8_t c) {
  const uint32_t sign = static_cast<uint32_t>(c & 0x80u) << 24;
  const uint32_t mag = c & 0x7fu;
  if (mag == 0x7fu) return BitsToFloat(sign | 0x7fc00000u);
  const uint32_t e = mag >> 3, m = mag & 7u;
  if (e == 0) {
    const float v = static_cast<float>(m) * 0.001953125f;  // m * 2^-9, exact
    return BitsToFloat(FloatToBits(v) | sign);
  }
  return BitsToFloat(sign | ((e + 120u) << 23) | (m << 20));
}

PLUME_HD float DecodeE5M2(uint8_t c) {
  // E5M2 is the high byte of an IEEE binary16.
  return HalfBitsToFloat(static_cast<uint16_t>(static_cast<uint16_t>(c) << 8));
}

PLUME_HD float Decode(uint8_t c, Fp8Format f) {
  return f == Fp8Format::kE4M3 ? DecodeE4M3(c) : DecodeE5M2(c);
}

namespace detail {
// mbits: mantissa bits; bias: exponent bias; max_mag: code of +max;
// overflow_mag: code for non-saturating overflow; nan_mag: NaN code.
PLUME_HD uint8_t EncodeGeneric(float v, int mbits, int bias, uint32_t max_mag,
                               uint32_t overflow_mag, uint32_t inf_mag, uint32_t nan_mag,
                               bool saturate) {
  const uint32_t x = FloatToBits(v);
  const uint32_t sign = (x >> 24) & 0x80u;
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | nan_mag);
  if (a == 0x7f800000u) return static_cast<uint8_t>(sign | (saturate ? max_mag : inf_mag));
  const int e = static_cast<int>(a >> 23);  // biased by 127
  if (e == 0) return static_cast<uint8_t>(sign);  // float zero / subnormal: far below FP8
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  uint32_t code;
  if (e - 127 >= 1 - bias) {  // normal range of the FP8 format (unbounded above)
    const uint32_t rebased = (static_cast<uint32_t>(e - 127 + bias) << 23) | (a & 0x7fffffu);
    code = RoundShiftRne(rebased, 23 - mbits);
  } else {  // subnormal: units of 2^(1 - bias - mbits)
    const int shift = (150 + 1 - bias - mbits) - e;  // > 23 - mbits here
    code = shift >= 25 ? 0u : RoundShiftRne(m, shift);
  }
  if (code > max_mag) code = saturate ? max_mag : overflow_mag;
  return static_cast<uint8_t>(sign | code);
}
}  // namespace detail

PLUME_HD uint8_t EncodeE4M3(float v, bool saturate = true) {
  return detail::EncodeGeneric(v, 3, 7, 0x7eu, 0x7fu, 0x7fu, 0x7fu, saturate);
}
PLUME_HD uint8_t EncodeE5M2(float v, bool saturate = true) {
  return detail::EncodeGeneric(v, 2, 15, 0x7bu, 0x7cu, 0x7cu, 0x7eu, saturate);
}
PLUME_HD uint8_t Encode(float v, Fp8Format f, bool saturate = true) {
  return f == Fp8Format::kE4M3 ? EncodeE4M3(v, saturate) : EncodeE5M2(v, saturate);
}

// The scale of a group (tensor, row or 128-column block) whose largest finite
// magnitude is `amax`: amax / max, so the group's largest value encodes to
// +-max; 1 when amax is 0 (all zeros, or no finite values); never below
// FLT_MIN (2^-126), so x / scale stays finite. Shared by the CPU reference
// and the GPU quantizer, which must agree bit for bit.
PLUME_HD float ScaleFromAmax(float amax, Fp8Format f) {
  if (!(amax > 0.0f)) return 1.0f;
  const float s = amax / MaxValue(f);
  return s < 1.17549435e-38f ? 1.17549435e-38f : s;
}

}  // namespace plume::fp8
