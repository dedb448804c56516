// GPU FP8 GEMV vs the CPU reference: W quantized by the CPU reference and
// copied to the device, the result compared with FP64 W x on the dequantized
// matrix. Ragged shapes, both formats, every scaling mode, every activation
// and output dtype, both decode paths, batches 1..64 and larger. Outputs are
// poisoned with NaN first, so an element the kernel doesn't write fails.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "plume/cuda/gemv.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/reference/api.h"
#include "tests/common/gemv_reference.h"

namespace plume::cuda {
namespace {

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) {
    if (cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) p_ = nullptr;
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

template <typename T>
bool ToDevice(DeviceBuffer<T>& d, const std::vector<T>& h) {
  return d.get() != nullptr &&
         cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess;
}

// Weights with a wide dynamic range inside each row, so codes near the
// bottom of the range (E4M3/E5M2 subnormals) occur too.
std::vector<float> Weights(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> shift(0, 14);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) {
    x = std::ldexp(normal(rng), -shift(rng));
    if (x == 0.0f) x = 0.5f;
  }
  return v;
}

// A matrix quantized on the CPU, resident on the device, with its FP64
// dequantized copy.
struct TestMatrix {
  int64_t rows, cols;
  Fp8Format format;
  ScaleMode mode;
  std::vector<uint32_t> words;
  std::vector<float> scales;
  std::vector<double> deq;
  DeviceBuffer<uint32_t> d_words;
  DeviceBuffer<float> d_scales;
  DeviceBuffer<uint8_t> d_nan_rows;
  DeviceBuffer<int> d_any_nan;

  TestMatrix(int64_t r, int64_t c, Fp8Format f, ScaleMode m, uint32_t seed)
      : rows(r), cols(c), format(f), mode(m),
        words(static_cast<size_t>(PackedLayout{r, c}.total_words())),
        scales(static_cast<size_t>(std::max<int64_t>(1, NumScales(m, r, c)))),
        d_words(words.size()), d_scales(scales.size()), d_nan_rows(static_cast<size_t>(r)),
        d_any_nan(1) {
    const std::vector<float> w = Weights(r * c, seed);
    ref::QuantizePack(w.data(), DType::kF32, r, c, {f, m, true}, words.data(), scales.data());
  }

