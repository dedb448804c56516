// Error handling for CUDA code: launchers return cudaError_t and never abort.
#pragma once

#include <cuda_runtime.h>

// Returns the error of a CUDA runtime call from the enclosing function.
#define PLUME_CUDA_TRY(expr)                     \
  do {                                           \
    const cudaError_t plume_err_ = (expr);       \
    if (plume_err_ != cudaSuccess) return plume_err_; \
  } while (0)

// After a kernel launch: the launch's own error (bad configuration, no
// kernel image for this device, ...).
#define PLUME_CUDA_TRY_LAUNCH() PLUME_CUDA_TRY(cudaGetLastError())
