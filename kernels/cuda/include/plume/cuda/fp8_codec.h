// FP8 on the GPU: decoding (two paths) and quantize-and-pack, bit-identical
// to the CPU reference (kernels/reference). Host launchers take a stream and
// return cudaError_t; the kernel templates live in src/fp8_codec.cu, the one
// translation unit that instantiates them.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "plume/kernels/layout.h"
#include "plume/kernels/types.h"

namespace plume::cuda {

// How device code turns FP8 codes into numbers.
//  kNative:   the cuda_fp8.h conversions (hardware cvt on sm_89 and later).
//  kSoftware: bit tricks that need no FP8 hardware (sm_75/80/86): E5M2 is the
//             high byte of an FP16; E4M3 is shifted into an FP16 and rescaled
//             by 2^8, with NaN codes fixed up so results match the reference.
enum class DecodePath : uint8_t { kNative = 0, kSoftware = 1 };
const char* DecodePathName(DecodePath p);

// Writes the 256 decoded values of `format` to out[0..255] (device memory),
// through `path`. The GPU tests compare this with the CPU table.
cudaError_t DecodeAllCodes(Fp8Format format, DecodePath path, float* out, cudaStream_t stream);

// Bytes of device workspace QuantizePack needs.
int64_t QuantizePackWorkspaceBytes(int64_t rows, int64_t cols, ScaleMode mode);

// Quantizes a row-major device matrix (F32, F16 or BF16) into plume's packed
// layout: scales as ref::ComputeScales (amax over finite values / fp8 max),
// then code = Encode(x / scale). words: layout.total_words(); scales:
// NumScales(mode, rows, cols); workspace: QuantizePackWorkspaceBytes.
// All pointers are device memory.
cudaError_t QuantizePack(const void* src, DType src_dtype, int64_t rows, int64_t cols,
                         Fp8Format format, ScaleMode mode, bool saturate, uint32_t* words,
                         float* scales, void* workspace, cudaStream_t stream);

}  // namespace plume::cuda
