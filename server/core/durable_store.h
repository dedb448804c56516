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
// - KV caches (AttentionService, issue 4) are meant to use the same file
//   discipline: the header has a `kind` field (kKvCache reserved), and
//   WriteFileDurably / RemoveFile are the building blocks. LoadAll loads only
//   matrix files (".pmx") today and leaves other files alone.
//
// File layout, little-endian:
//   0  char[8] magic "PLUMEMX\n"     8  u32 version (1)
//  12  u32 crc32c of bytes [16, end) 16  u64 file size
//  24  u32 kind (1 = matrix)         28  u32 name length
//  32  i64 rows                      40  i64 cols
//  48  u8 format, u8 scale mode, u8 saturate, u8 source dtype, u32 zero
//  56  i64 created (unix ms)         64  u64 number of scales
//  72  u64 number of packed words    80  name, zero-padded to 16 bytes
//  then the FP32 scales, then the packed uint32 words (plume's layout).
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
enum class RecordKind : uint32_t { kMatrix = 1, kKvCache = 2 /* reserved for issue 4 */ };

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

  const std::string& dir() const { return dir_; }
  static std::string MatrixFileName(std::string_view name);  // "<name>.pmx"

 private:
  DirectoryStore(std::string dir, int dir_fd);
  void Quarantine(const std::string& file_name, const std::string& reason, LoadReport* report);

  const std::string dir_;
  const int dir_fd_;
};

// LoadAll into a backend and a store: each good file becomes a resident
// matrix (FromPacked) under its name, charged to the store's budget.
DirectoryStore::LoadReport LoadStoredMatrices(DirectoryStore* disk, Backend* backend,
                                              MatrixStore* store);

}  // namespace plume::core
