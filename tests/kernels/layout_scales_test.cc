// Packing layout, ComputeScales / QuantizePack / Dequantize behaviour.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "plume/kernels/fp8.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"

namespace {

using namespace plume;

TEST(Layout, PackingAndCodeAt) {
  const int64_t rows = 3, cols = 21;  // padded to 32 codes = 8 words per row
  PackedLayout l{rows, cols};
  EXPECT_EQ(l.padded_cols(), 32);
  EXPECT_EQ(l.words_per_row(), 8);
  EXPECT_EQ(l.total_words(), 24);
  EXPECT_EQ(l.code_bytes(), 96);
  EXPECT_EQ(l.blocks_per_row(), 1);
  EXPECT_EQ((PackedLayout{1, 129}.blocks_per_row()), 2);
  EXPECT_EQ((PackedLayout{1, 16}.padded_cols()), 16);
  EXPECT_EQ((PackedLayout{1, 17}.padded_cols()), 32);
  EXPECT_EQ(NumScales(ScaleMode::kBlock128, 5, 300), 15);
  EXPECT_EQ(NumScales(ScaleMode::kRow, 5, 300), 5);
  EXPECT_EQ(NumScales(ScaleMode::kTensor, 5, 300), 1);
  EXPECT_EQ(NumScales(ScaleMode::kNone, 5, 300), 0);

  // Values whose E4M3 codes are distinct and non-zero: element (r, c) -> code 1 + r*cols + c (< 0x7E).
  std::vector<float> src(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) src[r * cols + c] = fp8::DecodeE4M3(static_cast<uint8_t>(1 + r * cols + c));
  std::vector<uint32_t> words(l.total_words(), 0xDEADBEEF);
  ref::QuantizeOptions o{Fp8Format::kE4M3, ScaleMode::kNone, true};
  ref::QuantizePack(src.data(), DType::kF32, rows, cols, o, words.data(), nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < l.padded_cols(); ++c) {
      const uint32_t w = words[r * l.words_per_row() + c / 4];
      const uint8_t byte = static_cast<uint8_t>(w >> (8 * (c % 4)));  // element 4j in bits 0-7
      const uint8_t want = c < cols ? static_cast<uint8_t>(1 + r * cols + c) : 0;  // padding is 0
      EXPECT_EQ(byte, want) << r << "," << c;
      EXPECT_EQ(CodeAt(words.data(), l, r, c), want);
    }
  }
  // Little-endian bytes in memory: code of element c of row r at byte r*padded + c.
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(words.data());
  EXPECT_EQ(bytes[1 * 32 + 5], 1 + 1 * cols + 5);
  EXPECT_EQ(words[0] & 0xFF, 1u);
  EXPECT_EQ(words[0] >> 24, 4u);
}

float Amax(const std::vector<float>& v, size_t b, size_t e) {
  float m = 0;
  for (size_t i = b; i < e; ++i)
    if (std::isfinite(v[i])) m = std::max(m, std::fabs(v[i]));
  return m;
}

