#include "server/core/store_codec.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/core/crc32c.h"
#include "server/core/limits.h"
#include "server/core/validation.h"

namespace plume::core {

static_assert(std::endian::native == std::endian::little,
              "store files are little-endian and written from host memory as is");

namespace {

constexpr uint32_t kKvRecordMagic = 0x52564b50;  // "PKVR"
// Fields at fixed offsets (see the layout in store_codec.h).
constexpr size_t kCrcOffset = 12;
constexpr size_t kCrcFrom = 16;

template <typename T>
void Put(std::string* s, size_t off, T v) {
  std::memcpy(s->data() + off, &v, sizeof v);
}
template <typename T>
T Get(std::string_view s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof v);
  return v;
}

int64_t PaddedNameBytes(size_t n) { return static_cast<int64_t>((n + 15) / 16 * 16); }

bool ValidFormat(uint8_t v) { return v == 4 || v == 5; }
bool ValidScaleMode(uint8_t v) { return v >= 1 && v <= 5; }
bool ValidDType(uint8_t v) { return v >= 1 && v <= 5; }

absl::Status Corrupt(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("store file: ", what));
}

}  // namespace

int64_t MatrixFileWordsOffset(const StoredMatrixMeta& meta) {
  return kMatrixHeaderBytes + PaddedNameBytes(meta.name.size()) +
         PaddedNameBytes(meta.content_hash.size()) + meta.shape.num_scales() * 4;
}

std::string EncodeMatrixHeader(const StoredMatrixMeta& meta, const float* scales,
                               const uint32_t* words) {
  return EncodeMatrixHeaderWithWordsCrc(
      meta, scales, Crc32c(0, words, static_cast<size_t>(meta.shape.layout().total_words()) * 4));
}

std::string EncodeMatrixHeaderWithWordsCrc(const StoredMatrixMeta& meta, const float* scales,
                                           uint32_t words_crc) {
  return EncodeMatrixHeaderWithCrcs(
      meta, Crc32c(0, scales, static_cast<size_t>(meta.shape.num_scales()) * 4), words_crc);
}

std::string EncodeMatrixHeaderWithCrcs(const StoredMatrixMeta& meta, uint32_t scales_crc,
                                       uint32_t words_crc) {
  const MatrixShape& sh = meta.shape;
  const int64_t num_scales = sh.num_scales();
  const int64_t num_words = sh.layout().total_words();
  const int64_t name_bytes = PaddedNameBytes(meta.name.size());
  const int64_t hash_bytes = PaddedNameBytes(meta.content_hash.size());
  const int64_t head = kMatrixHeaderBytes + name_bytes + hash_bytes;
  std::string h(static_cast<size_t>(head), '\0');
  std::memcpy(h.data(), kStoreMagic, sizeof kStoreMagic);
  Put<uint32_t>(&h, 8, kMatrixFileVersion);
  Put<uint64_t>(&h, 16, static_cast<uint64_t>(head + num_scales * 4 + num_words * 4));
  Put<uint32_t>(&h, 24, static_cast<uint32_t>(RecordKind::kMatrix));
  Put<uint32_t>(&h, 28, static_cast<uint32_t>(meta.name.size()));
  Put<int64_t>(&h, 32, sh.rows);
  Put<int64_t>(&h, 40, sh.cols);
  h[48] = static_cast<char>(sh.format);
  h[49] = static_cast<char>(sh.scale_mode);
  h[50] = sh.saturate ? 1 : 0;
  h[51] = static_cast<char>(meta.source_dtype);
  h[52] = static_cast<char>(sh.placement);
  Put<int64_t>(&h, 56, meta.created_unix_ms);
  Put<uint64_t>(&h, 64, static_cast<uint64_t>(num_scales));
  Put<uint64_t>(&h, 72, static_cast<uint64_t>(num_words));
  Put<uint32_t>(&h, 80, static_cast<uint32_t>(meta.content_hash.size()));
  std::memcpy(h.data() + kMatrixHeaderBytes, meta.name.data(), meta.name.size());
  std::memcpy(h.data() + kMatrixHeaderBytes + name_bytes, meta.content_hash.data(),
              meta.content_hash.size());
  uint32_t crc = Crc32c(0, h.data() + kCrcFrom, h.size() - kCrcFrom);
  crc = Crc32cCombine(crc, scales_crc, static_cast<uint64_t>(num_scales) * 4);
  crc = Crc32cCombine(crc, words_crc, static_cast<uint64_t>(num_words) * 4);
  Put<uint32_t>(&h, kCrcOffset, crc);
  return h;
}

