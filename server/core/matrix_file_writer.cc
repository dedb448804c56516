// DirectoryStore::BeginMatrix: a matrix file written while its upload's
// packed words arrive (durable_store.h, MatrixFileWriter).
//
// The file is the one SaveMatrix writes (store_codec.h): header, name,
// content hash and scales, then the words from offset `at` to the end. The
// words arrive first, so a thread writes them at their final offsets as they
// become ready and checksums them on the way; Commit writes what comes
// before them and combines the checksums (Crc32cCombine). With O_DIRECT the
// thread writes the 4 KiB blocks that hold words only, through an aligned
// bounce buffer (the words' offset in the file is rarely aligned); the
// partial blocks at either end go through the page cache at Commit, on a
// second descriptor of the same file. Without O_DIRECT (tmpfs; tests) the
// thread writes everything through the page cache and starts its writeback
// as it goes (sync_file_range). Either way the file is flushed every 256 MiB
// (fdatasync, on a short-lived thread while the writes go on), so that the
// fsync at Commit finds little left to do.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/core/crc32c.h"
#include "server/core/durable_store.h"

namespace plume::core {
namespace {

constexpr int64_t kBlock = 4096;       // O_DIRECT alignment: offsets, lengths, memory
constexpr int64_t kUnit = 4 << 20;     // bytes per background write (and checksum step)
// The thread flushes the file to stable storage every this many bytes, so
// that the device's write-back runs while the upload still arrives rather
// than all in Commit's fsync (0.5-0.6 s per GiB on the development VM).
constexpr int64_t kSyncEvery = int64_t{256} << 20;

int64_t RoundUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
int64_t RoundDown(int64_t v, int64_t a) { return v / a * a; }

absl::Status ErrnoStatus(const std::string& what, int err) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

// durable_store.cc: writes n bytes at offset `at`, whatever pwrite's short
// writes; false with errno set on failure.
bool PwriteAll(int fd, const void* data, int64_t n, int64_t at);

// What a writer and its thread share. The thread may outlive the writer (an
// abandoned upload): it then removes the temp file, and the last of the two
// to let go closes the descriptors.
struct MatrixFileStream {
  ~MatrixFileStream() {
    if (fd >= 0) ::close(fd);
    if (direct_fd >= 0) ::close(direct_fd);
    if (bounce != nullptr) ::munmap(bounce, static_cast<size_t>(kUnit));
  }

  // Set before the thread starts; read-only after.
  std::string dir;
  int dir_fd = -1;  // the store's, open while any thread runs
  std::string tmp;
  const uint8_t* words = nullptr;
  int64_t words_bytes = 0;
  int64_t at = 0;  // the words' offset in the file
  std::shared_ptr<const void> keep_alive;  // the words' memory
  std::shared_ptr<DirectoryStore::Threads> threads;
  bool direct_io = true;

  absl::Mutex mu;
  int64_t ready ABSL_GUARDED_BY(mu) = 0;
  bool cancelled ABSL_GUARDED_BY(mu) = false;   // abandoned: stop and remove the file
  bool committing ABSL_GUARDED_BY(mu) = false;  // every word is ready and Commit waits