TEST(Scales, EveryModeWithSpecialRows) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    const float mx = fp8::MaxValue(f);
    const int64_t rows = 6, cols = 300;  // 3 blocks, the last one partial
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float> src(rows * cols);
    for (float& v : src) v = nd(rng);
    for (int64_t c = 0; c < cols; ++c) src[1 * cols + c] = 0.0f;  // row 1: all zero
    src[2 * cols + 7] = 1e30f;                                      // row 2: one huge value
    src[3 * cols + 0] = inf;                                        // row 3: +-inf and NaN
    src[3 * cols + 200] = -inf;
    src[3 * cols + 250] = nan;
    for (int64_t c = 0; c < cols; ++c) src[4 * cols + c] = c % 2 ? nan : inf;  // row 4: no finite value
    for (int64_t c = 0; c < cols; ++c) src[5 * cols + c] = 1e-39f;             // row 5: tiny -> FLT_MIN clamp

    std::vector<float> s(rows * 3, -7.0f);
    ref::ComputeScales(src.data(), rows, cols, ScaleMode::kNone, f, s.data());
    EXPECT_EQ(s[0], -7.0f);  // NONE writes nothing

    ref::ComputeScales(src.data(), rows, cols, ScaleMode::kTensor, f, s.data());
    EXPECT_EQ(s[0], 1e30f / mx);
    EXPECT_EQ(s[1], -7.0f);

    ref::ComputeScales(src.data(), rows, cols, ScaleMode::kRow, f, s.data());
    EXPECT_EQ(s[0], Amax(src, 0, cols) / mx);
    EXPECT_EQ(s[1], 1.0f);
    EXPECT_EQ(s[2], 1e30f / mx);
    EXPECT_EQ(s[3], Amax(src, 3 * cols, 4 * cols) / mx);
    EXPECT_EQ(s[4], 1.0f);
    EXPECT_EQ(s[5], FLT_MIN);

    ref::ComputeScales(src.data(), rows, cols, ScaleMode::kBlock128, f, s.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < 3; ++b) {
        const float a = Amax(src, r * cols + b * 128, r * cols + std::min<int64_t>(cols, (b + 1) * 128));
        const float want = a == 0 ? 1.0f : std::max(a / mx, FLT_MIN);
        EXPECT_EQ(s[r * 3 + b], want) << r << " " << b;
      }
    EXPECT_EQ(s[1 * 3 + 2], 1.0f);
    EXPECT_EQ(s[2 * 3 + 0], 1e30f / mx);

    // Quantization with ROW scales: documented special cases.
    for (bool sat : {true, false}) {
      PackedLayout l{rows, cols};
      std::vector<uint32_t> words(l.total_words());
      std::vector<float> rs(rows);
      ref::QuantizePack(src.data(), DType::kF32, rows, cols, {f, ScaleMode::kRow, sat}, words.data(), rs.data());
      std::vector<float> dq(rows * cols);
      ref::Dequantize({words.data(), rs.data(), rows, cols, f, ScaleMode::kRow}, dq.data());
      const uint8_t maxc = f == Fp8Format::kE4M3 ? 0x7E : 0x7B;
      const uint8_t nanc = f == Fp8Format::kE4M3 ? 0x7F : 0x7E;
      for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(CodeAt(words.data(), l, 1, c), 0);  // all-zero row
      EXPECT_EQ(CodeAt(words.data(), l, 2, 7), maxc);                                // huge value -> max
      EXPECT_EQ(dq[2 * cols + 7], 1e30f / mx * mx);
      int flushed = 0;  // the rest of row 2 underflows to +-0 next to the huge value
      for (int64_t c = 0; c < cols; ++c)
        if (c != 7 && (CodeAt(words.data(), l, 2, c) & 0x7F) == 0) ++flushed;
      EXPECT_EQ(flushed, cols - 1);
      if (sat) {
        EXPECT_EQ(CodeAt(words.data(), l, 3, 0), maxc);
        EXPECT_EQ(CodeAt(words.data(), l, 3, 200), maxc | 0x80);
      } else if (f == Fp8Format::kE5M2) {
        EXPECT_EQ(CodeAt(words.data(), l, 3, 0), 0x7C);
        EXPECT_EQ(CodeAt(words.data(), l, 3, 200), 0xFC);
      } else {
        EXPECT_EQ(CodeAt(words.data(), l, 3, 0), 0x7F);
        EXPECT_EQ(CodeAt(words.data(), l, 3, 200), 0xFF);
      }
      EXPECT_EQ(CodeAt(words.data(), l, 3, 250) & 0x7F, nanc);
      EXPECT_TRUE(std::isnan(dq[3 * cols + 250]));
      EXPECT_EQ(rs[4], 1.0f);
      EXPECT_EQ(CodeAt(words.data(), l, 4, 1) & 0x7F, nanc);
      EXPECT_EQ(CodeAt(words.data(), l, 4, 0), sat ? maxc : (f == Fp8Format::kE5M2 ? 0x7C : 0x7F));
      // Ordinary rows: dequantized values are close to the source.
      for (int64_t c = 0; c < cols; ++c) {
        const float v = src[c], d = dq[c];
        EXPECT_LE(std::fabs(v - d), std::fabs(v) * (f == Fp8Format::kE4M3 ? 1.0f / 16 : 1.0f / 8) + rs[0] * 0.01f);
      }
      // Code = Encode(x / scale) exactly.
      for (int64_t c = 0; c < cols; ++c)
        EXPECT_EQ(CodeAt(words.data(), l, 0, c), fp8::Encode(src[c] / rs[0], f, sat));
    }
  }
}

