// FP8 GEMV on the GPU: y[b] = scale . (W x[b]) for packed FP8 W resident in
// device memory. One launcher, one dispatch point (src/gemv.cu, the only
// translation unit that instantiates the kernels).
//
// How it works (kernels/cuda/NOTES.md has the measurements):
//  - W is streamed once per batch tile of up to 64 vectors. Each warp owns 16
//    rows and walks 128-column chunks; every lane loads 32 contiguous bytes of
//    two rows, decodes them to FP16 in registers (native cvt on sm_89+, bit
//    tricks elsewhere) and feeds tensor-core mma (m16n8k16; two m16n8k8 on
//    sm_75). The vectors are the mma's N side: 8, 16, 32 or 64 columns.
//  - Activations reach the kernel as FP16. F16 inputs whose columns are a
//    multiple of 128 are read in place; everything else goes through a small
//    pre-pass: F32 is split into hi + lo FP16 planes (two mma columns per
//    vector, so F32 accuracy is kept), BF16 and F32 are scaled per vector by a
//    power of two into FP16 range, FP8 inputs are decoded exactly.
//  - Columns are split across blocks when rows alone can't fill the GPU; the
//    last block of a row tile adds the partial sums in a fixed order
//    (deterministic) and applies scales and the output conversion.
#pragma once

#include <cstdint>
#include <functional>

#include <cuda_runtime.h>

#include "plume/cuda/fp8_codec.h"
#include "plume/kernels/layout.h"
#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume::cuda {

// Which GEMV kernel family runs a problem. kAuto lets the dispatcher choose
// (gemv.cu); the others force one, for tests and benchmarks.
//  - kMma: mma.sync m16n8k16, every GPU from sm_75 (the pre-Hopper path).
//  - kWgmma: TMA + mbarrier pipeline + wgmma, sm_90a (Hopper) only.
//  - kCublasLt: cuBLASLt's FP8 GEMM (W8A8), for FP8 activations (not E5M2
//    with E5M2 weights), NONE/TENSOR/ROW scales and columns a multiple of 16,
//    on sm_89 and later where cuBLASLt has an algorithm for the shape.
// kAuto times every family that can run a problem on its first call per
// (device, shape, batch bucket, activation dtype, scale mode, format, decode
// path) and keeps the fastest; cuBLASLt is kept only when its results agree
// with plume's kernel on that call (kernels/cuda/NOTES.md).
enum class GemvKernel : uint8_t { kAuto = 0, kMma = 1, kWgmma = 2, kCublasLt = 3 };
const char* GemvKernelName(GemvKernel k);
// "auto", "mma", "wgmma" or "cublaslt"; false for anything else.
bool ParseGemvKernel(const char* name, GemvKernel* out);
// Whether cuBLASLt (libcublasLt.so of the CUDA major version plume was
// built with, opened on first use) is there: kCublasLt runs nothing without
// it, and kAuto leaves it out.
bool CublasLtLoadable();

// plume's GemvProblem (plume/kernels/problem.h: the matrix, the vectors)
// with every pointer in device memory, plus what only the GPU needs.
struct GemvProblem : plume::GemvProblem {
  // Rows holding an E4M3 NaN code (1 byte per row, device memory), or null
  // when there are none. The software E4M3 decode reads NaN codes as finite
  // numbers, so these rows' results are set to NaN explicitly (see
  // FindNanRows).
  const uint8_t* nan_rows = nullptr;
  DecodePath path = DecodePath::kNative;
  GemvKernel kernel = GemvKernel::kAuto;
};

// The kernel family Gemv runs p with on `device` (kAuto resolved), or kAuto
// when p is not a valid problem there (a forced kernel the device lacks, or
// one that does not take p, as cuBLASLt does not F16 activations).
// *measured (optional) tells whether kAuto's choice was timed (on a first
// call of p's shape and batch bucket) rather than the static one.
GemvKernel ChosenGemvKernel(const GemvProblem& p, int device, bool* measured = nullptr);

// The decode path for a device: native on compute capability 8.9 and later.
DecodePath DefaultDecodePath(int device);

// Bytes of device workspace Gemv needs for this problem on `device`. The
// workspace must be zeroed once when allocated (it holds counters that each
// launch leaves at zero), 256-byte aligned (as cudaMalloc's is), and used by
// one stream at a time. It includes cuBLASLt's workspace when that runs.
int64_t GemvWorkspaceBytes(const GemvProblem& p, int device);

// Runs the GEMV on `stream`. Returns cudaErrorInvalidValue for bad arguments
// (a format, decode path, kernel or scale mode no kernel is chosen for among
// them: BLOCK128X128 too, which backends hold as BLOCK128) and
// cudaErrorNotSupported for the native path on a device older than sm_89,
// the wgmma kernel on a device other than sm_90, or the cuBLASLt path forced
// on a problem or device it does not take (see kCublasLt).
cudaError_t Gemv(const GemvProblem& p, void* workspace, int64_t workspace_bytes,
                 cudaStream_t stream);

// The same, planned once: `workspace(bytes)` is asked for a workspace of at
// least `bytes` (the rules above apply) and returns it, or null when it has
// none (the call then returns cudaErrorMemoryAllocation and launches
// nothing). Saves the second plan of GemvWorkspaceBytes + Gemv.
cudaError_t Gemv(const GemvProblem& p, const std::function<void*(int64_t bytes)>& workspace,
                 cudaStream_t stream);

// Marks rows of an E4M3 matrix that hold a NaN code: nan_rows[r] = 1, else 0.
// *any_nan (device int) is set to 1 if there is one, else left as it was.
cudaError_t FindNanRows(const uint32_t* words, int64_t rows, int64_t cols, uint8_t* nan_rows,
                        int* any_nan, cudaStream_t stream);

}  // namespace plume::cuda
