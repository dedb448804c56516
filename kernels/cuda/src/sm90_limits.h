// Sizes of an sm_90 GPU that the Hopper kernels plan their shared memory by.
// Plain constants, apart from sm90.cuh (device code only), so that the CPU
// emulation tests (tests/emu) see the same numbers as the kernels.
#pragma once

namespace plume::cuda {

// The most dynamic shared memory one block may opt into on sm_90 (H100,
// H200): 227 KiB (cudaDevAttrMaxSharedMemoryPerBlockOptin).
inline constexpr int kSm90BlockSmemBytes = 227 * 1024;

}  // namespace plume::cuda
