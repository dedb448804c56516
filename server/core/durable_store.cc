#include "server/core/durable_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <new>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/core/crc32c.h"

namespace plume::core {

namespace {

constexpr char kMatrixExt[] = ".pmx";
constexpr char kKvExt[] = ".pkv";
constexpr char kTempPrefix[] = ".tmp-";
constexpr char kQuarantineDir[] = "quarantine";

absl::Status ErrnoStatus(const std::string& what, int err) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const size_t n = std::min<size_t>(data.size(), size_t{1} << 30);
    const ssize_t w = ::write(fd, data.data(), n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(w));
  }
  return true;
}

// Checks a slice that Read(row0) gave, the file's scales up to next_scale
// having come before it.
absl::Status CheckSlice(const MatrixShape& shape, int64_t row0, int64_t next_scale,
                        const MatrixSlice& sl) {
  if (sl.row0 != row0 || sl.rows < 1 || sl.rows > shape.rows - row0 || sl.words == nullptr ||
      sl.first_scale != next_scale || sl.num_scales < 0 ||
      sl.num_scales > shape.num_scales() - next_scale ||
      (sl.num_scales > 0 && sl.scales == nullptr)) {
    return absl::InternalError(absl::StrCat(
        "matrix file: a slice read at row ", row0, " of ", shape.rows, " holds rows ", sl.row0,
        "..", sl.row0 + sl.rows, " and scales ", sl.first_scale, "..",
        sl.first_scale + sl.num_scales, " (expected scales from ", next_scale, " of ",
        shape.num_scales(), ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadWholeFile(int dir_fd, const std::string& name, std::string* out) {
  const int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("open ", name), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(absl::StrCat("stat ", name), err);
  }
  out->resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out->size()) {
    const ssize_t r = ::read(fd, out->data() + got, out->size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  out->resize(got);
  return absl::OkStatus();
}

}  // namespace

bool PwriteAll(int fd, const void* data, int64_t n, int64_t at) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, static_cast<size_t>(std::min<int64_t>(n, int64_t{1} << 30)), at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    p += w;
    n -= w;
    at += w;
  }
  return true;
}

// --------------------------------------------------------------- Persistence

absl::Status Persistence::SaveMatrixFrom(const StoredMatrixMeta& meta, MatrixSliceSource& source) {
  const MatrixShape& shape = meta.shape;
  const int64_t wpr = shape.layout().words_per_row();
  std::vector<uint32_t> words;
  std::vector<float> scales;
  try {
    words.resize(static_cast<size_t>(shape.layout().total_words()));
    scales.resize(static_cast<size_t>(shape.num_scales()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cannot allocate host memory to store the matrix");
  }
  int64_t next_scale = 0;
  for (int64_t row = 0; row < shape.rows;) {
    MatrixSlice sl;
    if (absl::Status s = source.Read(row, &sl); !s.ok()) return s;
    if (absl::Status s = CheckSlice(shape, row, next_scale, sl); !s.ok()) return s;
    std::memcpy(words.data() + row * wpr, sl.words, static_cast<size_t>(sl.rows * wpr) * 4);
    if (sl.num_scales > 0) {
      std::memcpy(scales.data() + next_scale, sl.scales, static_cast<size_t>(sl.num_scales) * 4);
    }
    row += sl.rows;
    next_scale += sl.num_scales;
  }
  if (next_scale != shape.num_scales()) {
    return absl::InternalError(absl::StrCat("matrix file: the slices brought ", next_scale, " of ",
                                            shape.num_scales(), " scales"));
  }
  return SaveMatrix(meta, words.data(), scales.data());
}

// ------------------------------------------------------------ DirectoryStore

absl::StatusOr<std::unique_ptr<DirectoryStore>> DirectoryStore::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("store directory is empty");
  // mkdir -p for the directory itself; its parent must exist.
  if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return ErrnoStatus(absl::StrCat("cannot create store directory ", dir), errno);
  }
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot open store directory ", dir), errno);
  if (::mkdirat(fd, kQuarantineDir, 0750) != 0 && errno != EEXIST) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(absl::StrCat("cannot create ", dir, "/quarantine"), err);
  }
  return std::unique_ptr<DirectoryStore>(new DirectoryStore(dir, fd));
}

