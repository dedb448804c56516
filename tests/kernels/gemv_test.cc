// GemvF32 and the typed Gemv (the CPU backend's kernels) against the naive
// FP64 reference (naive::Gemv, which shares no code with them beyond the
// codec), on every ISA path this CPU supports; and the naive reference itself
// against FP64 on the Dequantize()d matrix.
//
// Bounds (relative L2 error over the whole output): 1e-5 for F32 outputs;
// outputs rounded to F16 get 1e-3 (half a unit in the last place is 2^-11 ~
// 4.9e-4 relative), BF16 outputs 8e-3 (2^-8 ~ 3.9e-3).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <atomic>
#include <vector>

#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"
#include "plume/reference/internal.h"
#include "plume/reference/naive.h"
#include "plume/reference/thread_pool.h"

namespace {

using namespace plume;
using ref::internal::Isa;

struct Quantized {
  PackedLayout l;
  std::vector<uint32_t> words;
  std::vector<float> scales;
  std::vector<float> deq;  // rows * cols
  Fp8Format f;
  ScaleMode m;
  MatrixView view() const { return {words.data(), scales.data(), l.rows, l.cols, f, m}; }
};

Quantized MakeMatrix(int64_t rows, int64_t cols, Fp8Format f, ScaleMode m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> mag(-3.0f, 3.0f);
  std::vector<float> src(rows * cols);
  // Rows of different magnitudes so that scales differ per row and block.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) src[r * cols + c] = nd(rng) * std::exp2(mag(rng) + (r % 5));
  Quantized q;
  q.l = {rows, cols};
  q.f = f;
  q.m = m;
  q.words.assign(q.l.total_words(), 0);
  q.scales.assign(std::max<int64_t>(1, NumScales(m, rows, cols)), 1.0f);
  ref::QuantizePack(src.data(), DType::kF32, rows, cols, {f, m, true}, q.words.data(), q.scales.data());
  q.deq.resize(rows * cols);
  ref::Dequantize(q.view(), q.deq.data());
  return q;
}

// The naive reference: y = W x in FP64 for F32 x ([batch][cols]).
std::vector<double> RefGemv(const Quantized& q, const std::vector<float>& x, int64_t batch) {
  std::vector<double> y(static_cast<size_t>(batch * q.l.rows), std::nan(""));
  EXPECT_TRUE(naive::Gemv({q.view(), {x.data(), DType::kF32, 1.0f, batch, nullptr, DType::kF32}}, y.data()));
  return y;
}

// FP64 W x on the Dequantize()d matrix: what the naive reference is checked against.
std::vector<double> DequantizedGemv(const Quantized& q, const std::vector<float>& x, int64_t batch) {
  const int64_t rows = q.l.rows, cols = q.l.cols;
  std::vector<double> y(batch * rows);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(q.deq[r * cols + c]) * x[b * cols + c];
      y[b * rows + r] = s;
    }
  return y;
}

double RelL2(const std::vector<float>& y, const std::vector<double>& ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (y[i] - ref[i]) * (y[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

std::vector<float> RandomX(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng);
  return x;
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{1, 1},   {1, 5},    {3, 1},    {7, 13},   {17, 33},   {16, 64},  {33, 127},
                         {5, 128}, {9, 129},  {20, 250}, {11, 256}, {64, 255},  {2, 300},  {300, 1000},
                         {13, 2055}};
const int64_t kBatches[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17};
const Fp8Format kFormats[] = {Fp8Format::kE4M3, Fp8Format::kE5M2};
// BLOCK128X128 runs as BLOCK128 with the band hint (MatrixView::uniform_bands).
const ScaleMode kModes[] = {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128,
                            ScaleMode::kBlock128x128};

std::string Name(Fp8Format f, ScaleMode m, Shape s) {
  return std::string(DTypeName(ToDType(f))) + "/" + ScaleModeName(m) + "/" + std::to_string(s.rows) + "x" +
         std::to_string(s.cols);
}

class GemvIsaTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!ref::internal::IsaSupported(GetParam()))
      GTEST_SKIP() << "this CPU lacks " << ref::internal::IsaName(GetParam());
  }
};

