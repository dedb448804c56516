// .safetensors files: an 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {...}}, then the data; offsets are relative to the data.
// Every entry is validated against the file size; "__metadata__" is ignored.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "plume/io/array.h"
#include "plume/io/byte_source.h"

namespace plume::io {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as written: "F32", "F16", "BF16", "I8", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // relative to the data section
  uint64_t end = 0;
};

// Parses and validates the JSON header against a data section of
// `data_size` bytes. Entries come back sorted by name.
absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(std::string_view json,
                                                                     uint64_t data_size);

class SafetensorsFile {
 public:
  // Reads the header; the file stays open for the tensors' bytes.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parses a whole file image held in memory (e.g. for fuzzing).
  static absl::StatusOr<SafetensorsFile> FromBytes(std::string bytes);

  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  // The tensor named `name` (F32, F16 or BF16 only).
  absl::StatusOr<Array> Read(const std::string& name) const;
  // The entry named `name`, or null.
  const SafetensorsEntry* Find(const std::string& name) const;
  // The raw little-endian bytes of an entry of this file, whatever its dtype
  // (e.g. F8_E4M3 codes).
  absl::StatusOr<std::string> ReadBytes(const SafetensorsEntry& e) const;
  // The same bytes, to be read in pieces (nothing is read yet).
  ByteSource Source(const SafetensorsEntry& e) const;

 private:
  std::shared_ptr<const FileHandle> file_;  // null when constructed from bytes
  ByteSource image_;                        // the whole image when constructed from bytes
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
};

// Writes F32/F16/BF16 tensors (names must not be "__metadata__").
absl::StatusOr<std::string> EncodeSafetensors(const std::map<std::string, Array>& tensors);
absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Array>& tensors);

}  // namespace plume::io
