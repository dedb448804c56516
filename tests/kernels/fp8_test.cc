// Exhaustive FP8 decode/encode tests against tables built here from the
// format definitions (sign, exponent, mantissa, bias) with ldexp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "plume/kernels/fp8.h"

namespace {

using plume::Fp8Format;
using plume::fp8::Decode;
using plume::fp8::Encode;

struct Spec {
  Fp8Format f;
  int ebits, mbits, bias;
  bool ieee_special;  // E5M2: exponent all ones is inf/NaN
};
const Spec kE4M3{Fp8Format::kE4M3, 4, 3, 7, false};
const Spec kE5M2{Fp8Format::kE5M2, 5, 2, 15, true};

// The value of a code straight from the definition; NaN for NaN codes.
double RefValue(const Spec& s, int code) {
  const int sign = code >> 7;
  const int e = (code >> s.mbits) & ((1 << s.ebits) - 1);
  const int m = code & ((1 << s.mbits) - 1);
  const int emax_field = (1 << s.ebits) - 1;
  double v;
  if (s.ieee_special && e == emax_field) {
    v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (!s.ieee_special && e == emax_field && m == (1 << s.mbits) - 1) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - s.bias - s.mbits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -s.mbits), e - s.bias);
  }
  return sign ? -v : v;
}

bool IsNanCode(const Spec& s, int code) { return std::isnan(RefValue(s, code)); }

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

class Fp8Test : public ::testing::TestWithParam<Spec> {};

TEST_P(Fp8Test, DecodeAll256MatchesDefinition) {
  const Spec s = GetParam();
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float got = Decode(static_cast<uint8_t>(c), s.f);
    const double want = RefValue(s, c);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
      EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;
      ++nans;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
      EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;  // incl. -0
    }
  }
  EXPECT_EQ(nans, s.f == Fp8Format::kE4M3 ? 2 : 6);
  const float mx = s.f == Fp8Format::kE4M3 ? 448.0f : 57344.0f;
  EXPECT_EQ(Decode(s.f == Fp8Format::kE4M3 ? 0x7E : 0x7B, s.f), mx);
  EXPECT_EQ(plume::fp8::MaxValue(s.f), mx);
  if (s.f == Fp8Format::kE4M3) {
    EXPECT_EQ(plume::fp8::DecodeE4M3(0x01), std::ldexp(1.0f, -9));
  } else {
    EXPECT_EQ(plume::fp8::DecodeE5M2(0x01), std::ldexp(1.0f, -16));
    EXPECT_EQ(plume::fp8::DecodeE5M2(0x7C), std::numeric_limits<float>::infinity());
    EXPECT_EQ(plume::fp8::DecodeE5M2(0xFC), -std::numeric_limits<float>::infinity());
  }
}

TEST_P(Fp8Test, EncodeRoundTripsEveryNonNanCode) {
  const Spec s = GetParam();
  for (int c = 0; c < 256; ++c) {
    if (IsNanCode(s, c)) continue;
    const float v = static_cast<float>(RefValue(s, c));
    if (std::isinf(v)) {
      EXPECT_EQ(Encode(v, s.f, /*saturate=*/false), c);
      continue;
    }
    EXPECT_EQ(Encode(v, s.f), c) << "code " << c;
    EXPECT_EQ(Encode(v, s.f, false), c) << "code " << c;
  }
}

// Positive finite codes in increasing order of value.
std::vector<int> FiniteCodes(const Spec& s) {
  std::vector<int> out;
  for (int c = 0; c < 128; ++c)
    if (std::isfinite(RefValue(s, c))) out.push_back(c);
  return out;
}

TEST_P(Fp8Test, MidpointsTieToEvenAndNeighboursRoundToNearer) {
  const Spec s = GetParam();
  const std::vector<int> codes = FiniteCodes(s);
  for (size_t i = 0; i + 1 < codes.size(); ++i) {
    const int lo = codes[i], hi = codes[i + 1];
    ASSERT_EQ(hi, lo + 1);
    const double a = RefValue(s, lo), b = RefValue(s, hi);
    const float mid = static_cast<float>((a + b) / 2);  // exact in float
    ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
    const int even = (lo % 2 == 0) ? lo : hi;
    for (int sign : {0, 0x80}) {
      const float sg = sign ? -1.0f : 1.0f;
      EXPECT_EQ(Encode(sg * mid, s.f), even | sign) << "between " << lo << " and " << hi;
      EXPECT_EQ(Encode(sg * std::nextafter(mid, 0.0f), s.f), lo | sign);
      EXPECT_EQ(Encode(sg * std::nextafter(mid, 1e30f), s.f), hi | sign);
      // A quarter of the way from each end.
      EXPECT_EQ(Encode(sg * static_cast<float>(a + (b - a) / 4), s.f), lo | sign);
      EXPECT_EQ(Encode(sg * static_cast<float>(b - (b - a) / 4), s.f), hi | sign);
    }
  }
}

