#include "plume/io/byte_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace plume::io {

absl::StatusOr<std::shared_ptr<const FileHandle>> FileHandle::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  // Read front to back: a larger read-ahead window.
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::shared_ptr<const FileHandle>(new FileHandle(fd, path));
}

FileHandle::~FileHandle() { ::close(fd_); }

ByteSource::ByteSource(std::string bytes) {
  size_ = bytes.size();
  memory_ = std::make_shared<const std::string>(std::move(bytes));
}

absl::Status ByteSource::Read(uint64_t offset, uint64_t n, char* out) const {
  if (offset > size_ || n > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat("bytes ", offset, "..", offset + n, " of ", size_));
  }
  if (memory_ != nullptr) {
    if (n > 0) std::memcpy(out, memory_->data() + offset, n);
    return absl::OkStatus();
  }
  uint64_t at = offset_ + offset;
  while (n > 0) {
    const ssize_t r = ::pread(file_->fd(), out, n, static_cast<off_t>(at));
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot read ", file_->path(), ": ", std::strerror(errno)));
    }
    if (r == 0) {
      return absl::DataLossError(
          absl::StrCat("short read from ", file_->path(), " at byte ", at, ": the file is shorter than it was"));
    }
    out += r;
    at += static_cast<uint64_t>(r);
    n -= static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ByteSource::ReadAll() const {
  if (memory_ != nullptr) return *memory_;
  std::string s(size_, '\0');
  if (absl::Status st = Read(0, size_, s.data()); !st.ok()) return st;
  return s;
}

std::optional<std::string_view> ByteSource::memory() const {
  if (memory_ == nullptr) return std::nullopt;
  return std::string_view(*memory_);
}

}  // namespace plume::io
