#include "plume/io/npy.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace plume::io {

// Element bytes are read and written as the host holds them.
static_assert(std::endian::native == std::endian::little, ".npy data here is little-endian");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// Headers are tiny in practice; a bound keeps a hostile length from
// allocating gigabytes before the file size is even checked.
constexpr uint64_t kMaxHeaderLen = 1 << 20;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed .npy header: ", what));
}

// A value in the header dict: a string, a bool or a tuple of integers.
struct Value {
  enum Kind { kString, kBool, kTuple } kind = kString;
  std::string str;
  bool boolean = false;
  std::vector<int64_t> tuple;
};

// A recursive-descent parser for the Python literal numpy writes, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class DictParser {
 public:
  explicit DictParser(std::string_view s) : s_(s) {}

  absl::StatusOr<std::map<std::string, Value>> Parse() {
    std::map<std::string, Value> out;
    SkipSpace();
    if (!Eat('{')) return Bad("expected '{'");
    while (true) {
      SkipSpace();
      if (Eat('}')) break;
      auto key = ParseString();
      if (!key.ok()) return key.status();
      SkipSpace();
      if (!Eat(':')) return Bad("expected ':'");
      SkipSpace();
      auto v = ParseValue();
      if (!v.ok()) return v.status();
      if (!out.emplace(*key, std::move(*v)).second) return Bad(absl::StrCat("duplicate key '", *key, "'"));
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat('}')) break;
      return Bad("expected ',' or '}'");
    }
    SkipSpace();
    if (pos_ != s_.size()) return Bad("trailing characters after the dict");
    return out;
  }

 private:
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool Eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool EatWord(std::string_view w) {
    if (s_.substr(pos_, w.size()) == w) {
      pos_ += w.size();
      return true;
    }
    return false;
  }
  absl::StatusOr<std::string> ParseString() {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) return Bad("expected a string");
    const char q = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\') return Bad("escapes are not supported in strings");
      out.push_back(s_[pos_++]);
      if (out.size() > 256) return Bad("string too long");
    }
    if (!Eat(q)) return Bad("unterminated string");
    return out;
  }
  absl::StatusOr<int64_t> ParseInt() {
    int64_t v = 0;
    size_t digits = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const int d = s_[pos_++] - '0';
      if (v > (std::numeric_limits<int64_t>::max() - d) / 10) return Bad("dimension too large");
      v = v * 10 + d;
      ++digits;
    }
    if (digits == 0) return Bad("expected a non-negative integer");
    if (EatWord("L")) {}  // Python 2 longs
    return v;
  }
  absl::StatusOr<Value> ParseValue() {
    Value v;
    if (pos_ < s_.size() && (s_[pos_] == '\'' || s_[pos_] == '"')) {
      auto s = ParseString();
      if (!s.ok()) return s.status();
      v.kind = Value::kString;
      v.str = *std::move(s);
      return v;
    }
    if (EatWord("True")) {
      v.kind = Value::kBool;
      v.boolean = true;
      return v;
    }
    if (EatWord("False")) {
      v.kind = Value::kBool;
      return v;
    }
    if (Eat('(')) {
      v.kind = Value::kTuple;
      while (true) {
        SkipSpace();
        if (Eat(')')) break;
        auto d = ParseInt();
        if (!d.ok()) return d.status();
        v.tuple.push_back(*d);
        if (v.tuple.size() > 32) return Bad("too many dimensions");
        SkipSpace();
        if (Eat(',')) continue;
        SkipSpace();
        if (Eat(')')) break;
        return Bad("expected ',' or ')' in shape");
      }
      return v;
    }
    return Bad("unsupported value");
  }

  std::string_view s_;
  size_t pos_ = 0;
};

