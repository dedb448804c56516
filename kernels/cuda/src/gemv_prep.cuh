// The activation side of the GEMV kernels, shared by gemv.cu (mma.sync) and
// gemv_wgmma.cu (Hopper): reading an activation of any input dtype as FP32,
// and the per-vector power-of-two exponent that brings F32/BF16 vectors into
// FP16 range. Included by the .cu files only (internal linkage).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/types.h"

namespace plume::cuda {
namespace {

constexpr int kPrepThreads = 256;

// Element i of an activation vector, as FP32 (FP8 codes decoded exactly).
template <DType kIn>
__device__ __forceinline__ float LoadX(const void* x, int64_t i) {
  if constexpr (kIn == DType::kF32) {
    return static_cast<const float*>(x)[i];
  } else if constexpr (kIn == DType::kF16) {
    return __half2float(static_cast<const __half*>(x)[i]);
  } else if constexpr (kIn == DType::kBF16) {
    return Bf16BitsToFloat(static_cast<const uint16_t*>(x)[i]);
  } else if constexpr (kIn == DType::kE4M3) {
    return fp8::Decode(static_cast<const uint8_t*>(x)[i], Fp8Format::kE4M3);
  } else {
    return fp8::Decode(static_cast<const uint8_t*>(x)[i], Fp8Format::kE5M2);
  }
}

// The largest finite |value| over a block of kPrepThreads threads.
__device__ __forceinline__ float BlockMaxAbs(float v) {
  __shared__ float part[kPrepThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  v = part[0];
  for (int i = 1; i < kPrepThreads / 32; ++i) v = fmaxf(v, part[i]);
  return v;
}

// The exponent e such that vector xv (cols elements) times 2^e sits in FP16
// range with its largest value in [2^14, 2^15): 0 for F16 (read as is) and
// FP8 (decoded exactly). The whole block calls it.
template <DType kIn>
__device__ __forceinline__ int VectorExponent(const void* xv, int64_t cols) {
  if constexpr (kIn == DType::kF32 || kIn == DType::kBF16) {
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < cols; i += kPrepThreads) {
      const float a = fabsf(LoadX<kIn>(xv, i));
      if (a <= 3.402823466e38f) amax = fmaxf(amax, a);  // finite values only
    }
    amax = BlockMaxAbs(amax);
    int ex = 0;
    frexpf(amax, &ex);  // amax < 2^ex
    return amax > 0.0f ? min(max(14 - ex, -120), 120) : 0;
  } else {
    return 0;
  }
}

// The factor that undoes the vector's scaling, applied to its results.
template <DType kIn>
__device__ __forceinline__ float ColumnFactor(int e, float x_scale) {
  return (kIn == DType::kE4M3 || kIn == DType::kE5M2) ? x_scale : ldexpf(1.0f, -e);
}

// Calls f(std::integral_constant<DType, T>{}) with the activation dtype t as
// a constant and returns its result; cudaErrorInvalidValue for a dtype that
// is not an activation dtype.
template <typename F>
cudaError_t DispatchXDType(DType t, F&& f) {
  switch (t) {
    case DType::kF32: return f(std::integral_constant<DType, DType::kF32>{});
    case DType::kF16: return f(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16: return f(std::integral_constant<DType, DType::kBF16>{});
    case DType::kE4M3: return f(std::integral_constant<DType, DType::kE4M3>{});
    case DType::kE5M2: return f(std::integral_constant<DType, DType::kE5M2>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace plume::cuda
