// The durable store: one file per matrix in a directory (--store_dir), so
// that an acknowledged upload survives a crash and is served again after a
// restart.
//
// - A write goes to a temp file, is fsynced, renamed over "<name>.pmx", and
//   the directory is fsynced: when SaveMatrix returns OK the matrix is on
//   disk, whole. A crash at any point leaves either the old state or the new
//   one (plus, at worst, a temp file that the next start removes).
// - Each file carries a header (magic, version, shape, format, scale mode,
//   saturation, counts) and a CRC-32C over everything after the checksum
//   field. On start every file is verified; a torn, truncated or corrupt one
//   is moved to quarantine/ and never served.
// - K/V caches (AttentionService) are stored as "<name>.pkv": a header and
//   an append-only log of page records, described below (LoadAllKv).
//
// File layout, little-endian:
//   0  char[8] magic "PLUMEMX\n"     8  u32 version (1)
//  12  u32 crc32c of bytes [16, end) 16  u64 file size
//  24  u32 kind (1 = matrix)         28  u32 name length
//  32  i64 rows                      40  i64 cols
//  48  u8 format, u8 scale mode, u8 saturate, u8 source dtype,
//      u32 placement asked for at upload (0 AUTO .. 3 REPLICATED; was zero)
//  56  i64 created (unix ms)         64  u64 number of scales
//  72  u64 number of packed words    80  name, zero-padded to 16 bytes
//  then the FP32 scales, then the packed uint32 words (plume's layout).
//
// K/V cache file ("<name>.pkv"), little-endian: a header, then records.
//   Header: 0 char[8] "PLUMEKV\n"   8 u32 version (1)
//          12 u32 crc32c of bytes [16, header end)   16 u64 header bytes
//          24 u32 kind (2)   28 u32 name length   32 i64 kv_heads
//          40 i64 head_dim   48 u8 format, u8 scale mode, u8 saturate,
//          u8 source dtype, u32 zero   56 i64 created (unix ms)
//          64 u64 page bytes   72 u64 cache-wide scales per side (G)
//          80 name, zero-padded to 16 bytes; G K scales, G V scales (FP32).
//   Record: 0 u32 "PKVR"   4 u32 crc32c of bytes [8, record end)
//          8 u64 record bytes   16 i64 seq after it   24 i64 first page
//          32 i64 page count   40 u64 zero   48 the pages (kv_layout.h bytes)
//   A record holds whole pages: the one the append started in (whose codes
//   and TOKEN_BLOCK scale it may have rewritten) and the ones it added, so
//   first page == the previous seq / 64. Replaying the records in order
//   rebuilds the cache. An upload writes header + one record through
//   WriteFileDurably; an append writes one record at the end and fdatasyncs
//   the file before it is acknowledged; when the log grows past twice the
//   live pages it is compacted (rewritten as header + one record through a
//   temp file and rename).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/backend.h"

namespace plume::core {

class MatrixStore;

inline constexpr char kStoreMagic[8] = {'P', 'L', 'U', 'M', 'E', 'M', 'X', '\n'};
inline constexpr uint32_t kStoreVersion = 1;
inline constexpr int64_t kStoreHeaderBytes = 80;
enum class RecordKind : uint32_t { kMatrix = 1, kKvCache = 2 };

// What a matrix file describes besides its payload.
struct StoredMatrixMeta {
  std::string name;
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
};

struct StoredMatrix {
  StoredMatrixMeta meta;
  std::vector<float> scales;    // shape.num_scales()
  std::vector<uint32_t> words;  // shape.layout().total_words()
};

// The header bytes of a matrix file, its checksum computed over the header's
// tail, the scales and the words.
std::string EncodeMatrixHeader(const StoredMatrixMeta& meta, const float* scales,
                               const uint32_t* words);
// The whole file in memory (tests, fuzz seeds).
std::string EncodeMatrixFile(const StoredMatrixMeta& meta, const float* scales,
                             const uint32_t* words);

// Parses and verifies a whole file: DATA_LOSS naming the first problem
// (magic, version, size, checksum, shape, enum values, name, padding codes,
// scales). Never trusts a count before checking it against the file size.
absl::StatusOr<StoredMatrix> DecodeMatrixFile(std::string_view bytes);

inline constexpr char kKvStoreMagic[8] = {'P', 'L', 'U', 'M', 'E', 'K', 'V', '\n'};
inline constexpr int64_t kKvRecordHeaderBytes = 48;

struct StoredKvMeta {
  std::string name;
  KvShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
};

struct StoredKv {
  StoredKvMeta meta;
  int64_t seq = 0;
  std::vector<uint8_t> pages;  // pages_for(seq) * page_bytes()
  std::vector<float> k_scales, v_scales;  // global_scales() each
  // The bytes of the file that make up the cache: all of it, unless the last
  // record is torn (an append cut short by a crash, never acknowledged).
  int64_t valid_bytes = 0;
  std::string torn_tail;  // why the bytes past valid_bytes were dropped, or ""
};

// The header of a K/V file (name, shape, cache-wide scales).
std::string EncodeKvHeader(const StoredKvMeta& meta, const float* k_scales, const float* v_scales);
// The 48 bytes in front of a record of `num_pages` pages at `pages`.
std::string EncodeKvRecordHeader(const KvShape& shape, int64_t seq_after, int64_t first_page,
                                 int64_t num_pages, const uint8_t* pages);
// Parses, verifies and replays a whole K/V file. DATA_LOSS for a bad header,
// a bad first record, or a bad record followed by more bytes or whose header
// contradicts itself. A bad last record (from the second on) that is too
// short for its header, all zeros, or a whole header with missing or bad
// pages is a torn append: the cache is what comes before it, and torn_tail
// says why.
absl::StatusOr<StoredKv> DecodeKvFile(std::string_view bytes);

// The interface MatrixStore and MatrixService persist through.
class Persistence {
 public:
  virtual ~Persistence() = default;
  // Durable when it returns OK.
  virtual absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                                  const float* scales) = 0;
  // OK when there is no such file.
  virtual absl::Status RemoveMatrix(std::string_view name) = 0;
};

