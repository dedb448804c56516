// F16 / BF16 <-> float conversions: exhaustive decode vs definition, RNE ties,
// NaN, inf, subnormals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "plume/kernels/half.h"
#include "plume/reference/api.h"

namespace {

using plume::Bf16BitsToFloat;
using plume::FloatToBf16Bits;
using plume::FloatToHalfBits;
using plume::HalfBitsToFloat;

double HalfRef(int h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0) v = std::ldexp(m, -24);
  else v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

TEST(Half, DecodeAllAndRoundTrip) {
  for (int h = 0; h < 65536; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    const double want = HalfRef(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      // NaN stays NaN (quiet bit set; payload of a quiet NaN kept).
      const uint16_t back = FloatToHalfBits(f);
      EXPECT_EQ(back & 0x7C00, 0x7C00);
      EXPECT_NE(back & 0x3FF, 0);
      EXPECT_EQ(back & 0x8000, h & 0x8000);
      if (h & 0x200) EXPECT_EQ(back, h);
    } else {
      ASSERT_EQ(static_cast<double>(f), want) << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0);
      ASSERT_EQ(FloatToHalfBits(f), h) << h;
    }
  }
}

TEST(Half, RoundToNearestEven) {
  // Between every pair of neighbouring positive finite halves.
  for (int h = 0; h < 0x7BFF; ++h) {
    const double a = HalfRef(h), b = HalfRef(h + 1);
    const float mid = static_cast<float>((a + b) / 2);
    ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
    const int even = (h % 2 == 0) ? h : h + 1;
    ASSERT_EQ(FloatToHalfBits(mid), even) << h;
    ASSERT_EQ(FloatToHalfBits(-mid), even | 0x8000) << h;
    ASSERT_EQ(FloatToHalfBits(std::nextafter(mid, 0.0f)), h) << h;
    ASSERT_EQ(FloatToHalfBits(std::nextafter(mid, 1e9f)), h + 1) << h;
  }
  // Overflow: 65504 is max; 65520 ties to even -> inf.
  EXPECT_EQ(FloatToHalfBits(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalfBits(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7C00);
  EXPECT_EQ(FloatToHalfBits(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalfBits(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalfBits(-std::numeric_limits<float>::infinity()), 0xFC00);
  // Underflow: half the smallest subnormal ties to 0, just above -> 1.
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToHalfBits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalfBits(-std::ldexp(1.0f, -26)), 0x8000);
  EXPECT_EQ(FloatToHalfBits(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalfBits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalfBits(std::numeric_limits<float>::quiet_NaN()) & 0x7E00, 0x7E00);
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Bf16, DecodeAllAndRoundTripAndTies) {
  for (int h = 0; h < 65536; ++h) {
    const float f = Bf16BitsToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(Bits(f), static_cast<uint32_t>(h) << 16);
    if (std::isnan(f)) {
      const uint16_t back = FloatToBf16Bits(f);
      EXPECT_TRUE(std::isnan(Bf16BitsToFloat(back)));
      EXPECT_EQ(back & 0x8000, h & 0x8000);
      continue;
    }
    ASSERT_EQ(FloatToBf16Bits(f), h);
    // Ties between h and h+1 (same sign, magnitudes increasing), when finite.
    if ((h & 0x7FFF) < 0x7F7F) {
      const uint32_t mid = (static_cast<uint32_t>(h) << 16) | 0x8000u;
      const int even = (h % 2 == 0) ? h : h + 1;
      ASSERT_EQ(FloatToBf16Bits(FromBits(mid)), even) << h;
      ASSERT_EQ(FloatToBf16Bits(FromBits(mid - 1)), h) << h;
      ASSERT_EQ(FloatToBf16Bits(FromBits(mid + 1)), h + 1) << h;
    }
  }
  EXPECT_EQ(FloatToBf16Bits(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(FloatToBf16Bits(-std::numeric_limits<float>::infinity()), 0xFF80);
  // A NaN whose payload sits only in the low bits stays NaN.
  EXPECT_TRUE(std::isnan(Bf16BitsToFloat(FloatToBf16Bits(FromBits(0x7F800001u)))));
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x00000001u)), 0x0000);  // float subnormal: rounds to 0
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x00008000u)), 0x0000);  // tie -> even
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x00018000u)), 0x0002);  // tie -> even (up)
}

TEST(Convert, ToFloatFromFloatAllDtypes) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> src(333);
  for (float& v : src) v = nd(rng);
  for (plume::DType t : {plume::DType::kF32, plume::DType::kF16, plume::DType::kBF16}) {
    std::vector<uint8_t> buf(src.size() * plume::DTypeSize(t));
    plume::ref::FromFloat(src.data(), static_cast<int64_t>(src.size()), t, buf.data());
    std::vector<float> back(src.size());
    plume::ref::ToFloat(buf.data(), t, 123.0f /* ignored for non-FP8 */, static_cast<int64_t>(src.size()),
                        back.data());
    for (size_t i = 0; i < src.size(); ++i) {
      const float want = t == plume::DType::kF32   ? src[i]
                         : t == plume::DType::kF16 ? HalfBitsToFloat(FloatToHalfBits(src[i]))
                                                   : Bf16BitsToFloat(FloatToBf16Bits(src[i]));
      ASSERT_EQ(back[i], want);
    }
  }
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
  std::vector<float> out(256);
  plume::ref::ToFloat(codes.data(), plume::DType::kE5M2, 0.5f, 256, out.data());
  EXPECT_EQ(out[0x3C], 0.5f);
  plume::ref::ToFloat(codes.data(), plume::DType::kE4M3, 0.25f, 256, out.data());
  EXPECT_EQ(out[0x38], 0.25f);
  EXPECT_TRUE(std::isnan(out[0x7F]));
}

}  // namespace
