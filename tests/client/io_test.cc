// plume_io: .npy / .safetensors round trips and malformed-file rejection.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "plume/io/array.h"
#include "plume/io/npy.h"
#include "plume/io/safetensors.h"
#include "plume/kernels/half.h"

namespace plume::io {
namespace {

namespace fs = std::filesystem;

Array RandomArray(ElemType t, std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  Array a;
  a.dtype = t;
  a.shape = std::move(shape);
  const int64_t n = a.NumElements();
  a.data.resize(static_cast<size_t>(n * ElemSize(t)));
  bool any_nonzero = false;
  for (int64_t i = 0; i < n; ++i) {
    float v = dist(rng);
    if (v == 0.0f) v = 0.5f;
    any_nonzero = true;
    if (t == ElemType::kF32) {
      std::memcpy(a.data.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = t == ElemType::kF16 ? plume::FloatToHalfBits(v) : plume::FloatToBf16Bits(v);
      std::memcpy(a.data.data() + 2 * i, &h, 2);
    }
  }
  EXPECT_TRUE(n == 0 || any_nonzero);
  return a;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("plume_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// A .npy image with a hand-written header dict and `data_bytes` bytes of data.
std::string NpyImage(const std::string& dict, size_t data_bytes, int major = 1) {
  std::string h = dict;
  const size_t fixed = major == 1 ? 10 : 12;
  while ((fixed + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const uint32_t len = static_cast<uint32_t>(h.size());
  for (size_t i = 0; i < fixed - 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += h;
  out.append(data_bytes, '\x3f');
  return out;
}

TEST(NpyTest, ReadNpyConvertingNarrowsFloat64) {
  TempDir dir;
  constexpr double kMax = std::numeric_limits<float>::max();
  // Specials first: overflow (counted), rounding down to FLT_MAX (not
  // counted), NaN and infinities (kept, not counted), underflow to 0.
  std::vector<double> v = {1e300, -1e300, kMax + 0x1p103, std::nextafter(kMax + 0x1p103, 0.0),
                           -kMax * (1 + 0x1p-30), std::nan(""), -INFINITY, INFINITY, 1e-50, 0.1};
  std::mt19937 rng(20250607);
  std::normal_distribution<double> dist(0.0, 3.0);
  const int64_t rows = 7, cols = 10001;  // more than one 65536-value block
  while (static_cast<int64_t>(v.size()) < rows * cols) v.push_back(dist(rng));
  std::string image =
      NpyImage("{'descr': '<f8', 'fortran_order': False, 'shape': (7, 10001), }", 0) +
      std::string(reinterpret_cast<const char*>(v.data()), v.size() * 8);
  const std::string path = dir.File("f64.npy");
  ASSERT_TRUE(WriteStringToFile(path, image).ok());

  NpyConversion conv;
  auto a = ReadNpyConverting(path, &conv);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(conv.from_f64);
  EXPECT_EQ(conv.overflowed, 3);
  EXPECT_EQ(a->dtype, ElemType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{rows, cols}));
  const std::vector<float> f = ToFloats(*a);
  ASSERT_EQ(f.size(), v.size());
  EXPECT_EQ(f[0], INFINITY);
  EXPECT_EQ(f[1], -INFINITY);
  EXPECT_EQ(f[2], INFINITY);
  EXPECT_EQ(f[3], std::numeric_limits<float>::max());
  EXPECT_EQ(f[4], -std::numeric_limits<float>::max());
  EXPECT_TRUE(std::isnan(f[5]));
  EXPECT_EQ(f[6], -INFINITY);
  EXPECT_EQ(f[7], INFINITY);
  EXPECT_EQ(f[8], 0.0f);
  EXPECT_EQ(f[9], 0.1f);
  for (size_t i = 10; i < v.size(); ++i) ASSERT_EQ(f[i], static_cast<float>(v[i])) << i;

  // Without conversion float64 is refused, saying how to save float32.
  auto plain = ReadNpy(path);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.status().message().find("float64"), std::string::npos) << plain.status();
  EXPECT_NE(plain.status().message().find("astype"), std::string::npos) << plain.status();
  // float32 files come back as they are, with no conversion noted.
  const Array b = RandomArray(ElemType::kF32, {3, 4}, 5);
  ASSERT_TRUE(WriteNpy(dir.File("f32.npy"), b).ok());
  NpyConversion none;
  auto c = ReadNpyConverting(dir.File("f32.npy"), &none);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(none.from_f64);
  EXPECT_EQ(c->data, b.data);
  // A truncated float64 file is an error, not a short array.
  image.resize(image.size() - 8);
  ASSERT_TRUE(WriteStringToFile(path, image).ok());
  EXPECT_FALSE(ReadNpyConverting(path, &conv).ok());
}

TEST(NpyTest, RoundTripF32AndF16) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{7}, {3, 5}, {2, 3, 4}, {1, 1}, {0, 4}, {}};
  uint32_t seed = 1;
  for (ElemType t : {ElemType::kF32, ElemType::kF16}) {
    for (const auto& shape : shapes) {
      const Array a = RandomArray(t, shape, seed++);
      const std::string path = dir.File("a.npy");
      ASSERT_TRUE(WriteNpy(path, a).ok());
      auto b = ReadNpy(path);
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(b->dtype, a.dtype);
      EXPECT_EQ(b->shape, a.shape);
      EXPECT_EQ(b->data, a.data);
      auto enc = EncodeNpy(a);
      ASSERT_TRUE(enc.ok());
      EXPECT_EQ((enc->size() - a.data.size()) % 64, 0u);  // data 64-byte aligned
      auto c = ParseNpy(*enc);
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(c->data, a.data);
    }
  }
}

TEST(NpyTest, ReadsVersion2And3AndNumpyStyleHeaders) {
  for (int major : {1, 2, 3}) {
    auto a = ParseNpy(NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, major));
    ASSERT_TRUE(a.ok()) << major << ": " << a.status();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  }
  // Double quotes, no trailing comma, odd spacing, Python 2 long suffix.
  auto b = ParseNpy(NpyImage("{\"shape\":(4L,),\"fortran_order\":False,\"descr\":\"<f2\"}", 8));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dtype, ElemType::kF16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{4}));
}

TEST(NpyTest, RejectsMalformedFiles) {
  struct Case {
    std::string name;
    std::string bytes;
    std::string needle;
  };
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  std::string bad_magic = NpyImage(ok_dict, 24);
  bad_magic[1] = 'X';
  std::string huge_len = NpyImage(ok_dict, 24);
  huge_len[8] = '\xff';
  huge_len[9] = '\xff';
  std::string v2_huge = NpyImage(ok_dict, 24, 2);
  v2_huge[11] = '\x7f';
  std::string bad_version = NpyImage(ok_dict, 24);
  bad_version[6] = 9;
  const std::vector<Case> cases = {
      {"empty", "", "magic"},
      {"bad magic", bad_magic, "magic"},
      {"truncated fixed part", std::string("\x93NUMPY\x01", 7), "magic"},
      {"bad version", bad_version, "version"},
      {"header past end", huge_len, "past the end"},
      {"v2 header past end", v2_huge, "past the end"},
      {"fortran", NpyImage("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24), "Fortran"},
      {"big endian", NpyImage("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24), "big-endian"},
      {"float64", NpyImage("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48), "<f8"},
      {"int32", NpyImage("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 24), "<i4"},
      {"object", NpyImage("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16), "|O"},
      {"short data", NpyImage(ok_dict, 23), "23 data bytes"},
      {"long data", NpyImage(ok_dict, 25), "holds 25"},
      {"negative dim", NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", 24), "integer"},
      {"overflow dim",
       NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3), }", 24),
       "too large"},
      {"product overflow",
       NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 8), }", 24),
       "larger than the file"},
      {"missing key", NpyImage("{'descr': '<f4', 'shape': (2, 3), }", 24), "needs"},
      {"unknown key", NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 'y'}", 24), "unknown key"},
      {"duplicate key", NpyImage("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,)}", 24), "duplicate"},
      {"unterminated dict", NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': (6,)", 24), "expected"},
      {"unterminated string", NpyImage("{'descr: <f4", 24), "unterminated"},
      {"shape not tuple", NpyImage("{'descr': '<f4', 'fortran_order': False, 'shape': 6}", 24), "unsupported value"},
      {"descr not string", NpyImage("{'descr': (4,), 'fortran_order': False, 'shape': (6,)}", 24), "must be a string"},
      {"not a dict", NpyImage("['descr']", 24), "expected '{'"},
      {"trailing junk", NpyImage(ok_dict + " junk", 24), "trailing"},
  };
  for (const auto& c : cases) {
    auto r = ParseNpy(c.bytes);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << r.status();
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << c.name << ": " << r.status();
  }
}

TEST(NpyTest, ReadNpyRejectsTruncatedFileAndMissingFile) {
  TempDir dir;
  const Array a = RandomArray(ElemType::kF32, {4, 4}, 7);
  auto enc = EncodeNpy(a);
  ASSERT_TRUE(enc.ok());
  for (size_t cut : {size_t{0}, size_t{5}, size_t{9}, size_t{40}, enc->size() - 1}) {
    const std::string path = dir.File("cut.npy");
    ASSERT_TRUE(WriteStringToFile(path, enc->substr(0, cut)).ok());
    EXPECT_FALSE(ReadNpy(path).ok()) << cut;
  }
  EXPECT_EQ(ReadNpy(dir.File("missing.npy")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(EncodeNpy(RandomArray(ElemType::kBF16, {2}, 3)).ok());
}

// Random byte flips and truncations of valid images: errors, never crashes.
TEST(NpyTest, MutatedImagesNeverCrash) {
  std::mt19937 rng(1234);
  const Array a = RandomArray(ElemType::kF32, {3, 5}, 11);
  const std::string good = *EncodeNpy(a);
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string m = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) m[rng() % 80] = static_cast<char>(rng());
    if (rng() % 4 == 0) m.resize(rng() % m.size());
    auto r = ParseNpy(m);
    if (r.ok()) {
      ++accepted;
      EXPECT_EQ(static_cast<int64_t>(r->data.size()), r->NumElements() * ElemSize(r->dtype));
    }
  }
  EXPECT_GT(accepted, 0);  // flips in the padding still parse
}

TEST(SafetensorsTest, RoundTrip) {
  TempDir dir;
  std::map<std::string, Array> tensors = {
      {"w.f32", RandomArray(ElemType::kF32, {5, 7}, 21)},
      {"w.f16", RandomArray(ElemType::kF16, {3, 9}, 22)},
      {"w.bf16", RandomArray(ElemType::kBF16, {4, 2}, 23)},
      {"empty", RandomArray(ElemType::kF32, {0, 3}, 24)},
  };
  const std::string path = dir.File("m.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& [name, a] : tensors) {
    auto b = f->Read(name);
    ASSERT_TRUE(b.ok()) << name << ": " << b.status();
    EXPECT_EQ(b->dtype, a.dtype) << name;
    EXPECT_EQ(b->shape, a.shape) << name;
    EXPECT_EQ(b->data, a.data) << name;
  }
  EXPECT_EQ(f->Read("nope").status().code(), absl::StatusCode::kNotFound);
  std::string bytes;
  ASSERT_TRUE(ReadFileToString(path, &bytes).ok());
  auto g = SafetensorsFile::FromBytes(bytes);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->Read("w.f16")->data, tensors["w.f16"].data);
}

std::string StImage(const std::string& json, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  out += json;
  out.append(data_bytes, '\x11');
  return out;
}

TEST(SafetensorsTest, MetadataIgnoredAndOtherDtypesListedButNotRead) {
  auto f = SafetensorsFile::FromBytes(StImage(
      R"({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},)"
      R"( "i": {"dtype": "I8", "shape": [4], "data_offsets": [16, 20]}})",
      20));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");
  EXPECT_TRUE(f->Read("a").ok());
  auto i = f->Read("i");
  EXPECT_EQ(i.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, RejectsMalformedFiles) {
  struct Case {
    std::string name;
    std::string bytes;
    std::string needle;
  };
  std::string huge = StImage("{}", 0);
  huge[7] = '\x01';
  const std::vector<Case> cases = {
      {"short", "abc", "8-byte"},
      {"header past end", huge, "past the end"},
      {"not json", StImage("{not json", 0), "not valid JSON"},
      {"not object", StImage("[1, 2]", 0), "not a JSON object"},
      {"entry not object", StImage(R"({"a": 3})", 0), "not an object"},
      {"no dtype", StImage(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4), "dtype"},
      {"unknown dtype", StImage(R"({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}})", 4), "unknown dtype"},
      {"shape not array", StImage(R"({"a": {"dtype": "F32", "shape": 3, "data_offsets": [0, 4]}})", 4), "shape"},
      {"negative dim", StImage(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4), "non-negative"},
      {"float dim", StImage(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4), "non-negative"},
      {"offsets past end", StImage(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4), "outside"},
      {"offsets reversed", StImage(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 4), "outside"},
      {"offsets arity", StImage(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4), "data_offsets"},
      {"size mismatch", StImage(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 8), "span"},
      {"huge shape",
       StImage(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", 4),
       "larger than the file"},
  };
  for (const auto& c : cases) {
    auto r = SafetensorsFile::FromBytes(c.bytes);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << r.status();
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << c.name << ": " << r.status();
  }
}

TEST(SafetensorsTest, MutatedImagesNeverCrash) {
  std::mt19937 rng(99);
  const std::string good = *EncodeSafetensors({{"x", RandomArray(ElemType::kF32, {3, 4}, 5)},
                                               {"y", RandomArray(ElemType::kF16, {6}, 6)}});
  for (int iter = 0; iter < 5000; ++iter) {
    std::string m = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) m[rng() % std::min<size_t>(m.size(), 140)] = static_cast<char>(rng());
    if (rng() % 4 == 0) m.resize(rng() % m.size());
    auto r = SafetensorsFile::FromBytes(m);
    if (r.ok()) {
      for (const auto& e : r->tensors()) (void)r->Read(e.name);
    }
  }
}

}  // namespace
}  // namespace plume::io