  // After editing words on the host.
  bool Upload() {
    std::vector<float> tmp(static_cast<size_t>(rows * cols));
    ref::Dequantize({words.data(), scales.data(), rows, cols, format, mode}, tmp.data());
    deq.assign(tmp.begin(), tmp.end());
    return ToDevice(d_words, words) && ToDevice(d_scales, scales) &&
           cudaMemset(d_any_nan.get(), 0, sizeof(int)) == cudaSuccess &&
           FindNanRows(d_words.get(), rows, cols, d_nan_rows.get(), d_any_nan.get(), nullptr) ==
               cudaSuccess;
  }
};

struct RunResult {
  cudaError_t err = cudaSuccess;
  std::vector<float> y;     // as floats
  std::vector<float> x;     // the activations as the kernel sees them
};

// Random activations of `dtype`; FP8 ones with a scale.
// A decode path and a kernel family, both forced.
struct Variant {
  DecodePath path;
  GemvKernel kernel;
};

// The problem of m times activations dx into results dy (null for
// ChosenGemvKernel, which reads neither), as `variant` forces.
GemvProblem ProblemOf(const TestMatrix& m, DType x, DType y, int64_t batch, Variant variant,
                      const void* dx, void* dy) {
  GemvProblem p;
  p.words = m.d_words.get();
  p.scales = m.d_scales.get();
  p.nan_rows = m.d_nan_rows.get();
  p.rows = m.rows;
  p.cols = m.cols;
  p.format = m.format;
  p.scale_mode = m.mode;
  p.x = dx;
  p.x_dtype = x;
  p.batch = batch;
  p.y = dy;
  p.y_dtype = y;
  p.path = variant.path;
  p.kernel = variant.kernel;
  return p;
}

RunResult RunGemv(const TestMatrix& m, DType x_dtype, DType y_dtype, int64_t batch,
                  Variant variant, uint32_t seed) {
  RunResult out;
  const int64_t n = batch * m.cols;
  const float x_scale = IsFp8(x_dtype) ? 0.37f : 1.0f;
  std::vector<float> xf = plume::testing::RandomNormal(n, seed, IsFp8(x_dtype) ? 4.0f : 1.0f);
  std::vector<uint8_t> xraw(static_cast<size_t>(n * DTypeSize(x_dtype)));
  if (IsFp8(x_dtype)) {
    for (int64_t i = 0; i < n; ++i) {
      xraw[size_t(i)] = fp8::Encode(xf[size_t(i)], x_dtype == DType::kE4M3 ? Fp8Format::kE4M3
                                                                            : Fp8Format::kE5M2,
                                    true);
    }
  } else {
    ref::FromFloat(xf.data(), n, x_dtype, xraw.data());
  }
  out.x.resize(size_t(n));
  ref::ToFloat(xraw.data(), x_dtype, x_scale, n, out.x.data());

  DeviceBuffer<uint8_t> d_x(xraw.size());
  const size_t y_bytes = size_t(batch * m.rows * DTypeSize(y_dtype));
  DeviceBuffer<uint8_t> d_y(y_bytes);
  if (!ToDevice(d_x, xraw) || d_y.get() == nullptr) {
    out.err = cudaErrorMemoryAllocation;
    return out;
  }
  cudaMemset(d_y.get(), 0xff, y_bytes);  // NaN in every output dtype

  GemvProblem p = ProblemOf(m, x_dtype, y_dtype, batch, variant, d_x.get(), d_y.get());
  p.x_scale = x_scale;
  int device = 0;
  cudaGetDevice(&device);
  const int64_t ws_bytes = GemvWorkspaceBytes(p, device);
  DeviceBuffer<uint8_t> ws{size_t(ws_bytes)};
  if (ws_bytes <= 0 || ws.get() == nullptr ||
      cudaMemset(ws.get(), 0, size_t(ws_bytes)) != cudaSuccess) {
    out.err = cudaErrorMemoryAllocation;
    return out;
  }
  out.err = Gemv(p, ws.get(), ws_bytes, nullptr);
  if (out.err == cudaSuccess) out.err = cudaDeviceSynchronize();
  if (out.err != cudaSuccess) return out;
  std::vector<uint8_t> yraw(y_bytes);
  out.err = cudaMemcpy(yraw.data(), d_y.get(), y_bytes, cudaMemcpyDeviceToHost);
  out.y.resize(size_t(batch * m.rows));
  ref::ToFloat(yraw.data(), y_dtype, 1.0f, batch * m.rows, out.y.data());
  return out;
}

// Relative L2 error against FP64 W x; counts outputs left unwritten (NaN).
struct Check {
  double rel = INFINITY;
  double rms = 0;                    // of the reference
  double worst_got = 0, worst_want = 0;  // the element farthest off
  int64_t unwritten = 0;
};

Check Compare(const TestMatrix& m, const RunResult& r, int64_t batch) {
  Check c;
  double err = 0, norm = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t row = 0; row < m.rows; ++row) {
      double want = 0;
      const double* w = m.deq.data() + row * m.cols;
      const float* x = r.x.data() + b * m.cols;
      for (int64_t k = 0; k < m.cols; ++k) want += w[k] * double(x[k]);
      const float got = r.y[size_t(b * m.rows + row)];
      if (std::isnan(got)) {
        ++c.unwritten;
        continue;
      }
      if (std::abs(got - want) >= std::abs(c.worst_got - c.worst_want)) {
        c.worst_got = got;
        c.worst_want = want;
      }
      err += (got - want) * (got - want);
      norm += want * want;
    }
  }
  c.rel = norm > 0 ? std::sqrt(err / norm) : INFINITY;
  c.rms = std::sqrt(norm / double(std::max<int64_t>(1, batch * m.rows)));
  return c;
}