  // The thread's (Open sets the descriptors); Commit reads them once it has
  // joined.
  int fd = -1;
  int direct_fd = -1;          // O_DIRECT, -1 once it is not used
  uint8_t* bounce = nullptr;   // kUnit bytes, page-aligned (O_DIRECT only)
  int64_t direct_end = 0;      // the last whole block of words ends here
  int64_t region_start = 0;    // the thread writes the file from here ...
  int64_t file_pos = 0;        // ... up to here so far
  int64_t synced_to = 0;       // flushed (or being flushed) up to here (fdatasync)
  std::thread flusher;         // the flush in flight; joined before the next and at the end
  int flush_error = 0;         // the flusher's errno, read once it is joined
  uint32_t words_crc = 0;      // Crc32c of words [0, checksummed)
  int64_t checksummed = 0;
  int error = 0;               // errno of a failed write; the thread stops writing
};

namespace {

using Stream = MatrixFileStream;

// Waits for the flush in flight, if any; its failure becomes the thread's.
void JoinFlush(Stream& s) {
  if (!s.flusher.joinable()) return;
  s.flusher.join();
  if (s.flush_error != 0 && s.error == 0) s.error = s.flush_error;
}

// Once kSyncEvery more bytes are written, flushes them (fdatasync) on a
// thread of its own, so that the next writes go on meanwhile.
void SyncNow(Stream& s) {
  if (s.file_pos - s.synced_to < kSyncEvery) return;
  JoinFlush(s);
  s.synced_to = s.file_pos;
  s.flusher = std::thread([&s] { s.flush_error = ::fdatasync(s.fd) != 0 ? errno : 0; });
}

// Writes the file up to words byte `upto` (final), as far as the thread writes.
void WriteUpTo(Stream& s, int64_t upto) {
  if (s.direct_fd >= 0) {
    const int64_t end = std::min(RoundDown(s.at + upto, kBlock), s.direct_end);
    while (s.file_pos < end) {
      const int64_t n = std::min(kUnit, end - s.file_pos);
      std::memcpy(s.bounce, s.words + (s.file_pos - s.at), static_cast<size_t>(n));
      if (!PwriteAll(s.direct_fd, s.bounce, n, s.file_pos)) {
        if (errno != EINVAL) {
          s.error = errno;
          return;
        }
        // The file system refused O_DIRECT after all: the page cache from here.
        ::close(s.direct_fd);
        s.direct_fd = -1;
        break;
      }
      s.file_pos += n;
    }
    if (s.direct_fd >= 0) {
      SyncNow(s);
      return;
    }
  }
  const int64_t end = s.at + upto;
  if (end <= s.file_pos) return;
  if (!PwriteAll(s.fd, s.words + (s.file_pos - s.at), end - s.file_pos, s.file_pos)) {
    s.error = errno;
    return;
  }
  // Start the writeback now (best effort): the fsync then waits for less.
  ::sync_file_range(s.fd, s.file_pos, end - s.file_pos, SYNC_FILE_RANGE_WRITE);
  s.file_pos = end;
  SyncNow(s);
}

// Creates the temp file (and its O_DIRECT descriptor and bounce buffer):
// on the thread, since it may wait for the disk. A failure is the thread's
// error, which Commit reports.
void Open(Stream& s) {
  s.fd = ::openat(s.dir_fd, s.tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (s.fd < 0) {
    s.error = errno;
    return;
  }
  // The file's blocks up front: a full disk shows before the words are written.
  const int64_t file_bytes = s.at + s.words_bytes;
  if (::fallocate(s.fd, 0, 0, file_bytes) != 0 && (errno == ENOSPC || errno == EDQUOT)) {
    s.error = errno;
    return;
  }
  const int64_t direct_start = RoundUp(s.at, kBlock);
  s.direct_end = RoundDown(file_bytes, kBlock);
  if (s.direct_io && s.direct_end - direct_start >= kUnit) {
    s.direct_fd = ::openat(s.dir_fd, s.tmp.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (s.direct_fd >= 0) {
      void* b = ::mmap(nullptr, static_cast<size_t>(kUnit), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (b == MAP_FAILED) {
        ::close(s.direct_fd);
        s.direct_fd = -1;
      } else {
        s.bounce = static_cast<uint8_t*>(b);
      }
    }
  }
  s.region_start = s.direct_fd >= 0 ? direct_start : s.at;
  s.file_pos = s.synced_to = s.region_start;
}

void Run(std::shared_ptr<Stream> sp) {
  Stream& s = *sp;
  Open(s);
  bool cancelled = false;
  // A unit's worth of new words at a time (or the last of them).
  while (!cancelled && s.checksummed < s.words_bytes) {
    int64_t ready;
    {
      absl::MutexLock lock(&s.mu);
      const auto more = [&s]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
        return s.cancelled || s.ready == s.words_bytes || s.ready - s.checksummed >= kUnit;
      };
      s.mu.Await(absl::Condition(&more));
      cancelled = s.cancelled;
      ready = s.ready;
    }
    if (cancelled) break;
    const int64_t upto = std::min(ready, s.checksummed + kUnit);
    s.words_crc = Crc32c(s.words_crc, s.words + s.checksummed, static_cast<size_t>(upto - s.checksummed));
    s.checksummed = upto;
    if (s.error == 0) WriteUpTo(s, upto);
  }
  JoinFlush(s);
  if (!cancelled) {  // every word is in: Commit (which joins) or a cancel
    absl::MutexLock lock(&s.mu);
    s.mu.Await(absl::Condition(
        +[](Stream* st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) { return st->cancelled || st->committing; },
        &s));
    cancelled = s.cancelled;
  }
  if (cancelled) ::unlinkat(s.dir_fd, s.tmp.c_str(), 0);
  std::shared_ptr<DirectoryStore::Threads> threads = s.threads;
  sp.reset();  // the words and, if the writer is gone, the descriptors
  absl::MutexLock lock(&threads->mu);
  --threads->running;
  // Forget the streams that are gone.
  auto& v = threads->streams;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [](const std::weak_ptr<MatrixFileStream>& w) { return w.expired(); }),
          v.end());
}

}  // namespace

void CancelMatrixFileStreams(DirectoryStore::Threads& threads) {
  std::vector<std::weak_ptr<MatrixFileStream>> streams;
  {
    absl::MutexLock lock(&threads.mu);
    streams = threads.streams;
  }
  for (const auto& w : streams) {
    if (std::shared_ptr<MatrixFileStream> s = w.lock()) {
      absl::MutexLock lock(&s->mu);
      if (!s->committing) s->cancelled = true;
    }
  }
}

namespace {

class DirectoryFileWriter final : public MatrixFileWriter {
 public:
  DirectoryFileWriter(StoredMatrixMeta meta, std::string file_name, std::shared_ptr<Stream> s)
      : meta_(std::move(meta)), file_name_(std::move(file_name)), s_(std::move(s)) {
    {
      absl::MutexLock lock(&s_->threads->mu);
      ++s_->threads->running;
      s_->threads->streams.push_back(s_);
    }
    thread_ = std::thread(Run, s_);
  }

