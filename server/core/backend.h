// The compute backend interface. A backend owns the memory of the matrices it
// holds (host memory for the CPU backend, device memory for CUDA) and runs
// GEMV on them. server/core talks only to this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/kernels/layout.h"
#include "plume/kernels/types.h"

namespace plume::core {

// What a matrix is: name-independent shape and encoding.
struct MatrixShape {
  int64_t rows = 0;
  int64_t cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  ScaleMode scale_mode = ScaleMode::kRow;
  bool saturate = true;

  PackedLayout layout() const { return PackedLayout{rows, cols}; }
  int64_t num_scales() const { return NumScales(scale_mode, rows, cols); }
  // Bytes resident for the packed codes plus the scales.
  int64_t resident_bytes() const {
    return layout().code_bytes() + num_scales() * int64_t{sizeof(float)};
  }
};

// A matrix held by a backend. Immutable once created; safe to use from many
// threads at once.
class BackendMatrix {
 public:
  virtual ~BackendMatrix() = default;
  const MatrixShape& shape() const { return shape_; }

 protected:
  explicit BackendMatrix(const MatrixShape& shape) : shape_(shape) {}

 private:
  MatrixShape shape_;
};

// One GEMV call: y[b] = W . x[b] for b in [0, batch). Buffers are host memory.
struct GemvArgs {
  const void* x = nullptr;  // [batch][cols] of x_dtype
  DType x_dtype = DType::kF32;
  float x_scale = 1.0f;     // FP8 inputs only
  int64_t batch = 0;
  void* y = nullptr;        // [batch][rows] of y_dtype
  DType y_dtype = DType::kF32;
};

// Device memory of a GPU backend, in bytes.
struct DeviceMemory {
  int64_t used = 0;   // in use on the device, by anyone
  int64_t total = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;

  // GPU backends report their device's memory; others return false.
  virtual bool device_memory(DeviceMemory* /*out*/) const { return false; }

  // Memory this backend can hold matrices in, in bytes (the default budget).
  virtual int64_t memory_capacity_bytes() const = 0;

  // Quantizes a row-major source matrix (F32/F16/BF16, host memory,
  // rows * cols elements) into a new resident matrix.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape,
                                                                  const void* src,
                                                                  DType src_dtype) = 0;

  // Makes a resident matrix from pre-packed words (layout().total_words()) and
  // scales (num_scales()), already validated.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                                    const uint32_t* words,
                                                                    const float* scales) = 0;

  // Copies a matrix's packed words (layout().total_words()) and scales
  // (num_scales()) to host memory: what the durable store writes to disk.
  virtual absl::Status ReadPacked(const BackendMatrix& /*m*/, uint32_t* /*words*/,
                                  float* /*scales*/) {
    return absl::UnimplementedError("this backend cannot read matrices back");
  }

  // Runs y = W x. Arguments are validated by the caller.
  virtual absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) = 0;
};

}  // namespace plume::core