std::string EncodeMatrixFile(const StoredMatrixMeta& meta, const float* scales,
                             const uint32_t* words) {
  std::string f = EncodeMatrixHeader(meta, scales, words);
  f.append(reinterpret_cast<const char*>(scales), static_cast<size_t>(meta.shape.num_scales()) * 4);
  f.append(reinterpret_cast<const char*>(words),
           static_cast<size_t>(meta.shape.layout().total_words()) * 4);
  return f;
}

absl::StatusOr<StoredMatrix> DecodeMatrixFile(std::string_view b) {
  if (b.size() < static_cast<size_t>(kStoreHeaderBytes)) {
    return Corrupt(absl::StrCat("truncated: ", b.size(), " bytes, shorter than the header"));
  }
  if (std::memcmp(b.data(), kStoreMagic, sizeof kStoreMagic) != 0) return Corrupt("bad magic");
  const uint32_t version = Get<uint32_t>(b, 8);
  if (version != 1 && version != kMatrixFileVersion) {
    return Corrupt(absl::StrCat("unsupported version ", version));
  }
  const int64_t header_bytes = version == 1 ? kStoreHeaderBytes : kMatrixHeaderBytes;
  if (b.size() < static_cast<size_t>(header_bytes)) {
    return Corrupt(absl::StrCat("truncated: ", b.size(), " bytes, shorter than the header"));
  }
  if (const uint64_t size = Get<uint64_t>(b, 16); size != b.size()) {
    return Corrupt(absl::StrCat(size > b.size() ? "truncated" : "trailing bytes", ": header says ",
                                size, " bytes, file has ", b.size()));
  }
  if (Crc32c(0, b.data() + kCrcFrom, b.size() - kCrcFrom) != Get<uint32_t>(b, kCrcOffset)) {
    return Corrupt("checksum mismatch");
  }
  if (Get<uint32_t>(b, 24) != static_cast<uint32_t>(RecordKind::kMatrix)) {
    return Corrupt(absl::StrCat("not a matrix record (kind ", Get<uint32_t>(b, 24), ")"));
  }
  StoredMatrix m;
  const uint32_t name_len = Get<uint32_t>(b, 28);
  MatrixShape& sh = m.meta.shape;
  sh.rows = Get<int64_t>(b, 32);
  sh.cols = Get<int64_t>(b, 40);
  const auto fmt = static_cast<uint8_t>(b[48]), mode = static_cast<uint8_t>(b[49]),
             sat = static_cast<uint8_t>(b[50]), src = static_cast<uint8_t>(b[51]);
  const uint32_t placement = Get<uint32_t>(b, 52);  // 0 (AUTO) in files of older servers
  if (!ValidFormat(fmt) || !ValidScaleMode(mode) || sat > 1 || !ValidDType(src) ||
      placement > static_cast<uint32_t>(Placement::kReplicated)) {
    return Corrupt("bad format, scale mode, saturate, source dtype or placement byte");
  }
  sh.placement = static_cast<Placement>(placement);
  sh.format = static_cast<Fp8Format>(fmt);
  sh.scale_mode = static_cast<ScaleMode>(mode);
  sh.saturate = sat == 1;
  m.meta.source_dtype = static_cast<DType>(src);
  m.meta.created_unix_ms = Get<int64_t>(b, 56);
  const Limits limits;  // the largest shapes any server accepts
  if (sh.rows <= 0 || sh.cols <= 0 || sh.rows > limits.max_rows || sh.cols > limits.max_cols) {
    return Corrupt(absl::StrCat("bad shape ", sh.rows, "x", sh.cols));
  }
  if (name_len == 0 || name_len > static_cast<uint32_t>(limits.max_name_length)) {
    return Corrupt(absl::StrCat("bad name length ", name_len));
  }
  const int64_t name_bytes = PaddedNameBytes(name_len);
  const uint32_t hash_len = version == 1 ? 0 : Get<uint32_t>(b, 80);
  if (hash_len > static_cast<uint32_t>(kMaxContentHashBytes)) {
    return Corrupt(absl::StrCat("bad content hash length ", hash_len));
  }
  for (int64_t i = 84; i < header_bytes; ++i) {
    if (b[static_cast<size_t>(i)] != 0) return Corrupt("nonzero reserved header bytes");
  }
  const int64_t hash_bytes = PaddedNameBytes(hash_len);
  const int64_t num_scales = sh.num_scales();
  const int64_t num_words = sh.layout().total_words();
  if (Get<uint64_t>(b, 64) != static_cast<uint64_t>(num_scales) ||
      Get<uint64_t>(b, 72) != static_cast<uint64_t>(num_words)) {
    return Corrupt("scale or word count does not match the shape");
  }
  // rows, cols <= 2^20, so these products cannot overflow.
  const int64_t head = header_bytes + name_bytes + hash_bytes;
  if (static_cast<int64_t>(b.size()) != head + 4 * (num_scales + num_words)) {
    return Corrupt("payload size does not match the shape");
  }
  m.meta.name.assign(b.data() + header_bytes, name_len);
  if (absl::Status s = ValidateName(m.meta.name, limits); !s.ok()) {
    return Corrupt(absl::StrCat("bad name: ", s.message()));
  }
  for (int64_t i = header_bytes + name_len; i < header_bytes + name_bytes; ++i) {
    if (b[static_cast<size_t>(i)] != 0) return Corrupt("nonzero name padding");
  }
  m.meta.content_hash.assign(b.data() + header_bytes + name_bytes, hash_len);
  for (int64_t i = header_bytes + name_bytes + hash_len; i < head; ++i) {
    if (b[static_cast<size_t>(i)] != 0) return Corrupt("nonzero content hash padding");
  }
  const char* payload = b.data() + head;
  m.scales.resize(static_cast<size_t>(num_scales));
  m.words.resize(static_cast<size_t>(num_words));
  if (!m.scales.empty()) std::memcpy(m.scales.data(), payload, m.scales.size() * 4);  // NONE: no scales
  std::memcpy(m.words.data(), payload + m.scales.size() * 4, m.words.size() * 4);
  if (absl::Status s = ValidatePackedScales(m.scales.data(), num_scales); !s.ok()) {
    return Corrupt(s.message());
  }
  const PackedLayout l = sh.layout();
  for (int64_t r = 0; r < l.rows; ++r) {
    for (int64_t c = l.cols; c < l.padded_cols(); ++c) {
      if (CodeAt(m.words.data(), l, r, c) != 0) return Corrupt("nonzero padding code");
    }
  }
  return m;
}

