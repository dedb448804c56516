// Element types, FP8 formats and scaling modes shared by kernels, the CPU
// reference and the server. Numeric values match proto/plume/v1/plume.proto.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PLUME_HD __host__ __device__ __forceinline__
#else
#define PLUME_HD inline
#endif

namespace plume {

enum class DType : uint8_t { kF32 = 1, kF16 = 2, kBF16 = 3, kE4M3 = 4, kE5M2 = 5 };
enum class Fp8Format : uint8_t { kE4M3 = 4, kE5M2 = 5 };
// kBlock128x128: one scale per 128x128 block, as FP8 checkpoints ship them.
// Backends hold such a matrix as kBlock128 (each row takes its block's
// scales: ResidentScaleMode in layout.h), so kernels never see it.
enum class ScaleMode : uint8_t { kNone = 1, kTensor = 2, kRow = 3, kBlock128 = 4, kBlock128x128 = 5 };

PLUME_HD constexpr int DTypeSize(DType t) {
  return t == DType::kF32 ? 4 : (t == DType::kF16 || t == DType::kBF16) ? 2 : 1;
}
PLUME_HD constexpr bool IsFp8(DType t) { return t == DType::kE4M3 || t == DType::kE5M2; }
PLUME_HD constexpr DType ToDType(Fp8Format f) { return static_cast<DType>(f); }

const char* DTypeName(DType t);          // "f32", "f16", "bf16", "e4m3", "e5m2"
const char* ScaleModeName(ScaleMode m);  // "none", "tensor", "row", "block128", "block128x128"

}  // namespace plume
