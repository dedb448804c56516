// Bytes read in pieces as they are needed: a range of a file, read with
// pread and never held whole, or bytes already in memory. An FP8 tensor of a
// checkpoint is one: hashing it and uploading it each read it through once,
// a few MiB at a time, into buffers that are reused (a whole copy of a GiB
// tensor would cost its own GiB and the page faults to fill it, and a
// mapping of the file a TLB miss per 4 KiB page).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace plume::io {

// An open file descriptor, closed with its last owner.
class FileHandle {
 public:
  static absl::StatusOr<std::shared_ptr<const FileHandle>> Open(const std::string& path);
  ~FileHandle();
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  FileHandle(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

class ByteSource {
 public:
  ByteSource() = default;
  explicit ByteSource(std::string bytes);
  // `size` bytes of `file` from `offset` (not checked against the file's size:
  // a read past its end is DATA_LOSS).
  ByteSource(std::shared_ptr<const FileHandle> file, uint64_t offset, uint64_t size)
      : file_(std::move(file)), offset_(offset), size_(size) {}

  uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Bytes [offset, offset + n) into `out`: INVALID_ARGUMENT past the end,
  // DATA_LOSS when the file is shorter than it was, the OS's error otherwise.
  absl::Status Read(uint64_t offset, uint64_t n, char* out) const;
  // All of it, copied.
  absl::StatusOr<std::string> ReadAll() const;
  // The bytes, when they are in memory.
  std::optional<std::string_view> memory() const;

 private:
  std::shared_ptr<const std::string> memory_;
  std::shared_ptr<const FileHandle> file_;
  uint64_t offset_ = 0;
  uint64_t size_ = 0;
};

}  // namespace plume::io
