// The flash-attention prefill kernels, called from the dispatch
// (attention_dispatch.cu): the mma.sync one (src/attention_prefill.cu,
// sm_80+) and the Hopper one (src/attention_prefill_wgmma.cu, sm_90a).
// Declarations only.
#pragma once

#include <cuda_runtime.h>

#include "plume/cuda/attention.h"

namespace plume::cuda {

// True when the flash prefill runs padded head dim kd (64, 128, 256, 512) on
// `device`: sm_80+ and its shared memory fits. Raises the kernel's dynamic
// shared memory limit once.
bool PrefillFaAvailable(int kd, int device);

// Runs the flash prefill for a valid problem with padded head dim kd (where
// PrefillFaAvailable said yes).
cudaError_t PrefillFa(const AttentionProblem& p, int kd, cudaStream_t stream);

// True when the Hopper flash prefill runs padded head dim kd (128) on
// `device`: compute capability 9.0 and its shared memory fits. Raises the
// kernels' dynamic shared memory limit once.
bool PrefillWgmmaAvailable(int kd, int device);

// Runs the Hopper flash prefill for a valid problem with padded head dim kd
// (where PrefillWgmmaAvailable said yes).
cudaError_t PrefillWgmma(const AttentionProblem& p, int kd, cudaStream_t stream);

}  // namespace plume::cuda