TEST(Quantize, F16AndBf16SourcesAndBlockScales) {
  const int64_t rows = 4, cols = 260;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0, 2);
  std::vector<float> src(rows * cols);
  for (float& v : src) v = nd(rng);
  for (DType t : {DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> half(src.size() * 2);
    ref::FromFloat(src.data(), static_cast<int64_t>(src.size()), t, half.data());
    std::vector<float> asf(src.size());
    ref::ToFloat(half.data(), t, 1.0f, static_cast<int64_t>(src.size()), asf.data());
    PackedLayout l{rows, cols};
    std::vector<uint32_t> w1(l.total_words()), w2(l.total_words());
    std::vector<float> s1(NumScales(ScaleMode::kBlock128, rows, cols)), s2(s1.size());
    ref::QuantizeOptions o{Fp8Format::kE5M2, ScaleMode::kBlock128, true};
    ref::QuantizePack(half.data(), t, rows, cols, o, w1.data(), s1.data());
    ref::QuantizePack(asf.data(), DType::kF32, rows, cols, o, w2.data(), s2.data());
    EXPECT_EQ(w1, w2);
    EXPECT_EQ(s1, s2);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        EXPECT_EQ(CodeAt(w1.data(), l, r, c), fp8::Encode(asf[r * cols + c] / s1[r * 3 + c / 128], o.format));
  }
}

// F32 rows may start anywhere in a network chunk: a source one byte past
// float alignment packs exactly as an aligned copy (the sanitizer build also
// checks that no misaligned float is read).
TEST(Quantize, MisalignedF32Source) {
  const int64_t rows = 3, cols = 300;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0, 3);
  std::vector<float> src(rows * cols);
  for (float& v : src) v = nd(rng);
  std::vector<uint8_t> raw(src.size() * 4 + 8);
  uint8_t* odd = raw.data() + 1;
  std::memcpy(odd, src.data(), src.size() * 4);
  PackedLayout l{rows, cols};
  for (ScaleMode m : {ScaleMode::kRow, ScaleMode::kBlock128}) {
    std::vector<uint32_t> w1(l.total_words()), w2(l.total_words());
    std::vector<float> s1(NumScales(m, rows, cols)), s2(s1.size());
    ref::QuantizeOptions o{Fp8Format::kE4M3, m, true};
    ASSERT_TRUE(ref::QuantizePack(odd, DType::kF32, rows, cols, o, w1.data(), s1.data()));
    ASSERT_TRUE(ref::QuantizePack(src.data(), DType::kF32, rows, cols, o, w2.data(), s2.data()));
    EXPECT_EQ(w1, w2);
    EXPECT_EQ(s1, s2);
    EXPECT_NE(CodeAt(w1.data(), l, 1, 17), 0);  // real codes, not an untouched buffer
  }
}

TEST(Names, DTypeAndScaleMode) {
  EXPECT_STREQ(DTypeName(DType::kF32), "f32");
  EXPECT_STREQ(DTypeName(DType::kF16), "f16");
  EXPECT_STREQ(DTypeName(DType::kBF16), "bf16");
  EXPECT_STREQ(DTypeName(DType::kE4M3), "e4m3");
  EXPECT_STREQ(DTypeName(DType::kE5M2), "e5m2");
  EXPECT_STREQ(ScaleModeName(ScaleMode::kNone), "none");
  EXPECT_STREQ(ScaleModeName(ScaleMode::kTensor), "tensor");
  EXPECT_STREQ(ScaleModeName(ScaleMode::kRow), "row");
  EXPECT_STREQ(ScaleModeName(ScaleMode::kBlock128), "block128");
}

}  // namespace