uint32_t LoadLe(const char* p, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

namespace {

// The element types a reader takes.
enum class Want { kFloat, kFloatOrF64, kU8 };

absl::StatusOr<NpyHeader> ParseHeader(std::string_view prefix, uint64_t file_size, Want want) {
  if (prefix.size() < kMagicLen + 2 || std::memcmp(prefix.data(), kMagic, kMagicLen) != 0) {
    return absl::InvalidArgumentError("not a .npy file (bad magic)");
  }
  NpyHeader h;
  h.major_version = static_cast<uint8_t>(prefix[6]);
  int len_bytes;
  if (h.major_version == 1) {
    len_bytes = 2;
  } else if (h.major_version == 2 || h.major_version == 3) {
    len_bytes = 4;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported .npy format version ", h.major_version, ".", static_cast<uint8_t>(prefix[7])));
  }
  const size_t fixed = kMagicLen + 2 + len_bytes;
  if (prefix.size() < fixed) return Bad("truncated before the header length");
  const uint64_t header_len = LoadLe(prefix.data() + kMagicLen + 2, len_bytes);
  if (header_len > kMaxHeaderLen || fixed + header_len > file_size) {
    return Bad("header length runs past the end of the file");
  }
  if (prefix.size() < fixed + header_len) return Bad("truncated header");
  const std::string_view dict = prefix.substr(fixed, header_len);
  auto parsed = DictParser(dict).Parse();
  if (!parsed.ok()) return parsed.status();
  const auto& m = *parsed;
  for (const auto& [k, v] : m) {
    if (k != "descr" && k != "fortran_order" && k != "shape") return Bad(absl::StrCat("unknown key '", k, "'"));
  }
  auto descr = m.find("descr");
  auto fortran = m.find("fortran_order");
  auto shape = m.find("shape");
  if (descr == m.end() || fortran == m.end() || shape == m.end()) {
    return Bad("needs 'descr', 'fortran_order' and 'shape'");
  }
  if (descr->second.kind != Value::kString) return Bad("'descr' must be a string");
  if (fortran->second.kind != Value::kBool) return Bad("'fortran_order' must be True or False");
  if (shape->second.kind != Value::kTuple) return Bad("'shape' must be a tuple");
  const std::string& d = descr->second.str;
  if (want == Want::kU8) {
    if (d != "|u1" && d != "<u1" && d != ">u1") {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported .npy dtype '", d, "': FP8 codes must be uint8 ('|u1')"));
    }
    h.uint8 = true;
  } else if (d == "<f4") {
    h.dtype = ElemType::kF32;
  } else if (d == "<f2") {
    h.dtype = ElemType::kF16;
  } else if (d == "<f8" && want == Want::kFloatOrF64) {
    h.dtype = ElemType::kF32;
    h.f64 = true;
  } else if (d == "<f8") {
    return absl::InvalidArgumentError(
        "unsupported .npy dtype '<f8' (float64): save float32 (numpy: a.astype(numpy.float32)) or float16; "
        "the plume CLI converts float64 itself");
  } else if (d == ">f4" || d == ">f2" || d == ">f8") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported .npy dtype '", d, "': big-endian arrays are not supported; "
                     "use float32 ('<f4') or float16 ('<f2')"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported .npy dtype '", d, "': only little-endian float32 ('<f4') and float16 ('<f2') are supported"));
  }
  if (fortran->second.boolean) {
    return absl::InvalidArgumentError(
        "Fortran-order .npy arrays are not supported; save a C-order array "
        "(numpy.ascontiguousarray)");
  }
  h.shape = shape->second.tuple;
  h.data_offset = static_cast<int64_t>(fixed + header_len);
  const uint64_t remaining = file_size - static_cast<uint64_t>(h.data_offset);
  auto bytes = CheckedNumBytes(h.shape, h.uint8 ? 1 : h.f64 ? 8 : ElemSize(h.dtype), remaining);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed .npy file: ", bytes.status().message(), " (", remaining, " data bytes)"));
  }
  if (static_cast<uint64_t>(*bytes) != remaining) {
    return absl::InvalidArgumentError(absl::StrCat("malformed .npy file: shape needs ", *bytes,
                                                   " data bytes but the file holds ", remaining));
  }
  h.data_bytes = *bytes;
  return h;
}

}  // namespace

absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view prefix, uint64_t file_size) {
  return ParseHeader(prefix, file_size, Want::kFloat);
}

absl::StatusOr<Array> ParseNpy(std::string_view bytes) {
  auto h = ParseNpyHeader(bytes, bytes.size());
  if (!h.ok()) return h.status();
  Array a;
  a.dtype = h->dtype;
  a.shape = h->shape;
  a.data.assign(bytes.substr(static_cast<size_t>(h->data_offset), static_cast<size_t>(h->data_bytes)));
  return a;
}

