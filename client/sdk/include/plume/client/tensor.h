// Tensors as the SDK passes them: a dtype, a shape and raw little-endian,
// row-major bytes (the wire form, DESIGN.md "Wire API").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "plume/v1/attention.pb.h"
#include "plume/v1/plume.pb.h"

namespace plume {

// A non-owning view of a caller's tensor. `bytes` must hold exactly
// prod(shape) elements of `dtype` and outlive the call it is passed to.
struct TensorRef {
  v1::DType dtype = v1::DTYPE_F32;
  std::vector<int64_t> shape;
  std::string_view bytes;

  static TensorRef F32(const float* data, std::vector<int64_t> shape);
};

// An owned tensor, e.g. a GEMV result.
struct HostTensor {
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  std::string data;

  int64_t NumElements() const;
  // The elements as floats (F32 copied; F16/BF16 widened; FP8 is an error).
  absl::StatusOr<std::vector<float>> ToFloats() const;
  TensorRef ref() const { return TensorRef{dtype, shape, data}; }
};

// Bytes per element (4, 2 or 1), or 0 for DTYPE_UNSPECIFIED / unknown values.
int DTypeBytes(v1::DType dtype);
// "f32", "f16", "bf16", "e4m3", "e5m2", or "unspecified".
const char* DTypeShortName(v1::DType dtype);
const char* ScaleModeShortName(v1::ScaleMode mode);  // "none", "tensor", "row", "block128", "block128x128"
const char* KvScaleModeShortName(v1::KVScaleMode mode);  // "none", "tensor", "head", "block"

// INVALID_ARGUMENT unless the dtype is known, the dims are non-negative and
// bytes.size() == prod(shape) * DTypeBytes(dtype).
absl::Status ValidateTensor(const TensorRef& t);

// Converts a wire tensor to / from the owned and view forms.
HostTensor FromProto(const v1::Tensor& t);
HostTensor FromProto(v1::Tensor&& t);
void ToProto(const TensorRef& t, v1::Tensor* out);

}  // namespace plume