TEST_P(GemvIsaTest, MatchesFp64ReferenceAllFormatsModesShapesBatches) {
  const Isa isa = GetParam();
  ThreadPool pool(2);
  uint32_t seed = 100;
  for (Fp8Format f : kFormats)
    for (ScaleMode m : kModes)
      for (Shape s : kShapes) {
        const Quantized q = MakeMatrix(s.rows, s.cols, f, m, ++seed);
        const std::vector<float> x = RandomX(17 * s.cols, ++seed);
        const std::vector<double> yref = RefGemv(q, x, 17);  // batch b uses the first b vectors
        const bool big = s.rows * s.cols > 100000;
        for (int64_t batch : kBatches) {
          if (big && batch != 1 && batch != 8 && batch != 17) continue;
          std::vector<float> y(batch * s.rows + 3, std::numeric_limits<float>::quiet_NaN());
          ref::internal::GemvF32Isa(isa, q.view(), x.data(), batch, y.data(), &pool);
          for (int64_t i = 0; i < batch * s.rows; ++i)
            ASSERT_TRUE(std::isfinite(y[i])) << Name(f, m, s) << " batch " << batch << " element " << i;
          for (int i = 0; i < 3; ++i) ASSERT_TRUE(std::isnan(y[batch * s.rows + i]));  // nothing past the end
          EXPECT_LE(RelL2(y, yref, batch * s.rows), 1e-5) << Name(f, m, s) << " batch " << batch;
        }
      }
}

// The batcher groups whatever calls arrive together, so a vector's result
// must not depend on its batch: every row of a batched GEMV equals the same
// vector's GEMV alone, bit for bit. On avx512vbmi this crosses kernels
// (batches above kVbmiMaxBatch run the avx512 kernel).
TEST_P(GemvIsaTest, BatchedMatchesOneAtATimeBitForBit) {
  const Isa isa = GetParam();
  ThreadPool pool(2);
  uint32_t seed = 900;
  const Shape shapes[] = {{37, 64}, {19, 200}, {64, 1024}, {9, 2055}};
  const int64_t batches[] = {2, 3, 4, 8, 17, 64};
  for (Fp8Format f : kFormats)
    for (ScaleMode m : {ScaleMode::kRow, ScaleMode::kBlock128, ScaleMode::kBlock128x128})
      for (Shape s : shapes) {
        const Quantized q = MakeMatrix(s.rows, s.cols, f, m, ++seed);
        const std::vector<float> x = RandomX(64 * s.cols, ++seed);
        std::vector<float> alone(64 * s.rows);
        for (int64_t b = 0; b < 64; ++b)
          ref::internal::GemvF32Isa(isa, q.view(), x.data() + b * s.cols, 1, alone.data() + b * s.rows,
                                    &pool);
        for (int64_t batch : batches) {
          std::vector<float> y(batch * s.rows);
          ref::internal::GemvF32Isa(isa, q.view(), x.data(), batch, y.data(), &pool);
          ASSERT_EQ(0, std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)))
              << Name(f, m, s) << " batch " << batch;
        }
      }
}

