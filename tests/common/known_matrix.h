// A matrix a test knows in full (its source and the exact codes and scales
// a server must hold for it), for tests that check a server's matrices
// bit for bit after restarts and faults.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "plume/client/client.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"
#include "tests/common/gemv_reference.h"

namespace plume::testing {

// A matrix the test knows in full: its source and, from the CPU reference,
// the exact codes and scales a server must hold for it.
struct Known {
  std::string name;
  int64_t rows = 0, cols = 0;
  ScaleMode mode = ScaleMode::kRow;
  std::vector<float> w;
  std::vector<uint32_t> words;
  std::vector<float> scales;

  Known(std::string n, int64_t r, int64_t c, ScaleMode m, uint32_t seed)
      : name(std::move(n)), rows(r), cols(c), mode(m), w(RandomNormal(r * c, seed)) {
    words.resize(static_cast<size_t>(PackedLayout{r, c}.total_words()));
    scales.resize(static_cast<size_t>(NumScales(m, r, c)));
    ref::QuantizePack(w.data(), DType::kF32, r, c, {Fp8Format::kE4M3, m, true}, words.data(),
                      scales.data());
  }
  v1::ScaleMode wire_mode() const { return static_cast<v1::ScaleMode>(mode); }
  // y = W x exactly as the CPU backend computes it.
  std::vector<float> Gemv(const std::vector<float>& x) const {
    std::vector<float> y(static_cast<size_t>(rows));
    ref::GemvF32({words.data(), scales.data(), rows, cols, Fp8Format::kE4M3, mode}, x.data(), 1,
                 y.data());
    return y;
  }
};

inline std::vector<float> AsFloats(const HostTensor& t) {
  std::vector<float> v(t.data.size() / sizeof(float));
  std::memcpy(v.data(), t.data.data(), v.size() * sizeof(float));
  return v;
}

}  // namespace plume::testing
