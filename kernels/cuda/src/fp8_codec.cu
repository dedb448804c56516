// The only translation unit that instantiates the FP8 codec kernels.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
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
  v = partial[0];
#pragma unroll
  for (int i = 1; i < kThreads / 32; ++i) v = fmaxf(v, partial[i]);
  __syncthreads();  // partial may be reused by the caller's next call
  return v;
}

// Quantizing works on groups of 16 consecutive elements of a row: one
// 16-byte store of codes, never straddling a row (rows are padded to 16
// codes) or a 128-column block. Rows whose length is a multiple of 16 (and a
// 16-byte aligned source) are read with 16-byte loads; others element by
// element. Positions past the row's end encode as 0, the padding code.
struct Src {
  const void* p;
  int64_t rows, cols;
  bool vec;
};

template <DType kSrc>
__device__ __forceinline__ float FromBits(uint32_t b) {
  if constexpr (kSrc == DType::kF16) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
  } else {
    return __uint_as_float(b << 16);
  }
}

template <DType kSrc>
__device__ __forceinline__ void LoadGroup(const Src& s, int64_t row, int64_t c0, float (&v)[16]) {
  const int64_t base = row * s.cols + c0;
  if (s.vec) {
    if constexpr (kSrc == DType::kF32) {
      const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(s.p) + base);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 f = __ldcs(q + i);
        v[4 * i] = f.x;
        v[4 * i + 1] = f.y;
        v[4 * i + 2] = f.z;
        v[4 * i + 3] = f.w;
      }
    } else {
      const uint4* q = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(s.p) + base);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint4 u = __ldcs(q + i);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          v[8 * i + 2 * j] = FromBits<kSrc>(w[j] & 0xffffu);
          v[8 * i + 2 * j + 1] = FromBits<kSrc>(w[j] >> 16);
        }
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < 16; ++k) v[k] = c0 + k < s.cols ? Load<kSrc>(s.p, base + k) : 0.0f;
  }
}

__device__ __forceinline__ float GroupAmax(const float (&v)[16]) {
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < 16; ++k) m = fmaxf(m, FiniteAbs(v[k]));
  return m;
}

// fp8::Encode of v / scale, out of line: inlined, its two formats' branches
// were unrolled 16 times per group, and up to 128 times per thread in
// RowInRegistersKernel, for every source dtype and arch, which made this
// file the slowest of the build to compile (about 26 s per arch against 8 s
// out of line, sm_80). The software path pays a call per element: 1.18-1.28x
// the kernel's time for non-saturating uploads on an H200, 0.13-0.22 ms more
// for a 16384² matrix (bench/RESULTS-gpu.md); saturating ones on sm_89+ do
// not take it.
__device__ __noinline__ uint32_t SoftwareEncode(float v, float scale, Fp8Format f, bool saturate) {
  return fp8::Encode(v / scale, f, saturate);
}

// Codes of v / scale, exactly as the reference encodes them, stored as one
// 16-byte piece of row `row`.
__device__ __forceinline__ void StoreGroup(const float (&v)[16], float scale, Fp8Format f,
                                           bool saturate, uint32_t* words, int64_t wpr,
                                           int64_t row, int64_t c0) {
  uint32_t w[4] = {0, 0, 0, 0};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if (saturate) {
    // The hardware's saturating round-to-nearest-even conversion, two at a
    // time. It agrees with fp8::Encode on every finite value and infinity;
    // NaN keeps its sign in plume's encoding, so NaN is patched.
    const __nv_fp8_interpretation_t kind = f == Fp8Format::kE4M3 ? __NV_E4M3 : __NV_E5M2;
    const uint32_t nan = f == Fp8Format::kE4M3 ? 0x7fu : 0x7eu;
#pragma unroll
    for (int k = 0; k < 16; k += 2) {
      const float a = v[k] / scale, b = v[k + 1] / scale;
      uint32_t pair = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, kind);
      if (isnan(a)) pair = (pair & 0xff00u) | nan | (signbit(a) ? 0x80u : 0u);
      if (isnan(b)) pair = (pair & 0x00ffu) | ((nan | (signbit(b) ? 0x80u : 0u)) << 8);
      w[k >> 2] |= pair << (8 * (k & 3));
    }
  } else
#endif
  {
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      w[k >> 2] |= SoftwareEncode(v[k], scale, f, saturate) << (8 * (k & 3));
    }
  }
  *reinterpret_cast<uint4*>(words + row * wpr + c0 / 4) = make_uint4(w[0], w[1], w[2], w[3]);
}

