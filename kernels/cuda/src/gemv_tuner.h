// The GEMV dispatcher's memory: for each (device, shape, batch bucket,
// activation dtype, scale mode, format, decode path) the kernel family that
// measured fastest there, timed once on first use (gemv.cu) and kept for the
// life of the process. Lookups take no lock. Private to kernels/cuda/src.
#pragma once

#include <cstdint>

#include "plume/cuda/gemv.h"

namespace plume::cuda::gemv_tuner {

struct Key {
  int device = 0;
  int64_t rows = 0, cols = 0;
  int batch_bucket = 0;  // BatchBucket(batch)
  DType x_dtype = DType::kF32;
  ScaleMode mode = ScaleMode::kRow;
  Fp8Format format = Fp8Format::kE4M3;
  DecodePath path = DecodePath::kNative;

  bool operator==(const Key& o) const {
    return device == o.device && rows == o.rows && cols == o.cols &&
           batch_bucket == o.batch_bucket && x_dtype == o.x_dtype && mode == o.mode &&
           format == o.format && path == o.path;
  }
};

// Batches are measured in buckets: 1, 2, 3-4, 5-8, ..., 65-128, then 128+.
int BatchBucket(int64_t batch);

Key KeyOf(const GemvProblem& p, int device);

// The kernel measured fastest for key, or kAuto when none was measured yet.
GemvKernel Lookup(const Key& key);

// Records a measured choice (the table keeps the first 4096 keys; later ones
// are measured again on their next use).
void Store(const Key& key, GemvKernel kernel);

}  // namespace plume::cuda::gemv_tuner