namespace {

// Reads the header of `path` (opened into `in`) and returns it.
absl::StatusOr<NpyHeader> ReadHeader(const std::string& path, std::ifstream& in, Want accept) {
  absl::StatusOr<uint64_t> size = OpenForRead(path, &in);
  if (!size.ok()) return size.status();
  const uint64_t file_size = *size;
  // Read the fixed part, then the header it announces, then the data.
  std::string prefix(static_cast<size_t>(std::min<uint64_t>(file_size, 12)), '\0');
  in.read(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  uint64_t want = prefix.size();
  if (prefix.size() >= 10 && std::memcmp(prefix.data(), kMagic, kMagicLen) == 0) {
    const int major = static_cast<uint8_t>(prefix[6]);
    const uint64_t len = major == 1 ? LoadLe(prefix.data() + 8, 2)
                         : prefix.size() >= 12 ? LoadLe(prefix.data() + 8, 4)
                                               : 0;
    want = std::min<uint64_t>(file_size, (major == 1 ? 10 : 12) + std::min<uint64_t>(len, kMaxHeaderLen));
  }
  if (want > prefix.size()) {
    const size_t old = prefix.size();
    prefix.resize(static_cast<size_t>(want));
    in.read(prefix.data() + old, static_cast<std::streamsize>(want - old));
  }
  if (!in) return absl::DataLossError(absl::StrCat("short read from ", path));
  auto h = ParseHeader(prefix, file_size, accept);
  if (!h.ok()) return absl::Status(h.status().code(), absl::StrCat(path, ": ", h.status().message()));
  return h;
}

}  // namespace

absl::StatusOr<Array> ReadNpy(const std::string& path) { return ReadNpyConverting(path, nullptr); }

namespace {

// `d` as the nearest float (ties to even), as IEEE conversion does, without
// the undefined behaviour of converting a finite double beyond float's range.
float NarrowToFloat(double d, int64_t* overflowed) {
  constexpr double kMax = std::numeric_limits<float>::max();
  // Half a unit in the last place above FLT_MAX: from there on, the nearest
  // float is infinity (FLT_MAX's mantissa is odd, so the tie goes up too).
  constexpr double kInfFrom = kMax + 0x1p103;
  if (std::isnan(d)) {
    return std::signbit(d) ? -std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::quiet_NaN();
  }
  if (std::isinf(d)) return static_cast<float>(d);
  if (std::fabs(d) >= kInfFrom) {
    ++*overflowed;
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  }
  if (std::fabs(d) > kMax) return d > 0 ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::max();
  return static_cast<float>(d);
}

}  // namespace

absl::StatusOr<Array> ReadNpyConverting(const std::string& path, NpyConversion* conversion) {
  std::ifstream in;
  auto h = ReadHeader(path, in, conversion != nullptr ? Want::kFloatOrF64 : Want::kFloat);
  if (!h.ok()) return h.status();
  if (h->f64) {
    conversion->from_f64 = true;
    Array a;
    a.dtype = ElemType::kF32;
    a.shape = h->shape;
    const int64_t n = h->data_bytes / 8;
    a.data.resize(static_cast<size_t>(n) * 4);
    in.seekg(h->data_offset);
    std::vector<double> block(static_cast<size_t>(std::min<int64_t>(n, 1 << 16)));
    for (int64_t done = 0; done < n;) {
      const int64_t m = std::min<int64_t>(n - done, static_cast<int64_t>(block.size()));
      if (!in.read(reinterpret_cast<char*>(block.data()), m * 8)) {
        return absl::DataLossError(absl::StrCat("short read from ", path));
      }
      for (int64_t i = 0; i < m; ++i) {
        const float f = NarrowToFloat(block[static_cast<size_t>(i)], &conversion->overflowed);
        std::memcpy(&a.data[static_cast<size_t>(done + i) * 4], &f, 4);
      }
      done += m;
    }
    return a;
  }
  Array a;
  a.dtype = h->dtype;
  a.shape = h->shape;
  a.data.resize(static_cast<size_t>(h->data_bytes));
  in.seekg(h->data_offset);
  if (h->data_bytes > 0 && !in.read(a.data.data(), h->data_bytes)) {
    return absl::DataLossError(absl::StrCat("short read from ", path));
  }
  return a;
}

absl::StatusOr<NpyBytes> ReadNpyU8(const std::string& path) {
  std::ifstream in;
  auto h = ReadHeader(path, in, Want::kU8);
  if (!h.ok()) return h.status();
  NpyBytes a;
  a.shape = h->shape;
  a.data.resize(static_cast<size_t>(h->data_bytes));
  in.seekg(h->data_offset);
  if (h->data_bytes > 0 && !in.read(a.data.data(), h->data_bytes)) {
    return absl::DataLossError(absl::StrCat("short read from ", path));
  }
  return a;
}

absl::StatusOr<std::string> EncodeNpy(const Array& a) {
  if (a.dtype == ElemType::kBF16) {
    return absl::InvalidArgumentError(".npy has no bfloat16 dtype; convert to float32 first");
  }
  auto bytes = CheckedNumBytes(a.shape, ElemSize(a.dtype), std::numeric_limits<int64_t>::max());
  if (!bytes.ok()) return bytes.status();
  if (static_cast<uint64_t>(*bytes) != a.data.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("array data holds ", a.data.size(), " bytes but the shape needs ", *bytes));
  }
  std::string dict = absl::StrCat("{'descr': '", a.dtype == ElemType::kF32 ? "<f4" : "<f2",
                                  "', 'fortran_order': False, 'shape': (");
  for (size_t i = 0; i < a.shape.size(); ++i) {
    absl::StrAppend(&dict, a.shape[i], a.shape.size() == 1 ? "," : (i + 1 < a.shape.size() ? ", " : ""));
  }
  absl::StrAppend(&dict, "), }");
  // Pad with spaces and a newline so the data starts 64-byte aligned.
  int major = 1;
  size_t fixed = 10;
  size_t total = fixed + dict.size() + 1;
  size_t padded = (total + 63) / 64 * 64;
  if (padded - fixed > 0xffff) {
    major = 2;
    fixed = 12;
    total = fixed + dict.size() + 1;
    padded = (total + 63) / 64 * 64;
  }
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  const uint32_t hlen = static_cast<uint32_t>(dict.size());
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  for (size_t i = 0; i < fixed - 8; ++i) out.push_back(static_cast<char>((hlen >> (8 * i)) & 0xff));
  out += dict;
  out += a.data;
  return out;
}

absl::Status WriteNpy(const std::string& path, const Array& a) {
  auto enc = EncodeNpy(a);
  if (!enc.ok()) return enc.status();
  return WriteStringToFile(path, *enc);
}

}  // namespace plume::io
