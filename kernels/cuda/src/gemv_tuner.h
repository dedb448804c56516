// The GEMV dispatcher's memory: for each (device, shape, batch bucket,
// activation dtype, scale mode, format, decode path) the kernel family that
// measured fastest there, timed once on first use (gemv.cu) and kept for the
// life of the process. Lookups take no lock. Private to kernels/cuda/src.
#pragma once

#include <cstdint>
#include <functional>

#include <cuda_runtime.h>

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

inline constexpr int kMaxCandidates = 3;

// How a cuBLASLt candidate is checked against plume's kernel: launch(i, y)
// runs candidate i on the call's data with F32 results at y (device memory),
// and a and b are two such buffers of `count` floats.
struct Check {
  std::function<cudaError_t(int i, float* y)> launch;
  float* a = nullptr;
  float* b = nullptr;
  int64_t count = 0;
};

// Times n candidate kernels (launch(i) runs candidate i on the call's own
// data) and records the fastest for key: rounds that run every candidate
// twice in a row and time the second run between its own pair of events
// (TuneOrder, gemv_tuner_order.h: each kernel meets the L2 it leaves itself;
// the rounds interleave the candidates, so clock drift hits all alike), and
// the medians are compared (one slow launch does not decide). A cuBLASLt
// winner, whose accumulation is the library's, is kept only when its F32
// results Agree with the fastest plume kernel's on this call; else that
// kernel is recorded. The last launch is the recorded kernel's, so the
// call's result is in place. Not for a stream being captured into a graph.
// With PLUME_GEMV_TUNE_LOG=1 each measurement's medians go to stderr.
cudaError_t TuneAndLaunch(const Key& key, const GemvKernel* kernels, int n,
                          const std::function<cudaError_t(int)>& launch, const Check& check,
                          cudaStream_t stream);

// The relative L2 difference of F32 results for a cuBLASLt candidate to be
// kept: half the bound that GEMVs with FP8 activations served by cuBLASLt
// promise (rel. L2 1e-3 for F32 results, docs/api.md), so that a result this
// close to plume's kernel's (1.4e-6 at worst) meets it with room. Hopper's
// FP8 tensor cores accumulate inside an instruction with fewer bits than
// FP32: cuBLASLt measured 1.2e-4 to 2.8e-4 on the GPU test grid
// (kernels/cuda/NOTES.md). Checked at F32 for every output dtype, since the
// key does not hold the output dtype.
inline constexpr double kAgreement = 5e-4;

// Whether F32 results a and b (`count` values, host memory) agree: NaN in
// the same places, infinities equal, and the relative L2 difference of the
// rest within kAgreement.
bool Agree(const float* a, const float* b, int64_t count);

}  // namespace plume::cuda::gemv_tuner
