// A host array read from or written to a file: dtype, shape and the raw
// little-endian, row-major (C order) element bytes. No gRPC here, so fuzzers
// can link plume_io on its own.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace plume::io {

enum class ElemType : uint8_t { kF32, kF16, kBF16 };

int ElemSize(ElemType t);
const char* ElemTypeName(ElemType t);  // "f32", "f16", "bf16"

struct Array {
  ElemType dtype = ElemType::kF32;
  std::vector<int64_t> shape;
  std::string data;  // NumElements() * ElemSize(dtype) bytes

  int64_t NumElements() const;
};

// Product of dims, or an error when a dim is negative or the product (times
// elem_size) overflows or exceeds `limit_bytes`.
absl::StatusOr<int64_t> CheckedNumBytes(const std::vector<int64_t>& shape, int elem_size,
                                        uint64_t limit_bytes);

// Converts the array's elements to float (F32 copied; F16/BF16 widened exactly).
std::vector<float> ToFloats(const Array& a);

// Builds an F32 array from floats.
Array FromFloats(std::vector<int64_t> shape, const float* values);

// Opens `path` for binary reading into `in` and returns its size (error
// statuses name the path).
absl::StatusOr<uint64_t> OpenForRead(const std::string& path, std::ifstream* in);
// Reads a whole file into `out` (error statuses name the path).
absl::Status ReadFileToString(const std::string& path, std::string* out);
absl::Status WriteStringToFile(const std::string& path, std::string_view data);

}  // namespace plume::io