// The bound by output dtype: the FP32 accumulation is well under 1e-5 for
// every activation dtype (they all reach the tensor cores exactly: F32 as
// hi + lo FP16); F16 and BF16 outputs add their own rounding.
double Bound(DType y_dtype) {
  return y_dtype == DType::kF32 ? 1e-5 : y_dtype == DType::kF16 ? 1e-3 : 8e-3;
}
// The same for a result whose reference has RMS `rms`: F16's subnormals
// (under 2^-14) are spaced 2^-24 apart whatever their size, so an output
// that small may be an absolute 2^-24 off, relatively much more than 1e-3.
double Bound(DType y_dtype, double rms) {
  return Bound(y_dtype) + (y_dtype == DType::kF16 && rms > 0 ? std::ldexp(1.0, -24) / rms : 0.0);
}

// The bound for FP8 activations through cuBLASLt (docs/api.md): W8A8 as the
// FP8 GEMMs compute it, whose tensor cores accumulate inside an instruction
// with fewer bits than FP32 (measured 1.2e-4 to 2.8e-4 on an H200), on top of
// the output dtype's own rounding.
constexpr double kW8A8Bound = 1e-3;
double LtBound(DType y_dtype, double rms) { return Bound(y_dtype, rms) + kW8A8Bound; }

// Every decode path and kernel family this device runs: the mma.sync kernels
// everywhere, the wgmma ones on sm_90, where the dispatcher (kAuto) measures
// both on first use and keeps the faster.
std::vector<Variant> Variants() {
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  std::vector<DecodePath> paths = {DecodePath::kSoftware};
  if (DefaultDecodePath(device) == DecodePath::kNative) paths.insert(paths.begin(), DecodePath::kNative);
  std::vector<GemvKernel> kernels = {GemvKernel::kMma};
  if (prop.major == 9 && prop.minor == 0) kernels.push_back(GemvKernel::kWgmma);
  std::vector<Variant> out;
  for (GemvKernel k : kernels) {
    for (DecodePath p : paths) out.push_back({p, k});
  }
  // And the dispatcher's own choice, measured on each new shape's first call.
  if (kernels.size() > 1) out.push_back({paths.front(), GemvKernel::kAuto});
  return out;
}

std::string Name(const TestMatrix& m, DType x, DType y, int64_t batch, Variant v) {
  return std::to_string(m.rows) + "x" + std::to_string(m.cols) + " " +
         DTypeName(ToDType(m.format)) + " " + ScaleModeName(m.mode) + " x=" + DTypeName(x) +
         " y=" + DTypeName(y) + " batch=" + std::to_string(batch) + " " +
         DecodePathName(v.path) + " " + GemvKernelName(v.kernel);
}

struct Shape {
  int64_t rows, cols;
  int64_t max_batch;  // keeps the FP64 reference quick for the big shapes
};

TEST(GpuGemv, MatchesReferenceOverTheGrid) {
  // Split columns in the Hopper kernel's plan: 300 x 1000 takes two splits,
  // 200 x 2040 four, 129 x 4095 eight (built with PLUME_WGMMA_CLUSTER=1, up
  // to six splits at N = 8 and eight at N = 16 finish through a cluster's
  // shared memory, two at N = 32 and 64). Up to N = 32 without block scales
  // an even split count becomes paired stages with half the splits
  // (tests/kernels/gemv_wgmma_plan_test.cc): 300 x 1000 none, 200 x 2040 two;
  // 300 x 1100 (9 chunks) and 200 x 2100 (17, the last split 7) leave warp
  // group 0 a lone last chunk. Columns not a multiple of 16, so that auto
  // never serves FP8 activations with cuBLASLt (bound 1e-3).
  const Shape shapes[] = {{1, 1, 130},     {3, 17, 130},    {17, 129, 130},  {129, 4095, 33},
                          {4095, 3, 65},   {300, 1000, 17}, {200, 2040, 33}, {2500, 700, 33},
                          {300, 1100, 17}, {200, 2100, 33}};
  const DType xs[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kE4M3, DType::kE5M2};
  const DType ys[] = {DType::kF32, DType::kF16, DType::kBF16};
  const int64_t batches[] = {1, 2, 3, 7, 8, 9, 16, 17, 31, 33, 64, 65, 130};
  int cases = 0;
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (ScaleMode mode :
           {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
        TestMatrix m(s.rows, s.cols, f, mode, seed++);
        ASSERT_TRUE(m.Upload());
        for (Variant v : Variants()) {
          for (DType x : xs) {
            // Batch and output dtype rotate through their lists across the grid.
            int64_t batch = batches[cases % std::size(batches)];
            while (batch > s.max_batch) batch = (batch + 1) / 2;
            const DType y = ys[cases % std::size(ys)];
            ++cases;
            const RunResult r = RunGemv(m, x, y, batch, v, seed++);
            ASSERT_EQ(r.err, cudaSuccess) << Name(m, x, y, batch, v) << ": "
                                          << cudaGetErrorString(r.err);
            const Check c = Compare(m, r, batch);
            EXPECT_EQ(c.unwritten, 0) << Name(m, x, y, batch, v);
            EXPECT_LE(c.rel, Bound(y, c.rms))
                << Name(m, x, y, batch, v) << ": worst element " << c.worst_got << " for "
                << c.worst_want << ", reference RMS " << c.rms;
          }
        }
      }
    }
  }
  std::printf("checked %d cases\n", cases);
}

