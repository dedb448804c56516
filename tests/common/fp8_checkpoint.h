// Test helpers that generate FP8 checkpoints: a raw .safetensors writer (any
// dtype string, header JSON + data), seeded random FP8 codes without NaN/inf
// codes, scale tensors of every layout in F32/BF16/F16, a uint8 .npy writer,
// and the FP64 product of the dequantized matrix.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/types.h"

namespace plume::testing {

// One tensor as a .safetensors file stores it.
struct RawTensor {
  std::string dtype;  // "F8_E4M3", "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string data;
};

// 8-byte little-endian header length, the JSON header (padded with spaces
// to 8 bytes), then the tensors' bytes in name order.
inline std::string EncodeRawSafetensors(const std::map<std::string, RawTensor>& tensors) {
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  h["__metadata__"] = {{"format", "pt"}};
  std::string js = h.dump();
  js.append((8 - js.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t{js.size()} >> (8 * i)) & 0xff);
  out += js;
  for (const auto& [name, t] : tensors) out += t.data;
  return out;
}

inline const char* Fp8Dtype(Fp8Format f) { return f == Fp8Format::kE4M3 ? "F8_E4M3" : "F8_E5M2"; }

// n random FP8 codes of format f from `seed`: never NaN (E4M3 0x7f/0xff) nor
// inf/NaN (E5M2 exponent 11111), never all zero.
inline std::string RandomFp8Codes(int64_t n, Fp8Format f, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, 255);
  std::string out(static_cast<size_t>(n), '\0');
  for (auto& ch : out) {
    int c;
    do {
      c = d(rng);
    } while (f == Fp8Format::kE4M3 ? (c & 0x7f) == 0x7f : (c & 0x7c) == 0x7c);
    ch = static_cast<char>(c);
  }
  if (n > 0) out[0] = 0x38;  // 1.0 in E4M3, 0.5 in E5M2: never all zero
  return out;
}

// n random positive scales, each m/8 * 2^e with m in 8..15 and e in -12..-2:
// exact in F32, BF16 and F16 alike, so every scale dtype gives the same
// FP32 scales.
inline std::vector<float> RandomScales(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> m(8, 15), e(-12, -2);
  std::vector<float> out(static_cast<size_t>(n));
  for (auto& s : out) s = std::ldexp(static_cast<float>(m(rng)) / 8.0f, e(rng));
  return out;
}

// The bytes of `v` as a safetensors dtype ("F32", "BF16" or "F16").
inline std::string ScaleBytes(const std::vector<float>& v, const std::string& dtype) {
  std::string out;
  for (float x : v) {
    if (dtype == "F32") {
      out.append(reinterpret_cast<const char*>(&x), 4);
    } else {
      const uint16_t b = dtype == "BF16" ? FloatToBf16Bits(x) : FloatToHalfBits(x);
      out.push_back(static_cast<char>(b & 0xff));
      out.push_back(static_cast<char>(b >> 8));
    }
  }
  return out;
}

// A .npy file of uint8 codes.
inline std::string EncodeNpyU8(const std::vector<int64_t>& shape, const std::string& data) {
  std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
  dict += "), }";
  size_t total = 10 + dict.size() + 1;
  dict.append((total + 63) / 64 * 64 - total, ' ');
  dict.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>(dict.size() >> 8));
  return out + dict + data;
}

// Scale of element (r, c) of a [rows, cols] matrix in plume.v1.ScaleMode
// numbering (1 none, 2 tensor, 3 row, 4 block128, 5 block128x128).
inline float ScaleOf(int mode, const std::vector<float>& s, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  (void)rows;
  const int64_t bc = (cols + 127) / 128;
  switch (mode) {
    case 1: return 1.0f;
    case 2: return s[0];
    case 3: return s[size_t(r)];
    case 4: return s[size_t(r * bc + c / 128)];
    default: return s[size_t((r / 128) * bc + c / 128)];
  }
}

// The dequantized matrix, code x scale, in FP64.
inline std::vector<double> Dequantize(const std::string& codes, Fp8Format f, int mode, const std::vector<float>& s,
                                      int64_t rows, int64_t cols) {
  std::vector<double> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const double v = fp8::Decode(static_cast<uint8_t>(codes[size_t(r * cols + c)]), f);
      w[size_t(r * cols + c)] = v * double(ScaleOf(mode, s, rows, cols, r, c));
    }
  }
  return w;
}

// Relative L2 error of y ([batch][rows]) against FP64 W x (x: [batch][cols]).
inline double GemvRelErr(const std::vector<double>& w, int64_t rows, int64_t cols, const std::vector<float>& x,
                         int64_t batch, const std::vector<float>& y) {
  double err = 0, norm = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < rows; ++r) {
      double want = 0;
      for (int64_t c = 0; c < cols; ++c) want += w[size_t(r * cols + c)] * double(x[size_t(b * cols + c)]);
      const double d = double(y[size_t(b * rows + r)]) - want;
      err += d * d;
      norm += want * want;
    }
  }
  return norm > 0 ? std::sqrt(err / norm) : INFINITY;
}

}  // namespace plume::testing
