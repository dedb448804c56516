// GPU FP8 codec vs the CPU reference: decoding of all 256 codes on both
// paths, and quantize-and-pack bit for bit, over ragged shapes, every source
// dtype, format, scaling mode and saturation mode.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "plume/cuda/fp8_codec.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/reference/api.h"

namespace plume::cuda {
namespace {


template <typename T>
struct DeviceBuffer {
  T* p = nullptr;
  explicit DeviceBuffer(size_t n) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  ~DeviceBuffer() { cudaFree(p); }
};

TEST(GpuFp8, DecodeAllCodesMatchesReferenceOnBothPaths) {
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (DecodePath path : {DecodePath::kNative, DecodePath::kSoftware}) {
      DeviceBuffer<float> d(256);
      ASSERT_NE(d.p, nullptr);
      ASSERT_EQ(cudaMemset(d.p, 0xff, 256 * sizeof(float)), cudaSuccess);  // poison
      ASSERT_EQ(DecodeAllCodes(f, path, d.p, nullptr), cudaSuccess);
      std::vector<float> got(256);
      ASSERT_EQ(cudaMemcpy(got.data(), d.p, 256 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
      for (int c = 0; c < 256; ++c) {
        const float want = fp8::Decode(static_cast<uint8_t>(c), f);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got[c])) << DTypeName(ToDType(f)) << " " << DecodePathName(path) << " code " << c;
        } else {
          EXPECT_EQ(FloatToBits(got[c]), FloatToBits(want))
              << DTypeName(ToDType(f)) << " " << DecodePathName(path) << " code " << c << ": got "
              << got[c] << " want " << want;
        }
      }
    }
  }
}

// Random values with the awkward ones mixed in: huge, tiny (subnormal after
// scaling), zeros, infinities and NaN.
std::vector<float> Awkward(int64_t n, uint32_t seed, bool specials) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) {
    x = normal(rng);
    if (!specials) continue;
    const int k = pick(rng);
    if (k == 0) x = 1e30f;
    if (k == 1) x = -1e-30f;
    if (k == 2) x = 0.0f;
    if (k == 3) x = INFINITY;
    if (k == 4) x = NAN;
    if (k == 5) x = 70000.0f;
  }
  return v;
}

std::vector<uint16_t> ToBits16(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = t == DType::kF16 ? FloatToHalfBits(v[i]) : FloatToBf16Bits(v[i]);
  }
  return out;
}