// Every batch size from 1 to 64 and a few tiled ones, F16 and F32 activations,
// F32 output, on a shape whose columns are split across blocks.
TEST(GpuGemv, EveryBatchSize) {
  TestMatrix m(77, 2304, Fp8Format::kE4M3, ScaleMode::kRow, 99);
  ASSERT_TRUE(m.Upload());
  double worst = 0;
  for (Variant v : Variants()) {
    for (DType x : {DType::kF16, DType::kF32}) {
      for (int64_t batch = 1; batch <= 200; batch += batch < 64 ? 1 : 67) {
        const RunResult r = RunGemv(m, x, DType::kF32, batch, v, uint32_t(batch));
        ASSERT_EQ(r.err, cudaSuccess) << Name(m, x, DType::kF32, batch, v);
        const Check c = Compare(m, r, batch);
        EXPECT_EQ(c.unwritten, 0) << Name(m, x, DType::kF32, batch, v);
        EXPECT_LE(c.rel, 1e-5) << Name(m, x, DType::kF32, batch, v);
        worst = std::max(worst, c.rel);
      }
    }
  }
  std::printf("worst rel. L2 error, F32 output: %.3g\n", worst);
}

// Puts E4M3 NaN codes into rows 3 (+NaN, column 21) and 21 (-NaN, column
// 296) of an E4M3 matrix of at least 22 rows and 297 columns, then uploads it.
bool PlantNans(TestMatrix& m) {
  const int64_t wpr = PackedLayout{m.rows, m.cols}.words_per_row();
  m.words[size_t(3 * wpr + 5)] = (m.words[size_t(3 * wpr + 5)] & ~0xff00u) | 0x7f00u;
  m.words[size_t(21 * wpr + 74)] = (m.words[size_t(21 * wpr + 74)] & ~0xffu) | 0xffu;
  return m.Upload();
}

// Expects rows 3 and 21 of r's `batch` results NaN and every other finite.
void ExpectNanRows(const TestMatrix& m, const RunResult& r, int64_t batch, const std::string& what) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t row = 0; row < m.rows; ++row) {
      const float y = r.y[size_t(b * m.rows + row)];
      if (row == 3 || row == 21) {
        EXPECT_TRUE(std::isnan(y)) << "row " << row << " " << what;
      } else {
        EXPECT_TRUE(std::isfinite(y)) << "row " << row << " " << what;
      }
    }
  }
}