// What the backends hold for a BLOCK128X128 upload: BLOCK128 with each
// band's scales on every row. With the hint (scaled activations per band) it
// gives the 128x128 mode's results bit for bit, and the FP64 product's
// within the same bound as without the hint (scaled sums per row and block).
TEST_P(GemvIsaTest, BlockScalesUniformInBandsHint) {
  const Isa isa = GetParam();
  ThreadPool pool(2);
  uint32_t seed = 1300;
  bool differs = false;  // the hint changes the arithmetic somewhere: it is taken
  for (Fp8Format f : kFormats)
    for (Shape s : {Shape{300, 1000}, Shape{128, 256}, Shape{129, 130}, Shape{17, 2055}}) {
      const Quantized q = MakeMatrix(s.rows, s.cols, f, ScaleMode::kBlock128x128, ++seed);
      Quantized e = q;
      e.m = ScaleMode::kBlock128;
      e.scales.assign(static_cast<size_t>(NumScales(ScaleMode::kBlock128, s.rows, s.cols)), 0.0f);
      ExpandBlockScales(s.rows, s.cols, q.scales.data(), e.scales.data());
      ASSERT_TRUE(ref::BlockScalesUniformInBands(e.view())) << Name(f, e.m, s);
      ASSERT_FALSE(ref::BlockScalesUniformInBands(q.view()));  // not BLOCK128
      const std::vector<float> x = RandomX(11 * s.cols, ++seed);
      const std::vector<double> yref = RefGemv(q, x, 11);
      for (int64_t batch : {1, 3, 8, 11}) {
        std::vector<float> direct(batch * s.rows), hinted(batch * s.rows), plain(batch * s.rows);
        MatrixView hint = e.view();
        hint.uniform_bands = true;
        ref::internal::GemvF32Isa(isa, q.view(), x.data(), batch, direct.data(), &pool);
        ref::internal::GemvF32Isa(isa, hint, x.data(), batch, hinted.data(), &pool);
        ref::internal::GemvF32Isa(isa, e.view(), x.data(), batch, plain.data(), &pool);
        ASSERT_EQ(0, std::memcmp(direct.data(), hinted.data(), direct.size() * sizeof(float)))
            << Name(f, e.m, s) << " batch " << batch;
        // The bands are shared out over however many threads there are:
        // the same bits with one thread or sixteen.
        for (int n : {1, 16}) {
          ThreadPool other(n);
          std::vector<float> y(batch * s.rows);
          ref::internal::GemvF32Isa(isa, hint, x.data(), batch, y.data(), &other);
          ASSERT_EQ(0, std::memcmp(y.data(), hinted.data(), y.size() * sizeof(float)))
              << Name(f, e.m, s) << " batch " << batch << ", " << n << " threads";
        }
        EXPECT_LE(RelL2(hinted, yref, hinted.size()), 1e-5) << Name(f, e.m, s) << " batch " << batch;
        EXPECT_LE(RelL2(plain, yref, plain.size()), 1e-5) << Name(f, e.m, s) << " batch " << batch;
        differs = differs || std::memcmp(hinted.data(), plain.data(), plain.size() * sizeof(float)) != 0;
      }
      // One row of a band (not its first) differing in one block: no hint.
      if (s.rows > 1) {
        const int64_t r = std::min<int64_t>(s.rows - 1, 5), nb = PackedLayout{s.rows, s.cols}.blocks_per_row();
        e.scales[r * nb + nb - 1] *= 2.0f;
        EXPECT_FALSE(ref::BlockScalesUniformInBands(e.view())) << Name(f, e.m, s);
      }
    }
  EXPECT_TRUE(differs);
}

TEST_P(GemvIsaTest, EveryCodeDecodesExactly) {
  // Each row holds all non-NaN, finite codes in a rotated order; x is random.
  const Isa isa = GetParam();
  for (Fp8Format f : kFormats) {
    std::vector<uint8_t> finite;
    for (int c = 0; c < 256; ++c)
      if (std::isfinite(fp8::Decode(static_cast<uint8_t>(c), f))) finite.push_back(static_cast<uint8_t>(c));
    const int64_t rows = 9, cols = static_cast<int64_t>(finite.size());
    PackedLayout l{rows, cols};
    std::vector<uint32_t> words(l.total_words(), 0);
    uint8_t* bytes = reinterpret_cast<uint8_t*>(words.data());  // little-endian: byte = element
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) bytes[r * l.padded_cols() + c] = finite[(c + 7 * r) % cols];
    Quantized q{l, words, {1.0f}, std::vector<float>(rows * cols), f, ScaleMode::kNone};
    ref::Dequantize(q.view(), q.deq.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(q.deq[r * cols + c], fp8::Decode(CodeAt(words.data(), l, r, c), f));
    // One-hot x picks single weights: exact decode is visible directly (every
    // column, which also checks the VBMI kernel's permuted activation order).
    for (int64_t c = 0; c < cols; ++c) {
      std::vector<float> x(cols, 0.0f);
      x[c] = 1.0f;
      std::vector<float> y(rows, std::numeric_limits<float>::quiet_NaN());
      ref::internal::GemvF32Isa(isa, q.view(), x.data(), 1, y.data(), nullptr);
      for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(y[r], q.deq[r * cols + c]) << r << " " << c;
    }
    const std::vector<float> x = RandomX(3 * cols, 77);
    const std::vector<double> yref = RefGemv(q, x, 3);
    std::vector<float> y(3 * rows, std::numeric_limits<float>::quiet_NaN());
    ref::internal::GemvF32Isa(isa, q.view(), x.data(), 3, y.data(), nullptr);
    EXPECT_LE(RelL2(y, yref, y.size()), 1e-5);
  }
}