  ~DirectoryFileWriter() override {
    if (!thread_.joinable()) return;
    {
      absl::MutexLock lock(&s_->mu);
      s_->cancelled = true;
    }
    thread_.detach();
  }

  void WordsReady(int64_t n) override {
    absl::MutexLock lock(&s_->mu);
    s_->ready = std::max(s_->ready, std::min(n, s_->words_bytes));
  }

  absl::Status Commit(int64_t created_unix_ms, const float* scales) override {
    Stream& s = *s_;
    bool all_ready;
    {
      absl::MutexLock lock(&s.mu);
      all_ready = s.ready == s.words_bytes;
      if (all_ready) {
        s.committing = true;
      } else {
        s.cancelled = true;
      }
    }
    thread_.join();  // the thread is done with the file (and, cancelled, removed it)
    if (!all_ready) return absl::FailedPreconditionError("the matrix file was committed before its words");
    absl::Status status = Finish(created_unix_ms, scales);
    if (!status.ok()) ::unlinkat(s.dir_fd, s.tmp.c_str(), 0);
    return status;
  }

 private:
  absl::Status Finish(int64_t created_unix_ms, const float* scales) {
    Stream& s = *s_;
    const std::string what = absl::StrCat("cannot write ", s.dir, "/", file_name_);
    if (s.error != 0) return ErrnoStatus(what, s.error);
    meta_.created_unix_ms = created_unix_ms;
    const std::string header = EncodeMatrixHeaderWithWordsCrc(meta_, scales, s.words_crc);
    const int64_t scale_bytes = meta_.shape.num_scales() * 4;
    if (static_cast<int64_t>(header.size()) + scale_bytes != s.at) {
      return absl::InternalError("matrix file: the header does not end where the words begin");
    }
    // Before the thread's part: header, scales, the words up to it; after
    // it: the rest of the words.
    const bool ok = PwriteAll(s.fd, header.data(), static_cast<int64_t>(header.size()), 0) &&
                    PwriteAll(s.fd, scales, scale_bytes, static_cast<int64_t>(header.size())) &&
                    PwriteAll(s.fd, s.words, s.region_start - s.at, s.at) &&
                    PwriteAll(s.fd, s.words + (s.file_pos - s.at), s.at + s.words_bytes - s.file_pos,
                              s.file_pos);
    if (!ok || ::fsync(s.fd) != 0) return ErrnoStatus(what, errno);
    if (::renameat(s.dir_fd, s.tmp.c_str(), s.dir_fd, file_name_.c_str()) != 0) {
      return ErrnoStatus(what, errno);
    }
    if (::fsync(s.dir_fd) != 0) return ErrnoStatus(absl::StrCat("cannot fsync ", s.dir), errno);
    return absl::OkStatus();
  }

  StoredMatrixMeta meta_;
  const std::string file_name_;
  std::shared_ptr<Stream> s_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MatrixFileWriter>> DirectoryStore::BeginMatrix(
    const StoredMatrixMeta& meta, const uint8_t* words, std::shared_ptr<const void> keep_alive) {
  const int64_t words_bytes = meta.shape.layout().code_bytes();
  if (words_bytes < stream_min_bytes_) return std::unique_ptr<MatrixFileWriter>();
  auto s = std::make_shared<Stream>();
  s->dir = dir_;
  s->dir_fd = dir_fd_;
  s->words = words;
  s->words_bytes = words_bytes;
  s->at = MatrixFileWordsOffset(meta);
  s->keep_alive = std::move(keep_alive);
  s->threads = threads_;
  s->direct_io = direct_io_;
  const std::string file_name = MatrixFileName(meta.name);
  s->tmp = TempName(file_name);
  StoredMatrixMeta m = meta;
  return std::unique_ptr<MatrixFileWriter>(new DirectoryFileWriter(std::move(m), file_name, std::move(s)));
}

}  // namespace plume::core