// Rows holding an E4M3 NaN code give NaN, as the reference does, on both
// decode paths; the other rows are unaffected.
TEST(GpuGemv, NanCodesGiveNanRows) {
  TestMatrix m(40, 300, Fp8Format::kE4M3, ScaleMode::kRow, 7);
  ASSERT_TRUE(PlantNans(m));
  int any = 0;
  ASSERT_EQ(cudaMemcpy(&any, m.d_any_nan.get(), sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(any, 1);
  for (Variant v : Variants()) {
    const RunResult r = RunGemv(m, DType::kF32, DType::kF32, 3, v, 5);
    ASSERT_EQ(r.err, cudaSuccess);
    ExpectNanRows(m, r, 3, std::string(DecodePathName(v.path)) + " " + GemvKernelName(v.kernel));
  }
}

// The same inputs give bit-identical outputs (the split reduction has a fixed
// order), and the workspace counters are left ready for the next launch.
TEST(GpuGemv, Deterministic) {
  TestMatrix m(200, 8192, Fp8Format::kE5M2, ScaleMode::kBlock128, 11);
  ASSERT_TRUE(m.Upload());
  for (Variant v : Variants()) {
    const RunResult a = RunGemv(m, DType::kF32, DType::kF32, 5, v, 3);
    const RunResult b = RunGemv(m, DType::kF32, DType::kF32, 5, v, 3);
    ASSERT_EQ(a.err, cudaSuccess);
    ASSERT_EQ(b.err, cudaSuccess);
    ASSERT_EQ(a.y.size(), b.y.size());
    EXPECT_EQ(std::memcmp(a.y.data(), b.y.data(), a.y.size() * sizeof(float)), 0);
    EXPECT_LE(Compare(m, a, 5).rel, 1e-5);
  }
}

TEST(GpuGemv, RejectsBadArguments) {
  TestMatrix m(8, 16, Fp8Format::kE4M3, ScaleMode::kRow, 1);
  ASSERT_TRUE(m.Upload());
  DeviceBuffer<float> x(16), y(8);
  DeviceBuffer<uint8_t> ws(1 << 20);
  GemvProblem p;
  p.words = m.d_words.get();
  p.scales = m.d_scales.get();
  p.rows = 8;
  p.cols = 16;
  p.x = x.get();
  p.y = y.get();
  p.batch = 1;
  p.batch = 0;
  EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorInvalidValue);
  p.batch = 1;
  p.y_dtype = DType::kE4M3;
  EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorInvalidValue);
  p.y_dtype = DType::kF32;
  EXPECT_EQ(Gemv(p, ws.get(), 1, nullptr), cudaErrorInvalidValue);  // workspace too small
  p.scales = nullptr;
  EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorInvalidValue);
}

