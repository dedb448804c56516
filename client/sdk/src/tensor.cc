#include "plume/client/tensor.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "plume/io/array.h"

namespace plume {

TensorRef TensorRef::F32(const float* data, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return TensorRef{v1::DTYPE_F32, std::move(shape),
                   std::string_view(reinterpret_cast<const char*>(data), static_cast<size_t>(n) * 4)};
}

int DTypeBytes(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32: return 4;
    case v1::DTYPE_F16:
    case v1::DTYPE_BF16: return 2;
    case v1::DTYPE_E4M3:
    case v1::DTYPE_E5M2: return 1;
    default: return 0;
  }
}

const char* DTypeShortName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32: return "f32";
    case v1::DTYPE_F16: return "f16";
    case v1::DTYPE_BF16: return "bf16";
    case v1::DTYPE_E4M3: return "e4m3";
    case v1::DTYPE_E5M2: return "e5m2";
    default: return "unspecified";
  }
}

const char* ScaleModeShortName(v1::ScaleMode mode) {
  switch (mode) {
    case v1::SCALE_MODE_NONE: return "none";
    case v1::SCALE_MODE_TENSOR: return "tensor";
    case v1::SCALE_MODE_ROW: return "row";
    case v1::SCALE_MODE_BLOCK128: return "block128";
    case v1::SCALE_MODE_BLOCK128X128: return "block128x128";
    default: return "unspecified";
  }
}

const char* KvScaleModeShortName(v1::KVScaleMode mode) {
  switch (mode) {
    case v1::KV_SCALE_MODE_NONE: return "none";
    case v1::KV_SCALE_MODE_TENSOR: return "tensor";
    case v1::KV_SCALE_MODE_HEAD: return "head";
    case v1::KV_SCALE_MODE_TOKEN_BLOCK: return "block";
    default: return "unspecified";
  }
}

absl::Status ValidateTensor(const TensorRef& t) {
  const int esize = DTypeBytes(t.dtype);
  if (esize == 0) return absl::InvalidArgumentError("tensor dtype is unspecified or unknown");
  uint64_t n = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative tensor dimension ", d));
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / 8 / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError("tensor shape overflows");
    }
    n *= static_cast<uint64_t>(d);
  }
  if (n * esize != t.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor holds ", t.bytes.size(), " bytes but its ",
                                                   DTypeShortName(t.dtype), " shape needs ", n * esize));
  }
  return absl::OkStatus();
}

int64_t HostTensor::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::vector<float>> HostTensor::ToFloats() const {
  if (auto s = ValidateTensor(ref()); !s.ok()) return s;
  io::Array a;
  switch (dtype) {
    case v1::DTYPE_F32: a.dtype = io::ElemType::kF32; break;
    case v1::DTYPE_F16: a.dtype = io::ElemType::kF16; break;
    case v1::DTYPE_BF16: a.dtype = io::ElemType::kBF16; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("cannot convert a ", DTypeShortName(dtype), " tensor to floats"));
  }
  a.shape = shape;
  a.data = data;
  return io::ToFloats(a);
}

HostTensor FromProto(const v1::Tensor& t) {
  HostTensor h;
  h.dtype = t.dtype();
  h.shape.assign(t.shape().begin(), t.shape().end());
  h.data = t.data();
  return h;
}

HostTensor FromProto(v1::Tensor&& t) {
  HostTensor h;
  h.dtype = t.dtype();
  h.shape.assign(t.shape().begin(), t.shape().end());
  h.data = std::move(*t.mutable_data());
  return h;
}

void ToProto(const TensorRef& t, v1::Tensor* out) {
  out->set_dtype(t.dtype);
  out->mutable_shape()->Assign(t.shape.begin(), t.shape.end());
  out->set_data(t.bytes.data(), t.bytes.size());
}

}  // namespace plume