DirectoryStore::DirectoryStore(std::string dir, int dir_fd) : dir_(std::move(dir)), dir_fd_(dir_fd) {}

// matrix_file_writer.cc
void CancelMatrixFileStreams(DirectoryStore::Threads& threads);

DirectoryStore::~DirectoryStore() {
  CancelMatrixFileStreams(*threads_);
  absl::MutexLock lock(&threads_->mu);
  threads_->mu.Await(absl::Condition(
      +[](int* running) { return *running == 0; }, &threads_->running));
  ::close(dir_fd_);
}

std::string DirectoryStore::MatrixFileName(std::string_view name) {
  return std::string(name) + kMatrixExt;
}

std::string DirectoryStore::KvFileName(std::string_view name) { return std::string(name) + kKvExt; }

std::string DirectoryStore::TempName(const std::string& file_name) {
  static std::atomic<uint64_t> counter{0};
  // Names never start with '.', so a temp file can never shadow a record.
  return absl::StrCat(kTempPrefix, file_name, ".", ::getpid(), ".",
                      counter.fetch_add(1, std::memory_order_relaxed));
}

absl::Status DirectoryStore::WriteFileDurably(const std::string& file_name,
                                              const std::vector<std::string_view>& parts) {
  const std::string tmp = TempName(file_name);
  const int fd = ::openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot create ", dir_, "/", tmp), errno);
  bool ok = true;
  for (std::string_view p : parts) ok = ok && WriteAll(fd, p);
  int err = ok ? 0 : errno;
  if (ok && ::fsync(fd) != 0) {
    ok = false;
    err = errno;
  }
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && ::renameat(dir_fd_, tmp.c_str(), dir_fd_, file_name.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return ErrnoStatus(absl::StrCat("cannot write ", dir_, "/", file_name), err);
  }
  if (::fsync(dir_fd_) != 0) return ErrnoStatus(absl::StrCat("cannot fsync ", dir_), errno);
  return absl::OkStatus();
}

absl::Status DirectoryStore::RemoveFile(const std::string& file_name) {
  if (::unlinkat(dir_fd_, file_name.c_str(), 0) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(absl::StrCat("cannot remove ", dir_, "/", file_name), errno);
  }
  if (::fsync(dir_fd_) != 0) return ErrnoStatus(absl::StrCat("cannot fsync ", dir_), errno);
  return absl::OkStatus();
}

absl::Status DirectoryStore::SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                                        const float* scales) {
  const std::string header = EncodeMatrixHeader(meta, scales, words);
  return WriteFileDurably(
      MatrixFileName(meta.name),
      {header,
       std::string_view(reinterpret_cast<const char*>(scales),
                        static_cast<size_t>(meta.shape.num_scales()) * 4),
       std::string_view(reinterpret_cast<const char*>(words),
                        static_cast<size_t>(meta.shape.layout().total_words()) * 4)});
}

