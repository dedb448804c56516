// The GEMV through cuBLASLt's FP8 GEMM (W8A8), for FP8 activations: its plan
// and launcher, called from gemv.cu's dispatch (kernels/cuda/NOTES.md, "The
// cuBLASLt path"). Private to kernels/cuda/src.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "plume/cuda/gemv.h"

namespace plume::cuda::lt_gemv {

// Whether p's types, scale mode and shape are ones this path can take: FP8
// activations (not E5M2 x E5M2, which cuBLASLt lacks), NONE/TENSOR/ROW
// scales, F32/F16/BF16 results, columns a multiple of 16 (then a row's codes
// are the row, with no padding, and both operands' rows are 16-byte
// multiples). Asks nothing of the device.
bool Takes(const GemvProblem& p);

// Whether cuBLASLt's FP8 GEMM runs on a device of compute capability cc.
inline bool Runs(int cc) { return cc >= 89; }

struct Plan {
  const void* entry = nullptr;  // the cached matmul configuration (gemv_cublaslt.cu)
  bool staged = false;          // results go through F32 in the workspace, then the epilogue
  bool padded = false;          // the batch is padded to a multiple of 16 vectors
  int64_t n = 0;                // GEMM columns: the batch, or the padded batch
  int64_t ldd = 0;              // GEMM result rows apart: y's rows, or 16-padded when staged
  // Workspace offsets, bytes. Everything lies at or past `reserved`, so the
  // other kernels' counters (which precede it) are never touched.
  int64_t off_x = 0, off_d = 0, off_lt = 0, lt_bytes = 0, total = 0;
};

// Plans p on `device` (compute capability cc), the workspace's first
// `reserved` bytes left alone. The first plan of a (device, shape, batch,
// dtypes, scale, alignment) asks cuBLASLt's heuristic and caches its answer.
// cudaErrorNotSupported when the path is not available for p there.
cudaError_t MakePlan(const GemvProblem& p, int device, int cc, int64_t reserved, Plan* out);

// Runs p as planned on `stream`.
cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream);

}  // namespace plume::cuda::lt_gemv
