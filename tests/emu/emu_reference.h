// What the attention kernels' emulation tests (tests/emu/*_emu_test.cc)
// share: normal random inputs from a fixed seed, the decode's page splits,
// and an output's rel. L2
// error against the FP64 reference, failing where an element was left
// unwritten (the outputs start as NaN). Test-only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace plume::cuda::emu {

inline std::vector<float> Normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 r(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(r);
  return v;
}

// The decode's pages in at most `most` splits of equal length, as the
// dispatch cuts them: pages a split, and the splits that gives.
struct Splits {
  int pages_per_split, splits;
};
inline Splits SplitPages(int pages, int most) {
  const int want = std::min(pages, most);
  const int pps = (pages + want - 1) / want;
  return {pps, (pages + pps - 1) / pps};
}

inline double WrittenRelL2(const std::vector<float>& out, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  int64_t unwritten = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) ++unwritten;
    num += (out[i] - want[i]) * (out[i] - want[i]);
    den += want[i] * want[i];
  }
  EXPECT_EQ(unwritten, 0);
  return std::sqrt(num / den);
}

}  // namespace plume::cuda::emu
