// The Hopper GEMV (gemv_wgmma.cu, built for sm_90a only): its plan and
// launcher, called from gemv.cu's dispatch. Private to kernels/cuda/src.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "plume/cuda/gemv.h"

namespace plume::cuda::wgmma_gemv {

// Whether the Hopper kernels run on a device of compute capability cc
// (major * 10 + minor): sm_90a code runs on 9.0 only.
inline bool Runs(int cc) { return cc == 90; }

struct Plan {
  int n = 8;                  // wgmma N: FP16 columns per launch (8, 16, 32, 64 or 128)
  bool split = false;         // F32: hi + lo columns per vector
  int vec_per_launch = 0;
  int chunks = 0;             // 128-column chunks of a row
  bool pair = false;          // paired stages: blocks of 64 rows, chunks alternating between warp groups
  int row_tiles = 0;          // blocks of tile_rows() rows
  int splits = 1;             // k splits per row tile
  int chunks_per_split = 0;
  bool cluster = false;       // splits may finish through a cluster's shared memory
  int slots = 0;              // blocks the device runs at once
  size_t smem = 0;            // dynamic shared memory per block
  int tile_rows() const { return pair ? 64 : 128; }  // rows per block
  // Workspace offsets, bytes.
  int64_t off_colmul = 0, off_image = 0, off_partial = 0, total = 0;
};

// Plans p for a device with `sms` multiprocessors. Fails with
// cudaErrorInvalidValue when the problem is not one these kernels take.
cudaError_t MakePlan(const GemvProblem& p, int sms, Plan* out);

// Runs p as planned. The workspace follows Gemv's rules (zeroed once when
// allocated; one stream at a time).
cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream);

}  // namespace plume::cuda::wgmma_gemv