// NONE and TENSOR: one thread per group. TENSOR takes its scale from the amax
// the previous kernel left in *amax (and block 0 writes it out).
template <DType kSrc>
__global__ void PackKernel(Src s, Fp8Format f, bool saturate, const float* amax, float* scales,
                           uint32_t* words) {
  const int64_t wpr = PackedLayout{s.rows, s.cols}.words_per_row();
  const int64_t gpr = wpr / 4, groups = s.rows * gpr;
  const float scale = amax != nullptr ? fp8::ScaleFromAmax(*amax, f) : 1.0f;
  if (amax != nullptr && blockIdx.x == 0 && threadIdx.x == 0) scales[0] = scale;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / gpr, c0 = (i % gpr) * 16;
    float v[16];
    LoadGroup<kSrc>(s, r, c0, v);
    StoreGroup(v, scale, f, saturate, words, wpr, r, c0);
  }
}

// TENSOR, first pass: the amax of everything into *amax (zeroed before;
// non-negative floats order like their bit patterns, so atomicMax on the bits).
template <DType kSrc>
__global__ void AmaxKernel(Src s, float* amax) {
  const int64_t gpr = PackedLayout{s.rows, s.cols}.words_per_row() / 4, groups = s.rows * gpr;
  float m = 0.0f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float v[16];
    LoadGroup<kSrc>(s, i / gpr, (i % gpr) * 16, v);
    m = fmaxf(m, GroupAmax(v));
  }
  m = BlockMax(m);
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned*>(amax), __float_as_uint(m));
}

// ROW: one block per row, two passes over it; the second finds the row in L2.
template <DType kSrc>
__global__ void RowKernel(Src s, Fp8Format f, bool saturate, float* scales, uint32_t* words) {
  const int64_t wpr = PackedLayout{s.rows, s.cols}.words_per_row(), gpr = wpr / 4;
  for (int64_t r = blockIdx.x; r < s.rows; r += gridDim.x) {
    float m = 0.0f;
    for (int64_t g = threadIdx.x; g < gpr; g += kThreads) {
      float v[16];
      LoadGroup<kSrc>(s, r, g * 16, v);
      m = fmaxf(m, GroupAmax(v));
    }
    const float scale = fp8::ScaleFromAmax(BlockMax(m), f);
    if (threadIdx.x == 0) scales[r] = scale;
    for (int64_t g = threadIdx.x; g < gpr; g += kThreads) {
      float v[16];
      LoadGroup<kSrc>(s, r, g * 16, v);
      StoreGroup(v, scale, f, saturate, words, wpr, r, g * 16);
    }
  }
}

// ROW for rows of up to kThreads * 16 * kGroups elements: one block per row,
// the row held in registers between the amax and the encoding, so the source
// is read from memory exactly once.
template <DType kSrc, int kGroups>
__global__ void __launch_bounds__(kThreads)
    RowInRegistersKernel(Src s, Fp8Format f, bool saturate, float* scales, uint32_t* words) {
  const int64_t wpr = PackedLayout{s.rows, s.cols}.words_per_row(), gpr = wpr / 4;
  for (int64_t r = blockIdx.x; r < s.rows; r += gridDim.x) {
    float v[kGroups][16];
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
      const int64_t g = threadIdx.x + int64_t{j} * kThreads;
      if (g < gpr) {
        LoadGroup<kSrc>(s, r, g * 16, v[j]);
        m = fmaxf(m, GroupAmax(v[j]));
      }
    }
    const float scale = fp8::ScaleFromAmax(BlockMax(m), f);
    if (threadIdx.x == 0) scales[r] = scale;
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
      const int64_t g = threadIdx.x + int64_t{j} * kThreads;
      if (g < gpr) StoreGroup(v[j], scale, f, saturate, words, wpr, r, g * 16);
    }
  }
}