// ------------------------------------------------------------ K/V files

std::string EncodeKvHeader(const StoredKvMeta& meta, const float* k_scales, const float* v_scales) {
  const KvShape& sh = meta.shape;
  const KvLayout l = sh.layout();
  const int64_t g = l.global_scales();
  const int64_t name_bytes = PaddedNameBytes(meta.name.size());
  std::string h(static_cast<size_t>(kStoreHeaderBytes + name_bytes + 8 * g), '\0');
  std::memcpy(h.data(), kKvStoreMagic, sizeof kKvStoreMagic);
  Put<uint32_t>(&h, 8, kStoreVersion);
  Put<uint64_t>(&h, 16, h.size());
  Put<uint32_t>(&h, 24, static_cast<uint32_t>(RecordKind::kKvCache));
  Put<uint32_t>(&h, 28, static_cast<uint32_t>(meta.name.size()));
  Put<int64_t>(&h, 32, sh.kv_heads);
  Put<int64_t>(&h, 40, sh.head_dim);
  h[48] = static_cast<char>(sh.format);
  h[49] = static_cast<char>(sh.scale_mode);
  h[50] = sh.saturate ? 1 : 0;
  h[51] = static_cast<char>(meta.source_dtype);
  Put<int64_t>(&h, 56, meta.created_unix_ms);
  Put<uint64_t>(&h, 64, static_cast<uint64_t>(l.page_bytes()));
  Put<uint64_t>(&h, 72, static_cast<uint64_t>(g));
  std::memcpy(h.data() + kStoreHeaderBytes, meta.name.data(), meta.name.size());
  if (g > 0) {
    std::memcpy(h.data() + kStoreHeaderBytes + name_bytes, k_scales, static_cast<size_t>(g) * 4);
    std::memcpy(h.data() + kStoreHeaderBytes + name_bytes + 4 * g, v_scales, static_cast<size_t>(g) * 4);
  }
  Put<uint32_t>(&h, kCrcOffset, Crc32c(0, h.data() + kCrcFrom, h.size() - kCrcFrom));
  return h;
}

