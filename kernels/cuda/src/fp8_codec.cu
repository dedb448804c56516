// The only translation unit that instantiates the FP8 codec kernels.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cfloat>

#include "plume/cuda/check.h"
#include "plume/cuda/fp8_codec.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"

namespace plume::cuda {
namespace {

constexpr int kThreads = 256;

// ------------------------------------------------------------------ decoding

template <DecodePath kPath>
__device__ __forceinline__ float DecodeE4M3(uint8_t c) {
  if constexpr (kPath == DecodePath::kNative) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E4M3)));
  } else {
    // Sign to bit 15, exponent and mantissa to bits 7..13 of an FP16: that is
    // the value times 2^-8 (subnormals included), so scale back by 2^8. The
    // NaN codes would read as 480: fix them up.
    const unsigned short bits = static_cast<unsigned short>(((c & 0x80u) << 8) | ((c & 0x7fu) << 7));
    const float v = __half2float(__ushort_as_half(bits)) * 256.0f;
    return (c & 0x7fu) == 0x7fu ? __int_as_float(0x7fc00000 | ((c & 0x80u) << 24)) : v;
  }
}

template <DecodePath kPath>
__device__ __forceinline__ float DecodeE5M2(uint8_t c) {
  if constexpr (kPath == DecodePath::kNative) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E5M2)));
  } else {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(c << 8)));  // FP16 high byte
  }
}

template <DecodePath kPath>
__global__ void DecodeAllKernel(Fp8Format format, float* out) {
  const int c = threadIdx.x;
  if (c < 256) {
    out[c] = format == Fp8Format::kE4M3 ? DecodeE4M3<kPath>(static_cast<uint8_t>(c))
                                        : DecodeE5M2<kPath>(static_cast<uint8_t>(c));
  }
}

// ---------------------------------------------------------------- quantizing

template <DType kSrc>
__device__ __forceinline__ float Load(const void* src, int64_t i) {
  if constexpr (kSrc == DType::kF32) {
    return static_cast<const float*>(src)[i];
  } else if constexpr (kSrc == DType::kF16) {
    return HalfBitsToFloat(static_cast<const uint16_t*>(src)[i]);
  } else {
    return Bf16BitsToFloat(static_cast<const uint16_t*>(src)[i]);
  }
}

// |x| if finite, else 0: the amax of a group ignores inf and NaN.
__device__ __forceinline__ float FiniteAbs(float x) {
  const float a = fabsf(x);
  return a <= FLT_MAX ? a : 0.0f;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over a block of kThreads threads; every thread gets the result.
__device__ __forceinline__ float BlockMax(float v) {
  __shared__ float partial[kThreads / 32];
  v = WarpMax(v);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.0f;
  v = WarpMax(v);
  __syncthreads();  // partial may be reused by the caller's next call
  return v;
}

// One block per row (grid-stride over rows): out[r] = ScaleFromAmax(amax of
// row r), or the raw amax when kRawAmax (the TENSOR mode's first pass).
template <DType kSrc, bool kRawAmax>
__global__ void RowAmaxKernel(const void* src, int64_t rows, int64_t cols, Fp8Format format,
                              float* out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float m = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) m = fmaxf(m, FiniteAbs(Load<kSrc>(src, r * cols + c)));
    m = BlockMax(m);
    if (threadIdx.x == 0) out[r] = kRawAmax ? m : fp8::ScaleFromAmax(m, format);
  }
}

// The TENSOR scale from the per-row amaxes (one block).
__global__ void TensorScaleKernel(const float* row_amax, int64_t rows, Fp8Format format,
                                  float* scale) {
  float m = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) m = fmaxf(m, row_amax[r]);
  m = BlockMax(m);
  if (threadIdx.x == 0) scale[0] = fp8::ScaleFromAmax(m, format);
}

// One warp per (row, 128-column block).
template <DType kSrc>
__global__ void Block128ScaleKernel(const void* src, int64_t rows, int64_t cols, Fp8Format format,
                                    float* scales) {
  const int64_t nb = (cols + kBlockCols - 1) / kBlockCols;
  const int64_t warps = rows * nb;
  const int lane = threadIdx.x & 31;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; w < warps;
       w += static_cast<int64_t>(gridDim.x) * (kThreads / 32)) {
    const int64_t r = w / nb, c0 = (w % nb) * kBlockCols;
    float m = 0.0f;
    for (int64_t c = c0 + lane; c < c0 + kBlockCols && c < cols; c += 32) {
      m = fmaxf(m, FiniteAbs(Load<kSrc>(src, r * cols + c)));
    }
    m = WarpMax(m);
    if (lane == 0) scales[w] = fp8::ScaleFromAmax(m, format);
  }
}

