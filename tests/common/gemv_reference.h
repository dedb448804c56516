// Test helpers shared by the server and CLI tests: seeded random data, and
// the expected GEMV (the CPU reference's quantization, dequantized, in FP64).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "plume/kernels/layout.h"
#include "plume/reference/api.h"

namespace plume::testing {

// n normal(0, stddev) floats from a fixed seed; never an exact zero.
inline std::vector<float> RandomNormal(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) {
    x = d(rng);
    if (x == 0.0f) x = stddev * 0.01f;
  }
  return v;
}

// W (rows x cols floats) quantized exactly as a server with the CPU reference
// stores it, then dequantized; RelErr compares a GEMV result with FP64 W x.
class ExpectedGemv {
 public:
  ExpectedGemv(const std::vector<float>& w, int64_t rows, int64_t cols, Fp8Format f, ScaleMode m)
      : rows_(rows), cols_(cols), deq_(static_cast<size_t>(rows * cols)) {
    std::vector<uint32_t> words(static_cast<size_t>(PackedLayout{rows, cols}.total_words()));
    std::vector<float> scales(static_cast<size_t>(std::max<int64_t>(1, NumScales(m, rows, cols))));
    ref::QuantizePack(w.data(), DType::kF32, rows, cols, {f, m, true}, words.data(), scales.data());
    ref::Dequantize({words.data(), scales.data(), rows, cols, f, m}, deq_.data());
  }

  // Relative L2 error of y ([batch][rows]) against FP64 W x (x: [batch][cols]);
  // infinity when the expected result is all zero (a test that proves nothing).
  double RelErr(const std::vector<float>& x, int64_t batch, const std::vector<float>& y) const {
    double err = 0, norm = 0;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < rows_; ++r) {
        double want = 0;
        for (int64_t c = 0; c < cols_; ++c) {
          want += double(deq_[size_t(r * cols_ + c)]) * double(x[size_t(b * cols_ + c)]);
        }
        const double d = double(y[size_t(b * rows_ + r)]) - want;
        err += d * d;
        norm += want * want;
      }
    }
    return norm > 0 ? std::sqrt(err / norm) : INFINITY;
  }

 private:
  int64_t rows_, cols_;
  std::vector<float> deq_;
};

}  // namespace plume::testing
