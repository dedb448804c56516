#include "plume/io/array.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "plume/kernels/half.h"

namespace plume::io {

int ElemSize(ElemType t) { return t == ElemType::kF32 ? 4 : 2; }

const char* ElemTypeName(ElemType t) {
  switch (t) {
    case ElemType::kF32: return "f32";
    case ElemType::kF16: return "f16";
    case ElemType::kBF16: return "bf16";
  }
  return "?";
}

int64_t Array::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<int64_t> CheckedNumBytes(const std::vector<int64_t>& shape, int elem_size,
                                        uint64_t limit_bytes) {
  uint64_t bytes = static_cast<uint64_t>(elem_size);
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension ", d));
    if (d == 0) zero = true;
  }
  if (zero) return 0;
  for (int64_t d : shape) {
    const uint64_t ud = static_cast<uint64_t>(d);
    if (bytes > limit_bytes / ud) {
      return absl::InvalidArgumentError("shape is larger than the file holds");
    }
    bytes *= ud;
  }
  if (bytes > limit_bytes) return absl::InvalidArgumentError("shape is larger than the file holds");
  return static_cast<int64_t>(bytes);
}

std::vector<float> ToFloats(const Array& a) {
  const int64_t n = static_cast<int64_t>(a.data.size()) / ElemSize(a.dtype);
  std::vector<float> out(static_cast<size_t>(n));
  const char* p = a.data.data();
  for (int64_t i = 0; i < n; ++i) {
    if (a.dtype == ElemType::kF32) {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = a.dtype == ElemType::kF16 ? HalfBitsToFloat(h) : Bf16BitsToFloat(h);
    }
  }
  return out;
}

Array FromFloats(std::vector<int64_t> shape, const float* values) {
  Array a;
  a.dtype = ElemType::kF32;
  a.shape = std::move(shape);
  a.data.assign(reinterpret_cast<const char*>(values), static_cast<size_t>(a.NumElements()) * 4);
  return a;
}

absl::StatusOr<uint64_t> OpenForRead(const std::string& path, std::ifstream* in) {
  in->open(path, std::ios::binary);
  if (!*in) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  in->seekg(0, std::ios::end);
  const std::streamoff size = in->tellg();
  in->seekg(0);
  if (size < 0) return absl::InternalError(absl::StrCat("cannot size ", path));
  return static_cast<uint64_t>(size);
}

absl::Status ReadFileToString(const std::string& path, std::string* out) {
  std::ifstream in;
  absl::StatusOr<uint64_t> size = OpenForRead(path, &in);
  if (!size.ok()) return size.status();
  out->resize(static_cast<size_t>(*size));
  if (*size > 0 && !in.read(out->data(), static_cast<std::streamsize>(*size))) {
    return absl::DataLossError(absl::StrCat("short read from ", path));
  }
  return absl::OkStatus();
}

absl::Status WriteStringToFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace plume::io
