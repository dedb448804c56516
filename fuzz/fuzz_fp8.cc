// libFuzzer target: FP8 encode/decode against the format's definition (OCP
// E4M3: bias 7, no infinities, NaN S.1111.111; E5M2: bias 15, IEEE inf/NaN).
// The input is read as floats. Decode must equal the value computed from the
// code's bits; each float's code must be the nearest finite code of its sign
// (ties to the even code) when saturating, the same when not saturating
// within range; and decode(encode(decode(c))) == decode(c).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "plume/kernels/fp8.h"

using namespace plume;

namespace {

// The value of a code, straight from the format definition.
double DefinitionValue(uint8_t c, Fp8Format f) {
  const int mbits = f == Fp8Format::kE4M3 ? 3 : 2;
  const int ebits = 7 - mbits;
  const int bias = f == Fp8Format::kE4M3 ? 7 : 15;
  const int sign = c >> 7, e = (c >> mbits) & ((1 << ebits) - 1), m = c & ((1 << mbits) - 1);
  if (f == Fp8Format::kE4M3 && e == 15 && m == 7) return NAN;
  if (f == Fp8Format::kE5M2 && e == 31) return m == 0 ? (sign ? -INFINITY : INFINITY) : NAN;
  const double mag = e == 0 ? std::ldexp(m, 1 - bias - mbits) : std::ldexp((1 << mbits) + m, e - bias - mbits);
  return sign ? -mag : mag;
}

// The nearest finite code with v's sign; ties to the even code.
uint8_t Nearest(float v, Fp8Format f) {
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  int best = -1;
  double best_d = 0;
  for (int m = 0; m < 128; ++m) {
    const uint8_t c = static_cast<uint8_t>(sign | m);
    const double d = DefinitionValue(c, f);
    if (!std::isfinite(d)) continue;
    const double dist = std::fabs(d - double(v));
    if (best < 0 || dist < best_d || (dist == best_d && (c & 1) == 0)) {
      best = c;
      best_d = dist;
    }
  }
  return static_cast<uint8_t>(best);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (size_t i = 0; i < size; ++i) {  // every byte is also a code
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      const double want = DefinitionValue(data[i], f);
      const float got = fp8::Decode(data[i], f);
      if (std::isnan(want) ? !std::isnan(got) : double(got) != want) __builtin_trap();
    }
  }
  const size_t n = size / 4;
  std::vector<float> v(n);
  if (n > 0) std::memcpy(v.data(), data, n * 4);
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    const float max = f == Fp8Format::kE4M3 ? 448.0f : 57344.0f;
    for (float x : v) {
      const uint8_t sat = fp8::Encode(x, f, true);
      const uint8_t nosat = fp8::Encode(x, f, false);
      if (std::isnan(x)) {
        if (!std::isnan(fp8::Decode(sat, f)) || !std::isnan(fp8::Decode(nosat, f))) __builtin_trap();
        continue;
      }
      // Saturating: overflow and +-inf become +-max (and anything beyond max
      // is nearest to max; clamping first keeps the distances exact).
      if (sat != Nearest(std::fabs(x) > max ? std::copysign(max, x) : x, f)) __builtin_trap();
      if (std::fabs(x) <= max && nosat != sat) __builtin_trap();
      const float d = fp8::Decode(sat, f);
      if (fp8::Decode(fp8::Encode(d, f, true), f) != d) __builtin_trap();
    }
  }
  return 0;
}
