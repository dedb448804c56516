// NumPy .npy files (format versions 1.0, 2.0 and 3.0): little-endian float32
// ('<f4') and float16 ('<f2') arrays in C order, and float64 ('<f8', numpy's
// default) narrowed to float32 by ReadNpyConverting. Malformed input gives an
// INVALID_ARGUMENT status, never a crash; every size is bounded by the file's.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "plume/io/array.h"

namespace plume::io {

struct NpyHeader {
  int major_version = 1;
  ElemType dtype = ElemType::kF32;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;  // bytes from the start of the file to the data
  int64_t data_bytes = 0;
  bool uint8 = false;  // '|u1' (ReadNpyU8 only; `dtype` is then meaningless)
  bool f64 = false;    // '<f8' (ReadNpyConverting only; `dtype` is then kF32, what it becomes)
};

// A uint8 array: FP8 codes, one byte each.
struct NpyBytes {
  std::vector<int64_t> shape;
  std::string data;
};

// Parses the header at the start of `prefix` (at least the magic, version,
// length and header dict) of a file of `file_size` bytes. Checks that the
// data fills the rest of the file exactly.
absl::StatusOr<NpyHeader> ParseNpyHeader(std::string_view prefix, uint64_t file_size);

// Parses a whole .npy image held in memory.
absl::StatusOr<Array> ParseNpy(std::string_view bytes);
// Reads a .npy file (the header first, then the data straight into the array).
absl::StatusOr<Array> ReadNpy(const std::string& path);
// What ReadNpyConverting did to an array on the way.
struct NpyConversion {
  bool from_f64 = false;   // the file held float64, narrowed to float32
  int64_t overflowed = 0;  // finite values beyond float32's range, now +-inf
};
// ReadNpy that also takes little-endian float64 ('<f8') files: their values
// are narrowed to float32 (round to nearest even; beyond float32's range
// +-inf, counted in `conversion`) as they are read, a block at a time.
// `conversion` may be null.
absl::StatusOr<Array> ReadNpyConverting(const std::string& path, NpyConversion* conversion);
// Reads a .npy file of uint8 ('|u1') elements, e.g. raw FP8 codes.
absl::StatusOr<NpyBytes> ReadNpyU8(const std::string& path);

// Encodes F32 or F16 arrays (BF16 has no .npy dtype: INVALID_ARGUMENT) as a
// version 1.0 file (2.0 if the header needs it).
absl::StatusOr<std::string> EncodeNpy(const Array& a);
absl::Status WriteNpy(const std::string& path, const Array& a);

}  // namespace plume::io