TEST(GpuFp8, QuantizePackIsBitIdenticalToReference) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {1, 3}, {3, 17}, {17, 129}, {5, 4095}, {129, 300}, {64, 128}, {1000, 33},
      {7, 4096}, {300, 2048}, {2, 8192}, {3, 20000}, {2, 40000}};  // 16-byte loads; long rows
  uint32_t seed = 1;
  int cases = 0;
  for (auto [rows, cols] : shapes) {
    for (DType src : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
        for (ScaleMode m : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
          for (bool saturate : {true, false}) {
            const bool specials = (seed % 2) == 0;
            std::vector<float> x = Awkward(rows * cols, seed++, specials);
            std::vector<uint16_t> x16;
            const void* host_src = x.data();
            size_t src_bytes = x.size() * sizeof(float);
            if (src != DType::kF32) {
              x16 = ToBits16(x, src);
              host_src = x16.data();
              src_bytes = x16.size() * sizeof(uint16_t);
            }
            const PackedLayout l{rows, cols};
            const int64_t ns = NumScales(m, rows, cols);
            std::vector<uint32_t> want_words(size_t(l.total_words()));
            std::vector<float> want_scales(size_t(std::max<int64_t>(ns, 1)));
            ref::QuantizePack(host_src, src, rows, cols, {f, m, saturate}, want_words.data(),
                              want_scales.data());

            DeviceBuffer<char> d_src(src_bytes);
            DeviceBuffer<uint32_t> d_words(size_t(l.total_words()));
            DeviceBuffer<float> d_scales(size_t(std::max<int64_t>(ns, 1)));
            DeviceBuffer<char> d_ws(size_t(QuantizePackWorkspaceBytes(rows, cols, m)));
            ASSERT_TRUE(d_src.p && d_words.p && d_scales.p && d_ws.p);
            ASSERT_EQ(cudaMemcpy(d_src.p, host_src, src_bytes, cudaMemcpyHostToDevice), cudaSuccess);
            ASSERT_EQ(cudaMemset(d_words.p, 0xa5, size_t(l.total_words()) * 4), cudaSuccess);  // poison
            ASSERT_EQ(cudaMemset(d_scales.p, 0xff, size_t(std::max<int64_t>(ns, 1)) * 4), cudaSuccess);
            ASSERT_EQ(QuantizePack(d_src.p, src, rows, cols, f, m, saturate, d_words.p, d_scales.p,
                                   d_ws.p, nullptr),
                      cudaSuccess);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            std::vector<uint32_t> got_words(want_words.size());
            std::vector<float> got_scales(want_scales.size());
            ASSERT_EQ(cudaMemcpy(got_words.data(), d_words.p, got_words.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
            ASSERT_EQ(cudaMemcpy(got_scales.data(), d_scales.p, got_scales.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
            const std::string what = std::to_string(rows) + "x" + std::to_string(cols) + " " +
                                     DTypeName(src) + "->" + DTypeName(ToDType(f)) + " " +
                                     ScaleModeName(m) + (saturate ? " sat" : " nonsat");
            ASSERT_EQ(std::memcmp(got_scales.data(), want_scales.data(), size_t(ns) * 4), 0) << what;
            for (size_t i = 0; i < want_words.size(); ++i) {
              ASSERT_EQ(got_words[i], want_words[i]) << what << " word " << i;
            }
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, static_cast<int>(shapes.size()) * 3 * 2 * 4 * 2);
}

TEST(GpuFp8, LauncherRejectsBadArguments) {
  EXPECT_EQ(QuantizePack(nullptr, DType::kF32, 0, 5, Fp8Format::kE4M3, ScaleMode::kRow, true,
                         nullptr, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(QuantizePack(nullptr, DType::kE4M3, 4, 5, Fp8Format::kE4M3, ScaleMode::kRow, true,
                         nullptr, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
}

// Values outside their enums (and BLOCK128X128, which nothing quantizes to)
// are refused, not run as another format, mode or path.
TEST(GpuFp8, LaunchersRefuseValuesTheyDoNotKnow) {
  DeviceBuffer<float> src(4 * 16), scales(4 * 4);
  DeviceBuffer<uint32_t> words(4 * 4);
  for (ScaleMode m : {ScaleMode::kBlock128x128, static_cast<ScaleMode>(0), static_cast<ScaleMode>(77)}) {
    EXPECT_EQ(QuantizePack(src.p, DType::kF32, 4, 16, Fp8Format::kE4M3, m, true, words.p, scales.p,
                           nullptr, nullptr),
              cudaErrorInvalidValue)
        << static_cast<int>(m);
  }
  EXPECT_EQ(QuantizePack(src.p, DType::kF32, 4, 16, static_cast<Fp8Format>(9), ScaleMode::kRow, true,
                         words.p, scales.p, nullptr, nullptr),
            cudaErrorInvalidValue);
  DeviceBuffer<float> out(256);
  EXPECT_EQ(DecodeAllCodes(static_cast<Fp8Format>(9), DecodePath::kSoftware, out.p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(DecodeAllCodes(Fp8Format::kE4M3, static_cast<DecodePath>(9), out.p, nullptr),
            cudaErrorInvalidValue);
  EXPECT_STREQ(DecodePathName(static_cast<DecodePath>(9)), "unknown");
}

}  // namespace
}  // namespace plume::cuda
