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
// - A matrix whose packed form is not in host memory (quantized by the
//   backend, on a GPU) is written from slices of rows read back one at a
//   time (SaveMatrixFrom; packed_matrix.h's BackendSliceSource): each goes
//   to its place in the temp file and is checksummed in order, so the file
//   is SaveMatrix's byte for byte while only one slice is on the host.
// - K/V caches (AttentionService) are stored as "<name>.pkv": a header and
//   an append-only log of page records (LoadAllKv).
//
// The file layouts and their encoding are in store_codec.h; loading the
// files into the registries through a backend is store_loader.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/store_codec.h"

namespace plume::core {

struct MatrixFileStream;  // matrix_file_writer.cc

// A matrix file written while its upload's packed words arrive
// (Persistence::BeginMatrix): a background thread checksums the words and
// writes them to a temp file as they become final, so that storing the
// matrix costs its upload little more than the last writes and the fsync.
// Commit puts the header and scales in front and makes the file durable as
// SaveMatrix does (fsync, rename, directory fsync); until then nothing but a
// temp file exists, which the next start removes.
class MatrixFileWriter {
 public:
  // Without a successful Commit the file is abandoned: the thread stops
  // after its current write and removes the temp file. Returns at once (the
  // thread holds on to the words' memory until it is done).
  virtual ~MatrixFileWriter() = default;
  // Bytes [0, n) of the words are final (n never goes down).
  virtual void WordsReady(int64_t n) = 0;
  // Once every word is ready: waits for the thread, writes the header, the
  // scales (in the meta's scale mode) and what the thread left, and makes
  // the file durable. OK: on disk, whole; otherwise the temp file is gone.
  // Blocks on the disk: never on a gRPC thread.
  virtual absl::Status Commit(int64_t created_unix_ms, const float* scales) = 0;
};

// A band of rows of a matrix's packed form as its file holds it
// (MatrixSliceSource::Read).
struct MatrixSlice {
  int64_t row0 = 0;
  int64_t rows = 0;
  const uint32_t* words = nullptr;  // rows * words_per_row, row row0's first
  // The file's scales (the meta's scale mode) these rows bring: entries
  // [first_scale, first_scale + num_scales) of its scale array. Slices read
  // in row order bring the scales in order: ROW and BLOCK128 those of their
  // rows, TENSOR its one scale with the first slice, BLOCK128X128 those of
  // the 128-row bands that start in the slice, NONE none.
  int64_t first_scale = 0;
  int64_t num_scales = 0;
  const float* scales = nullptr;
};

// Hands a matrix's packed form to the store a band of rows at a time, from
// one bounded buffer (packed_matrix.h reads it from a backend this way).
class MatrixSliceSource {
 public:
  virtual ~MatrixSliceSource() = default;
  // Rows per Read (>= 1); the last slice has what is left.
  virtual int64_t rows_per_slice() const = 0;
  // Rows [row0, min(row0 + rows_per_slice(), rows)); what `out` points to
  // stays valid until the next Read.
  virtual absl::Status Read(int64_t row0, MatrixSlice* out) = 0;
};

// The interface MatrixStore and MatrixService persist through.
class Persistence {
 public:
  virtual ~Persistence() = default;
  // Durable when it returns OK.
  virtual absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                                  const float* scales) = 0;
  // SaveMatrix with the words and scales read from `source` slice by slice,
  // in row order: the same file, byte for byte. The default gathers every
  // slice in memory and calls SaveMatrix (for stores that write whole files
  // only); DirectoryStore writes each slice to the file as it is read.
  virtual absl::Status SaveMatrixFrom(const StoredMatrixMeta& meta, MatrixSliceSource& source);
  // Starts the file of a matrix whose packed words (meta.shape's layout) are
  // appended in order at `words`, memory that stays valid while `keep_alive`
  // is held (meta.created_unix_ms is Commit's). Null (not an error) where the
  // store writes matrices whole only: the caller then uses SaveMatrix.
  virtual absl::StatusOr<std::unique_ptr<MatrixFileWriter>> BeginMatrix(
      const StoredMatrixMeta& /*meta*/, const uint8_t* /*words*/,
      std::shared_ptr<const void> /*keep_alive*/) {
    return std::unique_ptr<MatrixFileWriter>();
  }
  // OK when there is no such file. Called with no registry lock held
  // (MatrixStore::Delete), while the name is reserved.
  virtual absl::Status RemoveMatrix(std::string_view name) = 0;
};

class DirectoryStore final : public Persistence {
 public:
  // Creates `dir` and dir/quarantine if needed.
  static absl::StatusOr<std::unique_ptr<DirectoryStore>> Open(const std::string& dir);
  ~DirectoryStore() override;

  absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                          const float* scales) override;
  // Each slice goes to its place in a temp file as it is read, its words and
  // scales checksummed in order, so that no more than one slice of the
  // matrix is held here; then the header goes in front and the file is made
  // durable as SaveMatrix does (fsync, rename, directory fsync). The file is
  // SaveMatrix's byte for byte.
  absl::Status SaveMatrixFrom(const StoredMatrixMeta& meta, MatrixSliceSource& source) override;
  // Matrices of at least stream_min_bytes() packed bytes (matrix_file_writer.cc).
  // The words go to disk with O_DIRECT where the file system takes it: the
  // page cache would only hold a second copy of a matrix that is resident
  // anyway, and its dirty pages would make the fsync wait.
  absl::StatusOr<std::unique_ptr<MatrixFileWriter>> BeginMatrix(
      const StoredMatrixMeta& meta, const uint8_t* words,
      std::shared_ptr<const void> keep_alive) override;
  absl::Status RemoveMatrix(std::string_view name) override;

  // Smaller matrices are written whole by SaveMatrix (default 8 MiB; tests
  // lower it). Set before serving.
  void set_stream_min_bytes(int64_t n) { stream_min_bytes_ = n; }
  int64_t stream_min_bytes() const { return stream_min_bytes_; }
  // False: streamed words go through the page cache (tests cover both).
  void set_direct_io(bool on) { direct_io_ = on; }

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

  // The background threads of abandoned or unfinished MatrixFileWriters:
  // the store's destructor cancels those not committing (their uploads can
  // no longer finish) and waits for them all (they use dir_fd_).
  struct Threads {
    absl::Mutex mu;
    int running ABSL_GUARDED_BY(mu) = 0;
    std::vector<std::weak_ptr<MatrixFileStream>> streams ABSL_GUARDED_BY(mu);
  };

 private:
  DirectoryStore(std::string dir, int dir_fd);
  // A fresh temp file name for `file_name` (removed by the next start if
  // left behind).
  static std::string TempName(const std::string& file_name);
  void Quarantine(const std::string& file_name, const std::string& reason, LoadReport* report);
  // The regular files in the directory ending in `ext`, sorted (others are
  // quarantined); removes leftover temp files.
  std::vector<std::string> ListRecords(std::string_view ext, LoadReport* report);

  const std::string dir_;
  const int dir_fd_;
  int64_t stream_min_bytes_ = int64_t{8} << 20;
  bool direct_io_ = true;
  std::shared_ptr<Threads> threads_ = std::make_shared<Threads>();
};

}  // namespace plume::core