class DirectoryStore final : public Persistence {
 public:
  // Creates `dir` and dir/quarantine if needed.
  static absl::StatusOr<std::unique_ptr<DirectoryStore>> Open(const std::string& dir);
  ~DirectoryStore() override;

  absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                          const float* scales) override;
  absl::Status RemoveMatrix(std::string_view name) override;

  // temp file, fsync, rename onto `file_name` (inside the store), dir fsync.
  absl::Status WriteFileDurably(const std::string& file_name,
                                const std::vector<std::string_view>& parts);
  absl::Status RemoveFile(const std::string& file_name);

  struct LoadReport {
    int loaded = 0;
    std::vector<std::string> quarantined;  // "file: reason"
    std::vector<std::string> not_loaded;   // good files that could not be loaded: "file: reason"
    std::vector<std::string> temp_removed; // leftovers of interrupted writes
  };
  // Removes leftover temp files, verifies every "*.pmx" file and passes each
  // good one to `load`. Files that fail verification are moved to
  // quarantine/; a file whose `load` fails is left in place and reported.
  LoadReport LoadAll(const std::function<absl::Status(StoredMatrix)>& load);

  // K/V caches (the file layout above). SaveKv writes a whole file through
  // WriteFileDurably (an upload, a compaction); the parts are the header,
  // the record header and the pages.
  absl::Status SaveKv(std::string_view name, const std::vector<std::string_view>& parts) {
    return WriteFileDurably(KvFileName(name), parts);
  }
  // Writes `parts` (one record) at offset `at`, the file's current size, and
  // fdatasyncs it. On failure the file is cut back to `at`; *torn is set when
  // even that failed (the file may end in a partial record).
  absl::Status AppendKv(std::string_view name, int64_t at,
                        const std::vector<std::string_view>& parts, bool* torn);
  absl::Status RemoveKv(std::string_view name) { return RemoveFile(KvFileName(name)); }
  // Reads and decodes one K/V file (to roll a cache back after a failed append).
  absl::StatusOr<StoredKv> ReadKv(std::string_view name);
  // As LoadAll for "*.pkv" files. A torn last record is cut off (the whole
  // file is first copied to quarantine/ and reported there) and the rest
  // loaded.
  LoadReport LoadAllKv(const std::function<absl::Status(StoredKv)>& load);

  const std::string& dir() const { return dir_; }
  static std::string MatrixFileName(std::string_view name);  // "<name>.pmx"
  static std::string KvFileName(std::string_view name);      // "<name>.pkv"

 private:
  DirectoryStore(std::string dir, int dir_fd);
  void Quarantine(const std::string& file_name, const std::string& reason, LoadReport* report);
  // The regular files in the directory ending in `ext`, sorted (others are
  // quarantined); removes leftover temp files.
  std::vector<std::string> ListRecords(std::string_view ext, LoadReport* report);

  const std::string dir_;
  const int dir_fd_;
};

// LoadAll into a backend and a store: each good file becomes a resident
// matrix (FromPacked) under its name, charged to the store's budget.
DirectoryStore::LoadReport LoadStoredMatrices(DirectoryStore* disk, Backend* backend,
                                              MatrixStore* store);

class KvStore;
// LoadAllKv into a backend (KvFromPacked) and a KvStore, charged to its budget.
DirectoryStore::LoadReport LoadStoredKvCaches(DirectoryStore* disk, Backend* backend,
                                              KvStore* store);

}  // namespace plume::core