// One thread per packed word: four codes, element 4j in bits 0-7.
template <DType kSrc>
__global__ void PackKernel(const void* src, int64_t rows, int64_t cols, Fp8Format format,
                           ScaleMode mode, bool saturate, const float* scales, uint32_t* words) {
  const PackedLayout l{rows, cols};
  const int64_t wpr = l.words_per_row(), total = l.total_words();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / wpr, c0 = (i % wpr) * 4;
    uint32_t word = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t c = c0 + k;
      if (c < cols) {
        const float x = Load<kSrc>(src, r * cols + c);
        const uint32_t code = fp8::Encode(x / ScaleAt(scales, mode, l, r, c), format, saturate);
        word |= code << (8 * k);
      }
    }
    words[i] = word;
  }
}

unsigned GridFor(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 65535 * 16 ? 65535 * 16 : blocks);
}

template <DType kSrc>
cudaError_t QuantizePackTyped(const void* src, int64_t rows, int64_t cols, Fp8Format format,
                              ScaleMode mode, bool saturate, uint32_t* words, float* scales,
                              void* workspace, cudaStream_t stream) {
  switch (mode) {
    case ScaleMode::kNone: break;
    case ScaleMode::kTensor: {
      auto* row_amax = static_cast<float*>(workspace);
      RowAmaxKernel<kSrc, true><<<GridFor(rows, 1), kThreads, 0, stream>>>(src, rows, cols, format, row_amax);
      PLUME_CUDA_TRY_LAUNCH();
      TensorScaleKernel<<<1, kThreads, 0, stream>>>(row_amax, rows, format, scales);
      PLUME_CUDA_TRY_LAUNCH();
      break;
    }
    case ScaleMode::kRow:
      RowAmaxKernel<kSrc, false><<<GridFor(rows, 1), kThreads, 0, stream>>>(src, rows, cols, format, scales);
      PLUME_CUDA_TRY_LAUNCH();
      break;
    case ScaleMode::kBlock128:
      Block128ScaleKernel<kSrc><<<GridFor(NumScales(mode, rows, cols), kThreads / 32), kThreads, 0, stream>>>(
          src, rows, cols, format, scales);
      PLUME_CUDA_TRY_LAUNCH();
      break;
  }
  const int64_t total = PackedLayout{rows, cols}.total_words();
  PackKernel<kSrc><<<GridFor(total, kThreads), kThreads, 0, stream>>>(src, rows, cols, format, mode,
                                                                   saturate, scales, words);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace

const char* DecodePathName(DecodePath p) {
  return p == DecodePath::kNative ? "native" : "software";
}

cudaError_t DecodeAllCodes(Fp8Format format, DecodePath path, float* out, cudaStream_t stream) {
  if (path == DecodePath::kNative) {
    DecodeAllKernel<DecodePath::kNative><<<1, 256, 0, stream>>>(format, out);
  } else {
    DecodeAllKernel<DecodePath::kSoftware><<<1, 256, 0, stream>>>(format, out);
  }
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

int64_t QuantizePackWorkspaceBytes(int64_t rows, int64_t, ScaleMode mode) {
  return mode == ScaleMode::kTensor ? rows * static_cast<int64_t>(sizeof(float)) : 0;
}

// The one dispatch point from runtime source dtype to kernel instances.
cudaError_t QuantizePack(const void* src, DType src_dtype, int64_t rows, int64_t cols,
                         Fp8Format format, ScaleMode mode, bool saturate, uint32_t* words,
                         float* scales, void* workspace, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaErrorInvalidValue;
  switch (src_dtype) {
    case DType::kF32:
      return QuantizePackTyped<DType::kF32>(src, rows, cols, format, mode, saturate, words, scales, workspace, stream);
    case DType::kF16:
      return QuantizePackTyped<DType::kF16>(src, rows, cols, format, mode, saturate, words, scales, workspace, stream);
    case DType::kBF16:
      return QuantizePackTyped<DType::kBF16>(src, rows, cols, format, mode, saturate, words, scales, workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace plume::cuda