TEST_P(GemvIsaTest, NanAndInfCodesPropagate) {
  const Isa isa = GetParam();
  for (Fp8Format f : kFormats) {
    const int64_t rows = 12, cols = 200;  // padded 208: 64-code steps, then a 16-code tail
    Quantized q = MakeMatrix(rows, cols, f, ScaleMode::kRow, 9);
    uint8_t* bytes = reinterpret_cast<uint8_t*>(q.words.data());
    const int64_t pc = q.l.padded_cols();
    const uint8_t nan = f == Fp8Format::kE4M3 ? 0x7F : 0x7E;
    bytes[3 * pc + 5] = nan;
    bytes[4 * pc + 70] = nan | 0x80;
    bytes[5 * pc + 199] = nan;
    bytes[11 * pc + 130] = nan;
    if (f == Fp8Format::kE5M2) bytes[7 * pc + 64] = 0x7C;  // +inf
    for (int64_t batch : {1, 2, 8}) {
      const std::vector<float> x = RandomX(batch * cols, 3);
      std::vector<float> y(batch * rows, 0.0f);
      ref::internal::GemvF32Isa(isa, q.view(), x.data(), batch, y.data(), nullptr);
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < rows; ++r) {
          const float v = y[b * rows + r];
          if (r == 3 || r == 4 || r == 5 || r == 11) EXPECT_TRUE(std::isnan(v)) << r;
          else if (r == 7 && f == Fp8Format::kE5M2) EXPECT_TRUE(std::isinf(v)) << r;
          else EXPECT_TRUE(std::isfinite(v)) << r;
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, GemvIsaTest, ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512,
                                           Isa::kAvx512Vbmi),
                         [](const auto& info) { return std::string(ref::internal::IsaName(info.param)); });

TEST(Gemv, BestIsaIsSupportedAndNamed) {
  EXPECT_TRUE(ref::internal::IsaSupported(ref::internal::BestIsa()));
  EXPECT_TRUE(ref::internal::IsaSupported(Isa::kScalar));
  EXPECT_STREQ(ref::GemvIsa(), ref::internal::IsaName(ref::internal::BestIsa()));
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    EXPECT_STREQ(ref::GemvIsa(), __builtin_cpu_supports("avx512vbmi") ? "avx512vbmi" : "avx512");
#endif
}

// Converts floats to `t` (FP8: codes of x / x_scale) and back, as the typed Gemv sees them.
std::vector<uint8_t> Encode(const std::vector<float>& x, DType t, float x_scale) {
  std::vector<uint8_t> out(x.size() * DTypeSize(t));
  if (IsFp8(t)) {
    for (size_t i = 0; i < x.size(); ++i) out[i] = fp8::Encode(x[i] / x_scale, static_cast<Fp8Format>(t));
  } else {
    ref::FromFloat(x.data(), static_cast<int64_t>(x.size()), t, out.data());
  }
  return out;
}

TEST(Gemv, TypedAllDtypes) {
  const DType xts[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kE4M3, DType::kE5M2};
  const DType yts[] = {DType::kF32, DType::kF16, DType::kBF16};
  const Shape shapes[] = {{1, 1}, {7, 13}, {33, 127}, {9, 129}, {70, 300}};
  uint32_t seed = 500;
  for (Fp8Format f : kFormats)
    for (ScaleMode m : kModes)
      for (Shape s : shapes) {
        const Quantized q = MakeMatrix(s.rows, s.cols, f, m, ++seed);
        for (int64_t batch : {1, 3, 8, 9}) {
          const std::vector<float> x0 = RandomX(batch * s.cols, ++seed);
          for (DType xt : xts) {
            const float x_scale = IsFp8(xt) ? 0.0625f : 1.0f;
            const std::vector<uint8_t> xb = Encode(x0, xt, x_scale);
            std::vector<float> xf(x0.size());
            ref::ToFloat(xb.data(), xt, x_scale, static_cast<int64_t>(xf.size()), xf.data());
            const std::vector<double> yref = RefGemv(q, xf, batch);
            for (DType yt : yts) {
              const int64_t n = batch * s.rows;
              std::vector<uint8_t> yb(n * DTypeSize(yt) + 8, 0xFF);  // NaN in F32, F16 and BF16
              ref::Gemv({q.view(), {xb.data(), xt, x_scale, batch, yb.data(), yt}});
              std::vector<float> y(n);
              ref::ToFloat(yb.data(), yt, 1.0f, n, y.data());
              for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(y[i])) << i;
              for (int i = 0; i < 8; ++i) ASSERT_EQ(yb[n * DTypeSize(yt) + i], 0xFF);
              const double bound = yt == DType::kF32 ? 1e-5 : yt == DType::kF16 ? 1e-3 : 8e-3;
              EXPECT_LE(RelL2(y, yref, n), bound)
                  << Name(f, m, s) << " batch " << batch << " x " << DTypeName(xt) << " y " << DTypeName(yt);
              // The typed output is the F32 result rounded once.
              if (yt != DType::kF32) {
                std::vector<float> yf(n);
                ref::GemvF32(q.view(), xf.data(), batch, yf.data());
                for (int64_t i = 0; i < n; ++i) {
                  const float want = yt == DType::kF16 ? HalfBitsToFloat(FloatToHalfBits(yf[i]))
                                                       : Bf16BitsToFloat(FloatToBf16Bits(yf[i]));
                  ASSERT_EQ(y[i], want);
                }
              }
            }
          }
        }
      }
}

