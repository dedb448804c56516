// Validators at the edges of their arithmetic: response sizes checked before
// any work (the 2^32 boundary among them), and byte counts of uploads that
// would overflow 64 bits once the limits are raised.
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/core/limits.h"
#include "server/core/validation.h"

namespace plume::core {
namespace {

using Code = absl::StatusCode;

// A Gemv call of `batch` vectors of `cols` F32 values (zeros), with the
// bytes it views.
struct GemvOf {
  GemvOf(int64_t batch, int64_t cols, DType out = DType::kF32)
      : shape{batch, cols}, data(static_cast<size_t>(batch * cols * 4), '\0') {
    call.matrix = "m";
    call.input = {static_cast<int>(DType::kF32), shape, data};
    call.output_dtype = static_cast<int>(out);
  }
  operator const GemvCall&() const { return call; }  // NOLINT: a call where one is expected
  int64_t shape[2];
  std::string data;
  GemvCall call;
};

MatrixShape ShapeOf(int64_t rows, int64_t cols) {
  MatrixShape s;
  s.rows = rows;
  s.cols = cols;
  return s;
}

TEST(ValidateResponseBytes, ComparesPayloadAndFramingWithTheLimit) {
  Limits limits;
  limits.max_response_bytes = 1 << 20;
  EXPECT_TRUE(ValidateResponseBytes((1 << 20) - kResponseOverheadBytes, limits, "r").ok());
  const absl::Status s = ValidateResponseBytes((1 << 20) - kResponseOverheadBytes + 1, limits, "r");
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_NE(s.message().find("1047553 bytes"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("1048576"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("--max_message_bytes"), std::string::npos) << s.message();
  EXPECT_EQ(ValidateResponseBytes(-1, limits, "r").code(), Code::kResourceExhausted);
  // No server limit: a message still holds at most 2 GiB - 1.
  limits.max_response_bytes = -1;
  EXPECT_TRUE(ValidateResponseBytes(kMaxResponseBytesLimit - kResponseOverheadBytes, limits, "r").ok());
  EXPECT_EQ(ValidateResponseBytes(kMaxResponseBytesLimit, limits, "r").code(),
            Code::kResourceExhausted);
}

TEST(ValidateGemv, ResponseOfExactly4GiBIsRefusedBeforeAnyWork) {
  Limits limits;
  limits.max_vectors_per_request = 4096;
  // 1024 vectors x 2^20 rows x 4 bytes = 2^32: a length that wraps to 0 in 32 bits.
  const MatrixShape shape = ShapeOf(int64_t{1} << 20, 4);
  for (int64_t limit : {int64_t{64} << 20, int64_t{-1}, int64_t{0}, int64_t{1} << 40}) {
    limits.max_response_bytes = limit;
    auto plan = ValidateGemv(GemvOf(1024, 4), shape, limits);
    ASSERT_EQ(plan.status().code(), Code::kResourceExhausted) << limit;
    EXPECT_NE(plan.status().message().find("4294967296 bytes"), std::string::npos)
        << plan.status().message();
  }
  // Just over and under 2^32, and 2^32 of F16 results (half the bytes, still too many).
  limits.max_response_bytes = -1;
  EXPECT_EQ(ValidateGemv(GemvOf(1025, 4), shape, limits).status().code(), Code::kResourceExhausted);
  EXPECT_EQ(ValidateGemv(GemvOf(1023, 4), shape, limits).status().code(), Code::kResourceExhausted);
  EXPECT_EQ(ValidateGemv(GemvOf(1024, 4, DType::kF16), shape, limits).status().code(),
            Code::kResourceExhausted);
}

TEST(ValidateGemv, ResponseAtTheMessageLimit) {
  Limits limits;
  limits.max_response_bytes = 64 << 20;
  // 256 x 1,048,576 rows x 4 bytes = 1 GiB: refused, naming both sizes.
  auto big = ValidateGemv(GemvOf(256, 8), ShapeOf(int64_t{1} << 20, 8), limits);
  ASSERT_EQ(big.status().code(), Code::kResourceExhausted);
  EXPECT_NE(big.status().message().find("1073741824 bytes"), std::string::npos) << big.status();
  EXPECT_NE(big.status().message().find("67108864"), std::string::npos) << big.status();
  // 16 x 1,048,512 rows: 64 MiB less 4 KiB fits; one more row of 16 vectors does not.
  const int64_t rows = ((int64_t{64} << 20) - kResponseOverheadBytes) / 64;
  EXPECT_TRUE(ValidateGemv(GemvOf(16, 8), ShapeOf(rows, 8), limits).ok());
  EXPECT_EQ(ValidateGemv(GemvOf(16, 8), ShapeOf(rows + 1, 8), limits).status().code(),
            Code::kResourceExhausted);
}

TEST(ValidateAttention, OutputCheckedAgainstTheMessageLimit) {
  Limits limits;
  limits.max_response_bytes = 1 << 20;
  KvShape shape;
  shape.kv_heads = 1;
  shape.head_dim = 128;
  const int64_t dims[] = {1, 8, 512, 128};  // 2 MiB of F32 output
  const std::string data(size_t{8} * 512 * 128 * 4, '\0');
  AttentionCall req;
  req.cache = "c";
  req.query = {static_cast<int>(DType::kF32), dims, data};
  auto plan = ValidateAttention(req, shape, 1024, limits);
  ASSERT_EQ(plan.status().code(), Code::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("2097152 bytes"), std::string::npos) << plan.status();
  limits.max_response_bytes = 4 << 20;
  EXPECT_TRUE(ValidateAttention(req, shape, 1024, limits).ok());
}

// Limits at their maximum, as `--max_rows=...` and friends may set them.
Limits MaxLimits() {
  Limits l;
  l.max_rows = l.max_cols = l.max_vectors_per_request = kMaxDimensionLimit;
  l.max_kv_heads = l.max_head_dim = l.max_kv_seq = l.max_attention_rows = kMaxDimensionLimit;
  l.max_upload_bytes = kMaxByteLimit;
  return l;
}

MatrixHeader HeaderOf(int64_t rows, int64_t cols, DType source, ScaleMode mode = ScaleMode::kRow) {
  MatrixHeader h;
  h.name = "m";
  h.rows = rows;
  h.cols = cols;
  h.source_dtype = static_cast<int>(source);
  h.scale_mode = static_cast<int>(mode);
  return h;
}

TEST(ValidateLimits, CapsEveryLimitAtWhatTheArithmeticHolds) {
  EXPECT_TRUE(ValidateLimits(Limits{}).ok());
  EXPECT_TRUE(ValidateLimits(MaxLimits()).ok());
  Limits l = MaxLimits();
  l.max_cols = kMaxDimensionLimit + 1;
  EXPECT_EQ(ValidateLimits(l).code(), Code::kInvalidArgument);
  l = Limits{};
  l.max_rows = 0;
  EXPECT_EQ(ValidateLimits(l).code(), Code::kInvalidArgument);
  l = Limits{};
  l.max_upload_bytes = INT64_MAX;
  EXPECT_EQ(ValidateLimits(l).code(), Code::kInvalidArgument);
}

TEST(ValidateHeader, PackedSizesThatOverflow64BitsAreRefused) {
  const Limits limits = MaxLimits();
  // rows x padded cols = 2^32 x 2^32 = 2^64: wrapped to 0 bytes before.
  auto a = ValidateHeader(HeaderOf(int64_t{1} << 32, 4294967281, DType::kE4M3), limits);
  EXPECT_EQ(a.status().code(), Code::kResourceExhausted) << a.status();
  // 2^20 x 2^44 = 2^64.
  auto b = ValidateHeader(HeaderOf(int64_t{1} << 20, int64_t{1} << 44, DType::kE4M3), limits);
  EXPECT_EQ(b.status().code(), Code::kResourceExhausted) << b.status();
  // The same through the F32 source size and BLOCK128 scales.
  auto c = ValidateHeader(HeaderOf(int64_t{1} << 32, int64_t{1} << 31, DType::kF32), limits);
  EXPECT_EQ(c.status().code(), Code::kResourceExhausted) << c.status();
  auto d = ValidateHeader(HeaderOf(int64_t{1} << 47, int64_t{1} << 47, DType::kE4M3,
                                   ScaleMode::kBlock128),
                          limits);
  EXPECT_EQ(d.status().code(), Code::kResourceExhausted) << d.status();
  // Large but representable: exact sizes.
  auto e = ValidateHeader(HeaderOf(int64_t{1} << 29, 4294967281, DType::kE4M3,
                                   ScaleMode::kBlock128),
                          limits);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->data_bytes, (int64_t{1} << 29) * 4294967296);
  EXPECT_EQ(e->scale_bytes, (int64_t{1} << 29) * (4294967296 / 128) * 4);
}

TEST(ValidateKvHeader, PageSizesThatOverflowAreRefused) {
  const Limits limits = MaxLimits();
  KvHeader h;
  h.name = "c";
  h.kv_heads = int64_t{1} << 20;
  h.head_dim = int64_t{1} << 40;
  h.seq = 1;
  h.source_dtype = static_cast<int>(DType::kF32);
  EXPECT_EQ(ValidateKvHeader(h, limits).status().code(), Code::kResourceExhausted);
  h.kv_heads = 1;
  h.head_dim = 16;
  h.seq = kMaxDimensionLimit;
  EXPECT_TRUE(ValidateKvHeader(h, limits).ok());
}

}  // namespace
}  // namespace plume::core