// The dispatch refuses values it has no kernel for rather than run another:
// a format, decode path, kernel or scale mode outside its enum, and
// BLOCK128X128 (backends hold it as BLOCK128).
TEST(GpuGemv, RefusesValuesItDoesNotKnow) {
  TestMatrix m(8, 16, Fp8Format::kE4M3, ScaleMode::kRow, 1);
  ASSERT_TRUE(m.Upload());
  DeviceBuffer<float> x(16), y(8);
  DeviceBuffer<uint8_t> ws(1 << 20);
  GemvProblem good;
  good.words = m.d_words.get();
  good.scales = m.d_scales.get();
  good.rows = 8;
  good.cols = 16;
  good.x = x.get();
  good.y = y.get();
  good.batch = 1;
  good.path = DefaultDecodePath(0);
  ASSERT_EQ(Gemv(good, ws.get(), 1 << 20, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto refused = [&](const GemvProblem& p, const char* what) {
    EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorInvalidValue) << what;
    EXPECT_EQ(GemvWorkspaceBytes(p, 0), 0) << what;
    EXPECT_EQ(ChosenGemvKernel(p, 0), GemvKernel::kAuto) << what;
  };
  GemvProblem p = good;
  p.format = static_cast<Fp8Format>(9);
  refused(p, "format 9");
  p = good;
  p.path = static_cast<DecodePath>(9);
  refused(p, "decode path 9");
  p = good;
  p.kernel = static_cast<GemvKernel>(9);
  refused(p, "kernel 9");
  for (ScaleMode mode : {ScaleMode::kBlock128x128, static_cast<ScaleMode>(0), static_cast<ScaleMode>(77)}) {
    p = good;
    p.scale_mode = mode;
    refused(p, ScaleModeName(mode));
  }
}

// The dispatcher's choice, and a forced kernel the device can't run.
TEST(GpuGemv, KernelChoice) {
  TestMatrix m(256, 1024, Fp8Format::kE4M3, ScaleMode::kRow, 3);
  ASSERT_TRUE(m.Upload());
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, device), cudaSuccess);
  const bool hopper = prop.major == 9 && prop.minor == 0;
  DeviceBuffer<float> x(1024 * 64), y(256 * 64);
  GemvProblem p;
  p.words = m.d_words.get();
  p.scales = m.d_scales.get();
  p.rows = 256;
  p.cols = 1024;
  p.x = x.get();
  p.y = y.get();
  for (int64_t batch : {1, 16, 64}) {
    p.batch = batch;
    p.kernel = GemvKernel::kAuto;
    // Before its first call a shape gets the static choice.
    EXPECT_EQ(ChosenGemvKernel(p, device), hopper ? GemvKernel::kWgmma : GemvKernel::kMma);
    p.kernel = GemvKernel::kMma;
    EXPECT_EQ(ChosenGemvKernel(p, device), GemvKernel::kMma);
    p.kernel = GemvKernel::kWgmma;
    EXPECT_EQ(ChosenGemvKernel(p, device), hopper ? GemvKernel::kWgmma : GemvKernel::kAuto);
  }
  if (!hopper) {
    DeviceBuffer<uint8_t> ws(1 << 20);
    EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorNotSupported);
  }
  for (GemvKernel k :
       {GemvKernel::kAuto, GemvKernel::kMma, GemvKernel::kWgmma, GemvKernel::kCublasLt}) {
    GemvKernel parsed = GemvKernel::kAuto;
    EXPECT_TRUE(ParseGemvKernel(GemvKernelName(k), &parsed));
    EXPECT_EQ(parsed, k);
  }
  GemvKernel parsed = GemvKernel::kMma;
  EXPECT_FALSE(ParseGemvKernel("tensor", &parsed));
  EXPECT_FALSE(ParseGemvKernel("cuBLASLt", &parsed));
  EXPECT_EQ(parsed, GemvKernel::kMma);
  EXPECT_STREQ(GemvKernelName(GemvKernel::kCublasLt), "cublaslt");
}

// ---------------------------------------------------------------- cuBLASLt

// Whether this device has cuBLASLt's FP8 GEMM (sm_89 and later).
bool HasFp8Lt() {
  int device = 0;
  cudaDeviceProp prop{};
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaGetDeviceProperties(&prop, device) == cudaSuccess &&
         prop.major * 10 + prop.minor >= 89;
}

Variant Forced(GemvKernel k) {
  int device = 0;
  cudaGetDevice(&device);
  return {DefaultDecodePath(device), k};
}

// The weight and activation formats cuBLASLt's FP8 GEMM takes (all but
// E5M2 x E5M2).
struct Fp8Pair {
  Fp8Format w;
  DType x;
};
constexpr Fp8Pair kLtPairs[] = {{Fp8Format::kE4M3, DType::kE4M3},
                                {Fp8Format::kE4M3, DType::kE5M2},
                                {Fp8Format::kE5M2, DType::kE4M3}};