TEST(Gemv, ConcurrentCallersShareAPool) {
  ThreadPool pool(2);
  const Quantized q = MakeMatrix(257, 700, Fp8Format::kE4M3, ScaleMode::kBlock128, 42);
  const std::vector<float> x = RandomX(4 * 700, 43);
  std::vector<float> want(4 * 257);
  ref::GemvF32(q.view(), x.data(), 4, want.data(), &pool);
  std::vector<std::thread> ts;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        std::vector<float> y(4 * 257);
        ref::GemvF32(q.view(), x.data(), 4, y.data(), &pool);
        if (y != want) mismatches.fetch_add(1);  // deterministic: same chunks, same order
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Values outside their enums are refused, with nothing written, rather than
// run as another format, scale mode or dtype.
TEST(Gemv, RefusesValuesItDoesNotKnow) {
  const Quantized q = MakeMatrix(5, 40, Fp8Format::kE4M3, ScaleMode::kRow, 7);
  const std::vector<float> x = RandomX(2 * 40, 8);
  const GemvProblem good{q.view(), {x.data(), DType::kF32, 1.0f, 2, nullptr, DType::kF32}};
  std::vector<float> y(2 * 5, 0.0f);
  GemvProblem p = good;
  p.y = y.data();
  ASSERT_TRUE(ref::Gemv(p));
  ASSERT_NE(y[0], 0.0f);  // a baseline that writes
  auto refused = [&](GemvProblem bad, const char* what) {
    std::vector<float> out(2 * 5, -7.0f);
    bad.y = out.data();
    EXPECT_FALSE(ref::Gemv(bad)) << what;
    for (float v : out) ASSERT_EQ(v, -7.0f) << what;
  };
  p = good;
  p.format = static_cast<Fp8Format>(9);
  refused(p, "format 9");
  p = good;
  p.scale_mode = static_cast<ScaleMode>(77);
  refused(p, "scale mode 77");
  p = good;
  p.x_dtype = static_cast<DType>(0);
  refused(p, "x dtype 0");
  p = good;
  p.y_dtype = DType::kE4M3;
  refused(p, "FP8 results");
  p = good;
  p.y_dtype = static_cast<DType>(9);
  refused(p, "y dtype 9");

  std::vector<float> out(2 * 5, -7.0f);
  MatrixView w = q.view();
  w.format = static_cast<Fp8Format>(9);
  EXPECT_FALSE(ref::GemvF32(w, x.data(), 2, out.data()));
  EXPECT_FALSE(ref::internal::GemvF32Isa(static_cast<Isa>(9), q.view(), x.data(), 2, out.data(), nullptr));
  EXPECT_FALSE(ref::Dequantize(w, out.data()));
  for (float v : out) ASSERT_EQ(v, -7.0f);

  const std::vector<float> src = RandomX(5 * 40, 9);
  std::vector<uint32_t> words(q.words.size(), 0xAAAAAAAAu);
  std::vector<float> scales(5, -7.0f);
  EXPECT_FALSE(ref::QuantizePack(src.data(), DType::kE4M3, 5, 40, {Fp8Format::kE4M3, ScaleMode::kRow, true},
                                 words.data(), scales.data()));
  EXPECT_FALSE(ref::QuantizePack(src.data(), DType::kF32, 5, 40, {static_cast<Fp8Format>(9), ScaleMode::kRow, true},
                                 words.data(), scales.data()));
  EXPECT_FALSE(ref::QuantizePack(src.data(), DType::kF32, 5, 40, {Fp8Format::kE4M3, static_cast<ScaleMode>(0), true},
                                 words.data(), scales.data()));
  EXPECT_FALSE(ref::ComputeScales(src.data(), 5, 40, static_cast<ScaleMode>(0), Fp8Format::kE4M3, scales.data()));
  for (uint32_t v : words) ASSERT_EQ(v, 0xAAAAAAAAu);
  for (float v : scales) ASSERT_EQ(v, -7.0f);

  EXPECT_FALSE(ref::ToFloat(x.data(), static_cast<DType>(9), 1.0f, 4, out.data()));
  EXPECT_FALSE(ref::FromFloat(x.data(), 4, DType::kE5M2, out.data()));
  EXPECT_FALSE(ref::FromFloat(x.data(), 4, static_cast<DType>(9), out.data()));
  for (float v : out) ASSERT_EQ(v, -7.0f);
  EXPECT_STREQ(ref::internal::IsaName(static_cast<Isa>(9)), "unknown");
}

// Relative L2 distance of two FP64 results; infinity when `want` is all zero
// (a check that could not fail).
double RelL2d(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : INFINITY;
}

// The naive reference against FP64 on the dequantized matrix (code x scale
// rounded to FP32 there, so they agree to ~1e-7 relative), over every format
// and scale mode, BLOCK128X128 included, and with FP8 activations.
TEST(NaiveGemv, MatchesFp64OnTheDequantizedMatrix) {
  uint32_t seed = 500;
  for (Fp8Format f : kFormats)
    for (ScaleMode m : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128,
                        ScaleMode::kBlock128x128})
      for (Shape s : {Shape{7, 13}, Shape{33, 127}, Shape{130, 300}}) {
        const Quantized q = MakeMatrix(s.rows, s.cols, f, m, ++seed);
        const std::vector<float> x = RandomX(3 * s.cols, ++seed);
        const std::vector<double> want = DequantizedGemv(q, x, 3), got = RefGemv(q, x, 3);
        EXPECT_LE(RelL2d(got, want), 1e-6) << Name(f, m, s);
        // FP8 activations: codes times x_scale, widened exactly.
        const std::vector<uint8_t> xb = Encode(x, DType::kE4M3, 0.0625f);
        std::vector<float> xf(x.size());
        ref::ToFloat(xb.data(), DType::kE4M3, 0.0625f, static_cast<int64_t>(xf.size()), xf.data());
        std::vector<double> y8(want.size());
        ASSERT_TRUE(naive::Gemv({q.view(), {xb.data(), DType::kE4M3, 0.0625f, 3, nullptr, DType::kF32}},
                                y8.data()));
        EXPECT_LE(RelL2d(y8, DequantizedGemv(q, xf, 3)), 1e-6) << Name(f, m, s) << " e4m3 x";
      }
  const Quantized q = MakeMatrix(4, 16, Fp8Format::kE4M3, ScaleMode::kRow, 1);
  const std::vector<float> x = RandomX(16, 2);
  std::vector<double> y(4, -7.0);
  MatrixView w = q.view();
  w.format = static_cast<Fp8Format>(9);
  EXPECT_FALSE(naive::Gemv({w, {x.data(), DType::kF32, 1.0f, 1, nullptr, DType::kF32}}, y.data()));
  EXPECT_FALSE(naive::Gemv({q.view(), {x.data(), static_cast<DType>(0), 1.0f, 1, nullptr, DType::kF32}},
                           y.data()));
  for (double v : y) EXPECT_EQ(v, -7.0);
}

}  // namespace
