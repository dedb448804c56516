// What the attention kernel headers take from the device: the register
// helpers of fp8_regs.cuh (FP8 decode, mma, cp.async, Store) and the two ways
// a kernel declares shared memory. The CPU emulation (tests/emu/emu_cuda.h)
// defines PLUME_CUDA_EMULATION and all of these itself before it includes
// the kernel headers, so they compile there unchanged.
#pragma once

#ifndef PLUME_CUDA_EMULATION
#include <cuda_fp16.h>

#include "fp8_regs.cuh"

// A block-wide array: PLUME_SHARED float x[n];
#define PLUME_SHARED __shared__
// The launch's dynamic shared memory, as __half name[].
#define PLUME_DYNAMIC_SMEM(name) extern __shared__ __align__(16) __half name[]
#endif