TEST_P(Fp8Test, Overflow) {
  const Spec s = GetParam();
  const bool e4 = s.f == Fp8Format::kE4M3;
  const float mx = e4 ? 448.0f : 57344.0f;
  const float tie = e4 ? 464.0f : 61440.0f;  // midpoint between max and the next (absent) value
  const int maxc = e4 ? 0x7E : 0x7B;
  const int ovf = e4 ? 0x7F : 0x7C;  // non-saturating: NaN (E4M3) or inf (E5M2)
  const float inf = std::numeric_limits<float>::infinity();
  for (int sign : {0, 0x80}) {
    const float sg = sign ? -1.0f : 1.0f;
    EXPECT_EQ(Encode(sg * mx, s.f), maxc | sign);
    EXPECT_EQ(Encode(sg * mx, s.f, false), maxc | sign);
    EXPECT_EQ(Encode(sg * std::nextafter(mx, 1e30f), s.f, false), maxc | sign);
    if (e4) {
      // 464 ties to even: 448 (mantissa 110) rather than 480.
      EXPECT_EQ(Encode(sg * tie, s.f), maxc | sign);
      EXPECT_EQ(Encode(sg * tie, s.f, false), maxc | sign);
    } else {
      // 61440 ties to even: 65536, which overflows.
      EXPECT_EQ(Encode(sg * tie, s.f), maxc | sign);
      EXPECT_EQ(Encode(sg * tie, s.f, false), ovf | sign);
    }
    EXPECT_EQ(Encode(sg * std::nextafter(tie, 0.0f), s.f, false), maxc | sign);
    EXPECT_EQ(Encode(sg * std::nextafter(tie, 1e30f), s.f), maxc | sign);
    EXPECT_EQ(Encode(sg * std::nextafter(tie, 1e30f), s.f, false), ovf | sign);
    for (float big : {1e6f, 3e38f, std::numeric_limits<float>::max()}) {
      EXPECT_EQ(Encode(sg * big, s.f), maxc | sign);
      EXPECT_EQ(Encode(sg * big, s.f, false), ovf | sign);
    }
    EXPECT_EQ(Encode(sg * inf, s.f), maxc | sign);
    EXPECT_EQ(Encode(sg * inf, s.f, false), (e4 ? 0x7F : 0x7C) | sign);
  }
}

TEST_P(Fp8Test, NanAndZero) {
  const Spec s = GetParam();
  const int nanc = s.f == Fp8Format::kE4M3 ? 0x7F : 0x7E;
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  for (bool sat : {true, false}) {
    EXPECT_EQ(Encode(qnan, s.f, sat), nanc);
    EXPECT_EQ(Encode(-qnan, s.f, sat), nanc | 0x80);
    EXPECT_EQ(Encode(std::numeric_limits<float>::signaling_NaN(), s.f, sat) & 0x7F, nanc);
    EXPECT_EQ(Encode(0.0f, s.f, sat), 0x00);
    EXPECT_EQ(Encode(-0.0f, s.f, sat), 0x80);
    EXPECT_EQ(Encode(std::numeric_limits<float>::denorm_min(), s.f, sat), 0x00);
    EXPECT_EQ(Encode(-std::numeric_limits<float>::denorm_min(), s.f, sat), 0x80);
    EXPECT_EQ(Encode(-1e-30f, s.f, sat), 0x80);
  }
  EXPECT_TRUE(std::isnan(Decode(static_cast<uint8_t>(nanc), s.f)));
}

TEST_P(Fp8Test, SubnormalBoundaries) {
  const Spec s = GetParam();
  const float tiny = std::ldexp(1.0f, 1 - s.bias - s.mbits);  // smallest subnormal
  EXPECT_EQ(Decode(0x01, s.f), tiny);
  for (int sign : {0, 0x80}) {
    const float sg = sign ? -1.0f : 1.0f;
    EXPECT_EQ(Encode(sg * tiny, s.f), 0x01 | sign);
    EXPECT_EQ(Encode(sg * tiny / 2, s.f), 0x00 | sign);  // tie -> even (0)
    EXPECT_EQ(Encode(sg * std::nextafter(tiny / 2, 1.0f), s.f), 0x01 | sign);
    EXPECT_EQ(Encode(sg * std::nextafter(tiny / 2, 0.0f), s.f), 0x00 | sign);
    EXPECT_EQ(Encode(sg * tiny * 1.5f, s.f), 0x02 | sign);  // tie 1|2 -> 2
    EXPECT_EQ(Encode(sg * tiny * 2.5f, s.f), 0x02 | sign);  // tie 2|3 -> 2
    // Largest subnormal and smallest normal.
    const int top = (1 << s.mbits) - 1;
    EXPECT_EQ(Encode(sg * tiny * top, s.f), top | sign);
    EXPECT_EQ(Encode(sg * tiny * (top + 0.5f), s.f), (top + 1) | sign);  // tie -> even (normal)
    EXPECT_EQ(Encode(sg * std::ldexp(1.0f, 1 - s.bias), s.f), (1 << s.mbits) | sign);
  }
}

TEST(Fp8, E4M3AndE5M2EntryPointsAgree) {
  for (int c = 0; c < 256; ++c) {
    const float a = plume::fp8::DecodeE4M3(static_cast<uint8_t>(c));
    const float b = Decode(static_cast<uint8_t>(c), Fp8Format::kE4M3);
    EXPECT_EQ(Bits(a), Bits(b));
    EXPECT_EQ(Bits(plume::fp8::DecodeE5M2(static_cast<uint8_t>(c))),
              Bits(Decode(static_cast<uint8_t>(c), Fp8Format::kE5M2)));
  }
  EXPECT_EQ(plume::fp8::EncodeE4M3(1.0f), 0x38);
  EXPECT_EQ(plume::fp8::EncodeE5M2(1.0f), 0x3C);
  EXPECT_EQ(plume::fp8::EncodeE4M3(-2.0f), 0xC0);
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8Test, ::testing::Values(kE4M3, kE5M2),
                         [](const auto& info) { return info.param.f == Fp8Format::kE4M3 ? "E4M3" : "E5M2"; });

}  // namespace