std::string EncodeKvRecordHeader(const KvShape& shape, int64_t seq_after, int64_t first_page,
                                 int64_t num_pages, const uint8_t* pages) {
  const size_t page_bytes = static_cast<size_t>(shape.layout().page_bytes());
  std::string r(static_cast<size_t>(kKvRecordHeaderBytes), '\0');
  Put<uint32_t>(&r, 0, kKvRecordMagic);
  Put<uint64_t>(&r, 8, static_cast<uint64_t>(kKvRecordHeaderBytes) + static_cast<uint64_t>(num_pages) * page_bytes);
  Put<int64_t>(&r, 16, seq_after);
  Put<int64_t>(&r, 24, first_page);
  Put<int64_t>(&r, 32, num_pages);
  uint32_t crc = Crc32c(0, r.data() + 8, r.size() - 8);
  crc = Crc32c(crc, pages, static_cast<size_t>(num_pages) * page_bytes);
  Put<uint32_t>(&r, 4, crc);
  return r;
}

namespace {

absl::StatusOr<StoredKv> DecodeKvHeader(std::string_view b, int64_t* header_bytes) {
  if (b.size() < static_cast<size_t>(kStoreHeaderBytes)) {
    return Corrupt(absl::StrCat("truncated: ", b.size(), " bytes, shorter than the header"));
  }
  if (std::memcmp(b.data(), kKvStoreMagic, sizeof kKvStoreMagic) != 0) return Corrupt("bad magic");
  if (const uint32_t v = Get<uint32_t>(b, 8); v != kStoreVersion) {
    return Corrupt(absl::StrCat("unsupported version ", v));
  }
  const uint64_t hb = Get<uint64_t>(b, 16);
  if (hb < static_cast<uint64_t>(kStoreHeaderBytes) || hb > b.size()) {
    return Corrupt(absl::StrCat("truncated or bad header size ", hb, " in a file of ", b.size(), " bytes"));
  }
  if (Crc32c(0, b.data() + kCrcFrom, hb - kCrcFrom) != Get<uint32_t>(b, kCrcOffset)) {
    return Corrupt("header checksum mismatch");
  }
  if (Get<uint32_t>(b, 24) != static_cast<uint32_t>(RecordKind::kKvCache)) {
    return Corrupt(absl::StrCat("not a K/V cache record (kind ", Get<uint32_t>(b, 24), ")"));
  }
  StoredKv kv;
  KvShape& sh = kv.meta.shape;
  const uint32_t name_len = Get<uint32_t>(b, 28);
  sh.kv_heads = Get<int64_t>(b, 32);
  sh.head_dim = Get<int64_t>(b, 40);
  const auto fmt = static_cast<uint8_t>(b[48]), mode = static_cast<uint8_t>(b[49]),
             sat = static_cast<uint8_t>(b[50]), src = static_cast<uint8_t>(b[51]);
  if (!ValidFormat(fmt) || !ValidScaleMode(mode) || sat > 1 || !ValidDType(src) ||
      IsFp8(static_cast<DType>(src)) || Get<uint32_t>(b, 52) != 0) {
    return Corrupt("bad format, scale mode, saturate or source dtype byte");
  }
  sh.format = static_cast<Fp8Format>(fmt);
  sh.scale_mode = static_cast<KvScaleMode>(mode);
  sh.saturate = sat == 1;
  kv.meta.source_dtype = static_cast<DType>(src);
  kv.meta.created_unix_ms = Get<int64_t>(b, 56);
  const Limits limits;
  if (sh.kv_heads <= 0 || sh.head_dim <= 0 || sh.kv_heads > limits.max_kv_heads ||
      sh.head_dim > limits.max_head_dim) {
    return Corrupt(absl::StrCat("bad K/V shape: ", sh.kv_heads, " kv heads, head_dim ", sh.head_dim));
  }
  const KvLayout l = sh.layout();
  const int64_t g = l.global_scales();
  if (Get<uint64_t>(b, 64) != static_cast<uint64_t>(l.page_bytes()) ||
      Get<uint64_t>(b, 72) != static_cast<uint64_t>(g)) {
    return Corrupt("page size or scale count does not match the shape");
  }
  if (name_len == 0 || name_len > static_cast<uint32_t>(limits.max_name_length)) {
    return Corrupt(absl::StrCat("bad name length ", name_len));
  }
  const int64_t name_bytes = PaddedNameBytes(name_len);
  if (static_cast<int64_t>(hb) != kStoreHeaderBytes + name_bytes + 8 * g) {
    return Corrupt("header size does not match the name and scales");
  }
  kv.meta.name.assign(b.data() + kStoreHeaderBytes, name_len);
  if (absl::Status s = ValidateName(kv.meta.name, limits, "kv cache"); !s.ok()) {
    return Corrupt(absl::StrCat("bad name: ", s.message()));
  }
  for (int64_t i = kStoreHeaderBytes + name_len; i < kStoreHeaderBytes + name_bytes; ++i) {
    if (b[static_cast<size_t>(i)] != 0) return Corrupt("nonzero name padding");
  }
  kv.k_scales.resize(static_cast<size_t>(g));
  kv.v_scales.resize(static_cast<size_t>(g));
  if (g > 0) {
    std::memcpy(kv.k_scales.data(), b.data() + kStoreHeaderBytes + name_bytes, static_cast<size_t>(g) * 4);
    std::memcpy(kv.v_scales.data(), b.data() + kStoreHeaderBytes + name_bytes + 4 * g, static_cast<size_t>(g) * 4);
  }
  if (absl::Status s = ValidatePackedScales(kv.k_scales.data(), g); !s.ok()) return Corrupt(s.message());
  if (absl::Status s = ValidatePackedScales(kv.v_scales.data(), g); !s.ok()) return Corrupt(s.message());
  *header_bytes = static_cast<int64_t>(hb);
  return kv;
}

// Checks and applies one record at `at` (see the layout): "" when it was
// applied, else what is wrong with it.
std::string ApplyKvRecord(std::string_view b, int64_t at, StoredKv* kv, int64_t* record_bytes) {
  const int64_t left = static_cast<int64_t>(b.size()) - at;
  if (left < kKvRecordHeaderBytes) return absl::StrCat("a record header cut short after ", left, " bytes");
  const KvLayout l = kv->meta.shape.layout();
  const int64_t page_bytes = l.page_bytes();
  const uint64_t size = Get<uint64_t>(b, static_cast<size_t>(at) + 8);
  if (size > static_cast<uint64_t>(left)) {
    return absl::StrCat("a record of ", size, " bytes cut short after ", left);
  }
  const char* r = b.data() + at;
  if (Get<uint32_t>(b, static_cast<size_t>(at)) != kKvRecordMagic ||
      size < static_cast<uint64_t>(kKvRecordHeaderBytes)) {
    return "bad record magic or size";
  }
  if (Crc32c(0, r + 8, size - 8) != Get<uint32_t>(b, static_cast<size_t>(at) + 4)) {
    return "record checksum mismatch";
  }
  const int64_t seq_after = Get<int64_t>(b, static_cast<size_t>(at) + 16);
  const int64_t first = Get<int64_t>(b, static_cast<size_t>(at) + 24);
  const int64_t count = Get<int64_t>(b, static_cast<size_t>(at) + 32);
  // count * page_bytes <= size checks the page count before any product.
  if (seq_after <= kv->seq || first != kv->seq / kKvPageTokens || count < 1 ||
      count > static_cast<int64_t>(size) / page_bytes ||
      static_cast<int64_t>(size) != kKvRecordHeaderBytes + count * page_bytes ||
      first + count != KvLayout::pages_for(seq_after) || Get<uint64_t>(b, static_cast<size_t>(at) + 40) != 0) {
    return absl::StrCat("record does not follow on (seq ", kv->seq, " -> ", seq_after, ", pages ",
                        first, " + ", count, ")");
  }
  const char* pages = r + kKvRecordHeaderBytes;
  if (l.scale_mode == KvScaleMode::kTokenBlock) {
    for (int64_t p = 0; p < count; ++p) {
      float s[2 * 1024];  // 2 * max_kv_heads
      const int64_t n = l.page_scale_floats();
      std::memcpy(s, pages + p * page_bytes + 2 * l.codes_bytes(), static_cast<size_t>(n) * 4);
      if (absl::Status st = ValidatePackedScales(s, n); !st.ok()) {
        return absl::StrCat("page ", first + p, ": ", st.message());
      }
    }
  }
  kv->pages.resize(static_cast<size_t>((first + count) * page_bytes));
  std::memcpy(kv->pages.data() + first * page_bytes, pages, static_cast<size_t>(count * page_bytes));
  kv->seq = seq_after;
  *record_bytes = static_cast<int64_t>(size);
  return "";
}

// Whether the bad record at `at` can be an append that a crash cut short:
// it is the last thing in the file and either too short to hold its header,
// all zeros (a file system that grew the file before writing its blocks), or
// a header that is whole and fits the cache (the pages are what is missing or
// bad). A bad record with bytes after it, or with a header that contradicts
// itself, is corruption.
bool LooksTorn(std::string_view b, int64_t at, const StoredKv& kv) {
  const int64_t left = static_cast<int64_t>(b.size()) - at;
  if (left < kKvRecordHeaderBytes) return true;
  if (std::all_of(b.begin() + at, b.end(), [](char c) { return c == 0; })) return true;
  const int64_t page_bytes = kv.meta.shape.layout().page_bytes();
  const uint64_t size = Get<uint64_t>(b, static_cast<size_t>(at) + 8);
  const int64_t count = Get<int64_t>(b, static_cast<size_t>(at) + 32);
  return Get<uint32_t>(b, static_cast<size_t>(at)) == kKvRecordMagic &&
         size >= static_cast<uint64_t>(left) && count >= 1 && count <= (int64_t{1} << 40) / page_bytes &&
         size == static_cast<uint64_t>(kKvRecordHeaderBytes + count * page_bytes) &&
         Get<int64_t>(b, static_cast<size_t>(at) + 24) == kv.seq / kKvPageTokens;
}

}  // namespace

absl::StatusOr<StoredKv> DecodeKvFile(std::string_view b) {
  int64_t at = 0;
  auto kv = DecodeKvHeader(b, &at);
  if (!kv.ok()) return kv.status();
  for (int records = 0; at < static_cast<int64_t>(b.size()); ++records) {
    int64_t size = 0;
    const std::string why = ApplyKvRecord(b, at, &*kv, &size);
    if (why.empty()) {
      at += size;
      continue;
    }
    if (records == 0) return Corrupt(absl::StrCat("first record: ", why));
    if (!LooksTorn(b, at, *kv)) return Corrupt(absl::StrCat("record ", records, " at byte ", at, ": ", why));
    kv->torn_tail = absl::StrCat("record ", records, " at byte ", at, ": ", why);
    break;
  }
  if (kv->seq == 0) return Corrupt("no records");
  kv->valid_bytes = at;
  return kv;
}


}  // namespace plume::core