// BLOCK128: eight lanes per (row, 128-column block), one group each, one pass.
template <DType kSrc>
__global__ void Block128Kernel(Src s, Fp8Format f, bool saturate, float* scales, uint32_t* words) {
  const PackedLayout l{s.rows, s.cols};
  const int64_t wpr = l.words_per_row(), gpr = wpr / 4, nb = l.blocks_per_row();
  const int64_t blocks = s.rows * nb;
  const int sub = threadIdx.x & 7;
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 8;
       b - (threadIdx.x & 31) / 8 < blocks;  // whole warps iterate together for the shuffles
       b += static_cast<int64_t>(gridDim.x) * (kThreads / 8)) {
    const bool live = b < blocks;
    const int64_t r = live ? b / nb : 0, g = (live ? b % nb : 0) * 8 + sub;
    const bool in = live && g < gpr;
    float v[16];
    if (in) {
      LoadGroup<kSrc>(s, r, g * 16, v);
    } else {
#pragma unroll
      for (int k = 0; k < 16; ++k) v[k] = 0.0f;
    }
    float m = GroupAmax(v);
    for (int o = 4; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const float scale = fp8::ScaleFromAmax(m, f);
    if (live && sub == 0) scales[b] = scale;
    if (in) StoreGroup(v, scale, f, saturate, words, wpr, r, g * 16);
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
  const Src s{src, rows, cols, cols % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0};
  const int64_t groups = rows * (PackedLayout{rows, cols}.words_per_row() / 4);
  switch (mode) {
    case ScaleMode::kNone:
      PackKernel<kSrc><<<GridFor(groups, kThreads), kThreads, 0, stream>>>(s, format, saturate, nullptr, scales, words);
      break;
    case ScaleMode::kTensor: {
      auto* amax = static_cast<float*>(workspace);
      PLUME_CUDA_TRY(cudaMemsetAsync(amax, 0, sizeof(float), stream));
      AmaxKernel<kSrc><<<GridFor(groups, kThreads * 8), kThreads, 0, stream>>>(s, amax);
      PLUME_CUDA_TRY_LAUNCH();
      PackKernel<kSrc><<<GridFor(groups, kThreads), kThreads, 0, stream>>>(s, format, saturate, amax, scales, words);
      break;
    }
    case ScaleMode::kRow: {
      int device = 0, sms = 0, l2 = 0;
      PLUME_CUDA_TRY(cudaGetDevice(&device));
      PLUME_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      const int64_t gpr = PackedLayout{rows, cols}.words_per_row() / 4;
      const unsigned resident = static_cast<unsigned>(std::min<int64_t>(rows, int64_t{sms} * 8));
      if (gpr <= kThreads * 4) {
        RowInRegistersKernel<kSrc, 4><<<resident, kThreads, 0, stream>>>(s, format, saturate, scales, words);
      } else if (gpr <= kThreads * 8) {
        RowInRegistersKernel<kSrc, 8><<<resident, kThreads, 0, stream>>>(s, format, saturate, scales, words);
      } else {
        // Longer rows: two passes per row, with few enough rows in flight
        // that they stay in L2 between the passes.
        PLUME_CUDA_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
        const int64_t fit = std::max<int64_t>(1, int64_t{l2} / 2 / (cols * DTypeSize(kSrc)));
        const int64_t blocks = std::min<int64_t>(rows, std::clamp<int64_t>(fit, 2 * sms, 8 * sms));
        RowKernel<kSrc><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(s, format, saturate,
                                                                               scales, words);
      }
      break;
    }
    case ScaleMode::kBlock128:
      Block128Kernel<kSrc><<<GridFor(NumScales(mode, rows, cols), kThreads / 8), kThreads, 0, stream>>>(
          s, format, saturate, scales, words);
      break;
    default: return cudaErrorInvalidValue;  // QuantizePack refuses the others first
  }
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace

const char* DecodePathName(DecodePath p) {
  switch (p) {
    case DecodePath::kNative: return "native";
    case DecodePath::kSoftware: return "software";
  }
  return "unknown";
}

cudaError_t DecodeAllCodes(Fp8Format format, DecodePath path, float* out, cudaStream_t stream) {
  if (format != Fp8Format::kE4M3 && format != Fp8Format::kE5M2) return cudaErrorInvalidValue;
  switch (path) {
    case DecodePath::kNative:
      DecodeAllKernel<DecodePath::kNative><<<1, 256, 0, stream>>>(format, out);
      break;
    case DecodePath::kSoftware:
      DecodeAllKernel<DecodePath::kSoftware><<<1, 256, 0, stream>>>(format, out);
      break;
    default: return cudaErrorInvalidValue;
  }
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

int64_t QuantizePackWorkspaceBytes(int64_t, int64_t, ScaleMode mode) {
  return mode == ScaleMode::kTensor ? static_cast<int64_t>(sizeof(float)) : 0;
}

// The one dispatch point from runtime source dtype to kernel instances.
cudaError_t QuantizePack(const void* src, DType src_dtype, int64_t rows, int64_t cols,
                         Fp8Format format, ScaleMode mode, bool saturate, uint32_t* words,
                         float* scales, void* workspace, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaErrorInvalidValue;
  // Formats and modes the kernels know (BLOCK128X128 checkpoints come
  // pre-packed; nothing quantizes to it).
  if (format != Fp8Format::kE4M3 && format != Fp8Format::kE5M2) return cudaErrorInvalidValue;
  if (mode != ScaleMode::kNone && mode != ScaleMode::kTensor && mode != ScaleMode::kRow &&
      mode != ScaleMode::kBlock128) {
    return cudaErrorInvalidValue;
  }
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
