#include "plume/io/content_hash.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"

namespace plume::io {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMixA = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMixB = 0x94D049BB133111EBull;

inline uint64_t Mix(uint64_t z) {
  z ^= z >> 30;
  z *= kMixA;
  z ^= z >> 27;
  z *= kMixB;
  z ^= z >> 31;
  return z;
}

inline uint64_t Load64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// The sum of m_i over n words at p, the first of which is word `first`.
uint64_t SumWords(const unsigned char* p, uint64_t n, uint64_t first) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // independent: the loop pipelines
  uint64_t pos = (first + 1) * kGolden;    // (i + 1) * G, wrapping
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4, p += 32, pos += 4 * kGolden) {
    s0 += Mix(Load64(p) + pos);
    s1 += Mix(Load64(p + 8) + pos + kGolden);
    s2 += Mix(Load64(p + 16) + pos + 2 * kGolden);
    s3 += Mix(Load64(p + 24) + pos + 3 * kGolden);
  }
  for (; i < n; ++i, p += 8, pos += kGolden) s0 += Mix(Load64(p) + pos);
  return s0 + s1 + s2 + s3;
}

// Inputs from this many words up are split across threads.
constexpr uint64_t kThreadWords = uint64_t{8} << 20;  // 64 MiB

}  // namespace

void ContentHasher::AddWords(const unsigned char* p, uint64_t n) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t parts = std::min<uint64_t>({hw, 8, std::max<uint64_t>(1, n / kThreadWords)});
  if (parts <= 1) {
    sum_ += SumWords(p, n, words_);
    words_ += n;
    return;
  }
  std::vector<uint64_t> sums(parts, 0);
  std::vector<std::thread> threads;
  const uint64_t per = n / parts;
  for (uint64_t t = 1; t < parts; ++t) {
    const uint64_t from = t * per, to = t + 1 == parts ? n : from + per;
    threads.emplace_back([&sums, t, p, from, to, base = words_] { sums[t] = SumWords(p + 8 * from, to - from, base + from); });
  }
  sums[0] = SumWords(p, per, words_);
  for (auto& th : threads) th.join();
  for (uint64_t s : sums) sum_ += s;
  words_ += n;
}

void ContentHasher::Update(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size();
  total_ += n;
  if (buffered_ > 0) {
    const size_t take = std::min(n, sizeof buf_ - buffered_);
    std::memcpy(buf_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < sizeof buf_) return;
    AddWords(buf_, 1);
    buffered_ = 0;
  }
  AddWords(p, n / 8);
  p += n / 8 * 8;
  n %= 8;
  if (n > 0) {
    std::memcpy(buf_, p, n);
    buffered_ = n;
  }
}

void ContentHasher::Field(std::string_view bytes) {
  Field(static_cast<int64_t>(bytes.size()));
  Update(bytes);
  static constexpr char kZeros[8] = {};
  Update(std::string_view(kZeros, (8 - bytes.size() % 8) % 8));
}

namespace {

// The sum of m_i over the whole words of src's bytes [from, to) (to - from a
// multiple of 8), the first of which is word `first`, read a chunk at a time.
absl::Status SumSource(const ByteSource& src, uint64_t from, uint64_t to, uint64_t first, uint64_t* sum) {
  constexpr uint64_t kChunk = uint64_t{4} << 20;
  std::string buf(static_cast<size_t>(std::min(kChunk, to - from)), '\0');
  for (uint64_t off = from; off < to; off += kChunk) {
    const uint64_t n = std::min(kChunk, to - off);
    if (absl::Status s = src.Read(off, n, buf.data()); !s.ok()) return s;
    *sum += SumWords(reinterpret_cast<const unsigned char*>(buf.data()), n / 8, first + (off - from) / 8);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ContentHasher::Field(const ByteSource& src) {
  const uint64_t n = src.size();
  Field(static_cast<int64_t>(n));
  static constexpr char kZeros[8] = {};
  if (std::optional<std::string_view> mem = src.memory()) {
    Update(*mem);
    Update(std::string_view(kZeros, (8 - n % 8) % 8));
    return absl::OkStatus();
  }
  // Whole words from the file, in parts read side by side when it is
  // large; the field starts on a word (Field(n) above is one).
  const uint64_t whole = n / 8 * 8;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t parts = std::min<uint64_t>({hw, 8, std::max<uint64_t>(1, whole / (8 * kThreadWords))});
  std::vector<uint64_t> sums(parts, 0);
  std::vector<absl::Status> status(parts);
  const uint64_t per = whole / parts / 8 * 8;
  auto run = [&](uint64_t t) {
    const uint64_t from = t * per, to = t + 1 == parts ? whole : from + per;
    status[t] = SumSource(src, from, to, words_ + from / 8, &sums[t]);
  };
  std::vector<std::thread> threads;
  for (uint64_t t = 1; t < parts; ++t) threads.emplace_back(run, t);
  run(0);
  for (auto& th : threads) th.join();
  for (const absl::Status& st : status) {
    if (!st.ok()) return st;
  }
  for (uint64_t v : sums) sum_ += v;
  words_ += whole / 8;
  total_ += whole;
  // The partial last word, and the padding.
  char tail[8] = {};
  if (absl::Status st = src.Read(whole, n - whole, tail); !st.ok()) return st;
  Update(std::string_view(tail, static_cast<size_t>(n - whole)));
  Update(std::string_view(kZeros, (8 - n % 8) % 8));
  return absl::OkStatus();
}

void ContentHasher::Field(int64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
  Update(std::string_view(reinterpret_cast<const char*>(b), 8));
}

uint64_t ContentHasher::Digest() const {
  uint64_t s = sum_;
  if (buffered_ > 0) {  // the last word, zero-padded; L tells paddings apart
    unsigned char tail[8] = {};
    std::memcpy(tail, buf_, buffered_);
    s += SumWords(tail, 1, words_);
  }
  return Mix(s + Mix(total_ ^ kMixA));
}

std::string ContentHasher::Label() const { return absl::StrFormat("%s%016x", kContentHashPrefix, Digest()); }

std::string FloatContentHash(const std::vector<int64_t>& shape, std::string_view data, const HashOptions& o) {
  ContentHasher h;
  h.Field("plume float v1");
  h.Field(static_cast<int64_t>(shape.size()));
  for (int64_t d : shape) h.Field(d);
  h.Field(int64_t{o.source_dtype});
  h.Field(int64_t{o.format});
  h.Field(int64_t{o.scale_mode});
  h.Field(int64_t{o.non_saturating});
  h.Field(data);
  return h.Label();
}

absl::StatusOr<std::string> Fp8CodesContentHash(int64_t rows, int64_t cols, int format, int scale_mode,
                                                bool non_saturating, const ByteSource& codes,
                                                std::string_view scales) {
  ContentHasher h;
  h.Field("plume fp8 pre-packed v1");
  h.Field(rows);
  h.Field(cols);
  h.Field(int64_t{format});
  h.Field(int64_t{scale_mode});
  h.Field(int64_t{non_saturating});
  if (absl::Status s = h.Field(codes); !s.ok()) return s;
  h.Field(scales);
  return h.Label();
}

}  // namespace plume::io