// Forced cuBLASLt against the FP64 reference, within W8A8's bound (LtBound):
// columns multiples of 16, TENSOR/ROW/NONE, batches 1, 3, 16, 64 (3
// is no multiple of 16, so it may take the padded route), every output
// dtype. Rows that are multiples of 16 must run; 77 rows (F32 results 308
// bytes apart) may have no algorithm, and then forcing is
// cudaErrorNotSupported. On a device without cuBLASLt's FP8 GEMM every call
// is cudaErrorNotSupported.
TEST(GpuGemvCublasLt, ForcedMatchesReference) {
  const bool lt = HasFp8Lt();
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  const Shape shapes[] = {{64, 256, 64}, {80, 1024, 64}, {1024, 2048, 16}, {77, 1024, 64}};
  const DType ys[] = {DType::kF32, DType::kF16, DType::kBF16};
  const int64_t batches[] = {1, 3, 16, 64};
  const Variant v = Forced(GemvKernel::kCublasLt);
  double worst[3] = {0, 0, 0};
  int cases = 0;
  uint32_t seed = 500;
  for (const Shape& s : shapes) {
    for (const Fp8Pair& pair : kLtPairs) {
      for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow}) {
        TestMatrix m(s.rows, s.cols, pair.w, mode, seed++);
        ASSERT_TRUE(m.Upload());
        for (int64_t batch : batches) {
          if (batch > s.max_batch) continue;
          const int yi = cases++ % 3;
          const DType y = ys[yi];
          const bool must_run = lt && s.rows % 16 == 0;
          const bool runs =
              ChosenGemvKernel(ProblemOf(m, pair.x, y, batch, v, nullptr, nullptr),
                               device) == GemvKernel::kCublasLt;
          EXPECT_TRUE(runs || !must_run) << Name(m, pair.x, y, batch, v);
          EXPECT_TRUE(!runs || lt) << Name(m, pair.x, y, batch, v);
          if (!runs) {
            DeviceBuffer<uint8_t> dx(size_t(batch * s.cols)), dy(size_t(batch * s.rows * 4)),
                ws(1 << 20);
            const GemvProblem p = ProblemOf(m, pair.x, y, batch, v, dx.get(), dy.get());
            EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorNotSupported)
                << Name(m, pair.x, y, batch, v);
            if (lt) std::printf("%s: no cuBLASLt algorithm\n", Name(m, pair.x, y, batch, v).c_str());
            continue;
          }
          const RunResult r = RunGemv(m, pair.x, y, batch, v, seed++);
          ASSERT_EQ(r.err, cudaSuccess) << Name(m, pair.x, y, batch, v) << ": "
                                        << cudaGetErrorString(r.err);
          const Check c = Compare(m, r, batch);
          EXPECT_EQ(c.unwritten, 0) << Name(m, pair.x, y, batch, v);
          EXPECT_LE(c.rel, LtBound(y, c.rms))
              << Name(m, pair.x, y, batch, v) << ": worst element " << c.worst_got << " for "
              << c.worst_want << ", reference RMS " << c.rms;
          worst[yi] = std::max(worst[yi], c.rel);
        }
      }
    }
  }
  std::printf("cuBLASLt: %d cases; worst rel. L2 error F32 %.3g, F16 %.3g, BF16 %.3g\n", cases,
              worst[0], worst[1], worst[2]);
}

// Where the path is not available, forcing it is cudaErrorNotSupported
// (ChosenGemvKernel says kAuto), and kAuto runs plume's kernel, correctly.
TEST(GpuGemvCublasLt, UnavailableFallsBack) {
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  struct Case {
    int64_t rows, cols;
    Fp8Format w;
    ScaleMode mode;
    DType x;
    const char* why;
  };
  const Case cases[] = {
      {300, 1000, Fp8Format::kE4M3, ScaleMode::kRow, DType::kE4M3, "columns not a multiple of 16"},
      {128, 512, Fp8Format::kE5M2, ScaleMode::kTensor, DType::kE5M2, "E5M2 x E5M2"},
      {128, 512, Fp8Format::kE4M3, ScaleMode::kBlock128, DType::kE4M3, "BLOCK128 scales"},
      {128, 512, Fp8Format::kE4M3, ScaleMode::kRow, DType::kF16, "F16 activations"},
  };
  uint32_t seed = 900;
  for (const Case& k : cases) {
    TestMatrix m(k.rows, k.cols, k.w, k.mode, seed++);
    ASSERT_TRUE(m.Upload());
    DeviceBuffer<uint8_t> dx(size_t(4 * k.cols * 2)), dy(size_t(4 * k.rows * 4)), ws(1 << 20);
    GemvProblem p = ProblemOf(m, k.x, DType::kF32, 4, Forced(GemvKernel::kCublasLt), dx.get(),
                              dy.get());
    EXPECT_EQ(ChosenGemvKernel(p, device), GemvKernel::kAuto) << k.why;
    EXPECT_EQ(GemvWorkspaceBytes(p, device), 0) << k.why;
    EXPECT_EQ(Gemv(p, ws.get(), 1 << 20, nullptr), cudaErrorNotSupported) << k.why;
    p.kernel = GemvKernel::kAuto;
    const RunResult r = RunGemv(m, k.x, DType::kF32, 4, Forced(GemvKernel::kAuto), seed++);
    ASSERT_EQ(r.err, cudaSuccess) << k.why;
    const Check c = Compare(m, r, 4);
    EXPECT_EQ(c.unwritten, 0) << k.why;
    EXPECT_LE(c.rel, 1e-5) << k.why;
    const GemvKernel chosen = ChosenGemvKernel(p, device);
    EXPECT_TRUE(chosen == GemvKernel::kMma || chosen == GemvKernel::kWgmma)
        << k.why << ": " << GemvKernelName(chosen);
  }
}

