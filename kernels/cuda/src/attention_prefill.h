// The flash-attention prefill kernels, called from the dispatch
// (attention_dispatch.cu): the mma.sync one (src/attention_prefill.cu,
// sm_80+) and the Hopper ones (src/attention_prefill_wgmma.cu and
// src/attention_prefill_images.cu, sm_90a).
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

// The Hopper flash prefill over FP16 images of K and V
// (src/attention_prefill_images.cu): true when it runs padded head dim kd
// (64, 128, 256, 512) on `device` (compute capability 9.0, its shared
// memory fits; raises the kernel's dynamic shared memory limit once).
bool PrefillImagesAvailable(int kd, int device);

// Bytes of device workspace it needs: the FP16 K / V images and their
// scales, for as many kv heads at a time as a fixed budget holds.
int64_t PrefillImagesWorkspaceBytes(const AttentionProblem& p, int kd);

// Runs it for a valid problem with padded head dim kd (where
// PrefillImagesAvailable said yes); workspace 128-byte aligned, at least
// PrefillImagesWorkspaceBytes.
cudaError_t PrefillImages(const AttentionProblem& p, int kd, void* workspace, int64_t workspace_bytes,
                          cudaStream_t stream);

}  // namespace plume::cuda