absl::Status DirectoryStore::SaveMatrixFrom(const StoredMatrixMeta& meta,
                                            MatrixSliceSource& source) {
  const MatrixShape& shape = meta.shape;
  const int64_t row_bytes = shape.layout().words_per_row() * 4;
  const int64_t words_at = MatrixFileWordsOffset(meta);
  const int64_t scales_at = words_at - shape.num_scales() * 4;
  const int64_t file_bytes = words_at + shape.layout().code_bytes();
  const std::string file_name = MatrixFileName(meta.name);
  const std::string tmp = TempName(file_name);
  const std::string what = absl::StrCat("cannot write ", dir_, "/", file_name);
  const int fd = ::openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot create ", dir_, "/", tmp), errno);
  // Every way out below closes the file, and removes it unless it was renamed.
  const auto fail = [&](absl::Status s) {
    ::close(fd);
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return s;
  };
  // The file's blocks up front: a full disk shows before any slice is read.
  if (::fallocate(fd, 0, 0, file_bytes) != 0 && (errno == ENOSPC || errno == EDQUOT)) {
    return fail(ErrnoStatus(what, errno));
  }
  uint32_t scales_crc = 0, words_crc = 0;
  int64_t next_scale = 0;
  for (int64_t row = 0; row < shape.rows;) {
    MatrixSlice sl;
    if (absl::Status s = source.Read(row, &sl); !s.ok()) return fail(s);
    if (absl::Status s = CheckSlice(shape, row, next_scale, sl); !s.ok()) return fail(s);
    const int64_t word_off = words_at + row * row_bytes;
    const int64_t word_bytes = sl.rows * row_bytes;
    const int64_t scale_bytes = sl.num_scales * 4;
    if (!PwriteAll(fd, sl.words, word_bytes, word_off) ||
        (scale_bytes > 0 && !PwriteAll(fd, sl.scales, scale_bytes, scales_at + next_scale * 4))) {
      return fail(ErrnoStatus(what, errno));
    }
    words_crc = Crc32c(words_crc, sl.words, static_cast<size_t>(word_bytes));
    if (scale_bytes > 0) scales_crc = Crc32c(scales_crc, sl.scales, static_cast<size_t>(scale_bytes));
    // Start the writeback now (best effort): the fsync then waits for less.
    ::sync_file_range(fd, word_off, word_bytes, SYNC_FILE_RANGE_WRITE);
    row += sl.rows;
    next_scale += sl.num_scales;
  }
  if (next_scale != shape.num_scales()) {
    return fail(absl::InternalError(absl::StrCat("matrix file: the slices brought ", next_scale,
                                                 " of ", shape.num_scales(), " scales")));
  }
  const std::string header = EncodeMatrixHeaderWithCrcs(meta, scales_crc, words_crc);
  if (static_cast<int64_t>(header.size()) != scales_at) {
    return fail(absl::InternalError("matrix file: the header does not end where the scales begin"));
  }
  if (!PwriteAll(fd, header.data(), scales_at, 0) || ::fsync(fd) != 0) {
    return fail(ErrnoStatus(what, errno));
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return ErrnoStatus(what, err);
  }
  if (::renameat(dir_fd_, tmp.c_str(), dir_fd_, file_name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return ErrnoStatus(what, err);
  }
  if (::fsync(dir_fd_) != 0) return ErrnoStatus(absl::StrCat("cannot fsync ", dir_), errno);
  return absl::OkStatus();
}

absl::Status DirectoryStore::RemoveMatrix(std::string_view name) {
  return RemoveFile(MatrixFileName(name));
}

void DirectoryStore::Quarantine(const std::string& file_name, const std::string& reason,
                                LoadReport* report) {
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const std::string to = absl::StrCat(kQuarantineDir, "/", file_name, ".", now_ms);
  std::string line = absl::StrCat(file_name, ": ", reason);
  if (::renameat(dir_fd_, file_name.c_str(), dir_fd_, to.c_str()) != 0) {
    absl::StrAppend(&line, " (could not move it to quarantine/: ", std::strerror(errno), ")");
  } else {
    absl::StrAppend(&line, " (moved to ", to, ")");
    ::fsync(dir_fd_);
  }
  report->quarantined.push_back(std::move(line));
}

std::vector<std::string> DirectoryStore::ListRecords(std::string_view ext, LoadReport* report) {
  std::vector<std::string> names, out;
  if (DIR* d = ::fdopendir(::dup(dir_fd_))) {
    ::rewinddir(d);  // the dup shares dir_fd_'s offset, which an earlier listing left at the end
    while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& f : names) {
    if (absl::StartsWith(f, kTempPrefix)) {  // an interrupted write: never acknowledged
      if (::unlinkat(dir_fd_, f.c_str(), 0) == 0) report->temp_removed.push_back(f);
      continue;
    }
    if (!absl::EndsWith(f, absl::string_view(ext.data(), ext.size()))) continue;  // quarantine/, the other kind, others
    struct stat st {};
    if (::fstatat(dir_fd_, f.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
      Quarantine(f, "not a regular file", report);
      continue;
    }
    out.push_back(f);
  }
  return out;
}

DirectoryStore::LoadReport DirectoryStore::LoadAll(
    const std::function<absl::Status(StoredMatrix)>& load) {
  LoadReport report;
  for (const std::string& f : ListRecords(kMatrixExt, &report)) {
    std::string bytes;
    if (absl::Status s = ReadWholeFile(dir_fd_, f, &bytes); !s.ok()) {
      report.not_loaded.push_back(absl::StrCat(f, ": ", s.message()));
      continue;
    }
    auto m = DecodeMatrixFile(bytes);
    std::string().swap(bytes);
    if (!m.ok()) {
      Quarantine(f, std::string(m.status().message()), &report);
      continue;
    }
    if (MatrixFileName(m->meta.name) != f) {
      Quarantine(f, absl::StrCat("holds matrix \"", m->meta.name, "\", not the one its name says"),
                 &report);
      continue;
    }
    if (absl::Status s = load(*std::move(m)); !s.ok()) {
      report.not_loaded.push_back(absl::StrCat(f, ": ", s.ToString()));
      continue;
    }
    ++report.loaded;
  }
  return report;
}

absl::Status DirectoryStore::AppendKv(std::string_view name, int64_t at,
                                      const std::vector<std::string_view>& parts, bool* torn) {
  *torn = false;
  const std::string f = KvFileName(name);
  const int fd = ::openat(dir_fd_, f.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot open ", dir_, "/", f), errno);
  bool ok = ::lseek(fd, at, SEEK_SET) == at;
  for (std::string_view p : parts) ok = ok && WriteAll(fd, p);
  ok = ok && ::fdatasync(fd) == 0;  // the data and the new size
  const int err = errno;
  if (!ok && (::ftruncate(fd, at) != 0 || ::fdatasync(fd) != 0)) *torn = true;
  ::close(fd);
  if (!ok) return ErrnoStatus(absl::StrCat("cannot append to ", dir_, "/", f), err);
  return absl::OkStatus();
}

absl::StatusOr<StoredKv> DirectoryStore::ReadKv(std::string_view name) {
  std::string bytes;
  if (absl::Status s = ReadWholeFile(dir_fd_, KvFileName(name), &bytes); !s.ok()) return s;
  return DecodeKvFile(bytes);
}

DirectoryStore::LoadReport DirectoryStore::LoadAllKv(const std::function<absl::Status(StoredKv)>& load) {
  LoadReport report;
  for (const std::string& f : ListRecords(kKvExt, &report)) {
    std::string bytes;
    if (absl::Status s = ReadWholeFile(dir_fd_, f, &bytes); !s.ok()) {
      report.not_loaded.push_back(absl::StrCat(f, ": ", s.message()));
      continue;
    }
    auto kv = DecodeKvFile(bytes);
    if (!kv.ok()) {
      Quarantine(f, std::string(kv.status().message()), &report);
      continue;
    }
    if (KvFileName(kv->meta.name) != f) {
      Quarantine(f, absl::StrCat("holds kv cache \"", kv->meta.name, "\", not the one its name says"),
                 &report);
      continue;
    }
    if (!kv->torn_tail.empty()) {
      // Keep the whole file for inspection, then cut the live one back to its
      // last whole record.
      const std::string copy = absl::StrCat(".torn-", f);
      absl::Status s = WriteFileDurably(copy, {bytes});
      const int fd = ::openat(dir_fd_, f.c_str(), O_WRONLY | O_CLOEXEC);
      const bool cut = fd >= 0 && ::ftruncate(fd, kv->valid_bytes) == 0 && ::fdatasync(fd) == 0;
      if (fd >= 0) ::close(fd);
      if (!cut) {
        report.not_loaded.push_back(absl::StrCat(f, ": cannot cut off a torn record: ", std::strerror(errno)));
        continue;
      }
      if (s.ok()) Quarantine(copy, absl::StrCat(f, " ends in a torn append (", kv->torn_tail,
                                                "); cut back to its last whole record"), &report);
    }
    std::string().swap(bytes);
    if (absl::Status s = load(*std::move(kv)); !s.ok()) {
      report.not_loaded.push_back(absl::StrCat(f, ": ", s.ToString()));
      continue;
    }
    ++report.loaded;
  }
  return report;
}

}  // namespace plume::core