// E4M3 NaN codes give NaN rows through cuBLASLt too (the tensor cores read
// them as NaN), the other rows finite; and through kAuto.
TEST(GpuGemvCublasLt, NanCodesGiveNanRows) {
  TestMatrix m(48, 320, Fp8Format::kE4M3, ScaleMode::kRow, 17);
  ASSERT_TRUE(PlantNans(m));
  std::vector<GemvKernel> kernels = {GemvKernel::kAuto};
  if (HasFp8Lt()) kernels.push_back(GemvKernel::kCublasLt);
  for (GemvKernel k : kernels) {
    for (DType y_dtype : {DType::kF32, DType::kBF16}) {
      const RunResult r = RunGemv(m, DType::kE4M3, y_dtype, 3, Forced(k), 5);
      ASSERT_EQ(r.err, cudaSuccess) << GemvKernelName(k);
      ExpectNanRows(m, r, 3, std::string(GemvKernelName(k)) + " y=" + DTypeName(y_dtype));
    }
  }
}

// kAuto with FP8 activations: right on the first call of a bucket (which
// measures plume's kernels and cuBLASLt where it may run) and on the next
// (the recorded choice), and the choice is reported as measured.
TEST(GpuGemvCublasLt, AutoIsRightForFp8Activations) {
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, device), cudaSuccess);
  const bool hopper = prop.major == 9 && prop.minor == 0;
  const bool lt = HasFp8Lt();
  uint32_t seed = 1300;
  for (const Fp8Pair& pair : kLtPairs) {
    for (ScaleMode mode : {ScaleMode::kTensor, ScaleMode::kRow}) {
      TestMatrix m(512, 2048, pair.w, mode, seed++);
      ASSERT_TRUE(m.Upload());
      for (int64_t batch : {1, 3, 16, 64}) {
        for (DType y : {DType::kF32, DType::kF16}) {
          const std::string name = Name(m, pair.x, y, batch, Forced(GemvKernel::kAuto));
          for (int call = 0; call < 2; ++call) {
            const RunResult r = RunGemv(m, pair.x, y, batch, Forced(GemvKernel::kAuto), seed++);
            ASSERT_EQ(r.err, cudaSuccess) << name << " call " << call;
            const Check c = Compare(m, r, batch);
            EXPECT_EQ(c.unwritten, 0) << name;
            // The dispatcher may keep cuBLASLt, whose bound is W8A8's.
            EXPECT_LE(c.rel, LtBound(y, c.rms)) << name << " call " << call;
          }
          const GemvProblem p = ProblemOf(m, pair.x, y, batch, Forced(GemvKernel::kAuto), nullptr, nullptr);
          bool measured = false;
          const GemvKernel k = ChosenGemvKernel(p, device, &measured);
          EXPECT_EQ(measured, lt || hopper) << name;
          EXPECT_TRUE(k == GemvKernel::kMma || (hopper && k == GemvKernel::kWgmma) ||
                      (lt && k == GemvKernel::kCublasLt))
              << name << ": " << GemvKernelName(k);
          std::printf("%s: auto chose %s\n", name.c_str(), GemvKernelName(k));
        }
      }
    }
  }
}

}  // namespace
}  // namespace plume::cuda
