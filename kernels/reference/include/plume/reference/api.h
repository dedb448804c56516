// The CPU reference: the definition of right for every plume kernel, and the
// CPU backend. Callers validate arguments first (server/core does); these
// functions assume shapes and buffer sizes are consistent. Those that return
// bool return false, having written nothing, for a value outside its enum (a
// format, scale mode or dtype no code path is chosen for) rather than compute
// something else.
#pragma once

#include <cstdint>

#include "plume/kernels/layout.h"
#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume {
class ThreadPool;
}

namespace plume::ref {

struct QuantizeOptions {
  Fp8Format format = Fp8Format::kE4M3;
  ScaleMode scale_mode = ScaleMode::kRow;
  bool saturate = true;
};

// Computes the FP32 scales of a row-major float matrix for `mode`:
// scale = amax / fp8_max over the finite values of the tensor / row / block;
// 1.0 where that amax is 0 (or there are no finite values); never below
// FLT_MIN. Writes NumScales(mode, rows, cols) floats (nothing for NONE).
//
// Consequences (tested in tests/kernels/layout_scales_test.cc):
//  - an all-zero row/block gets scale 1 and codes 0;
//  - +-inf and NaN do not take part in amax; with saturate, +-inf quantize to
//    +-max (non-saturating: E4M3 NaN, E5M2 +-inf); NaN stays a NaN code
//    (E4M3 0x7F|sign, E5M2 0x7E|sign); a group of only inf/NaN gets scale 1;
//  - one huge value sets the scale of its whole group, so the group's small
//    values may flush to +-0 or FP8 subnormals (use ROW or BLOCK128 to limit
//    the damage to one row or 128 columns).
bool ComputeScales(const float* src, int64_t rows, int64_t cols, ScaleMode mode, Fp8Format format,
                   float* scales);

// Quantizes a row-major source matrix (F32, F16 or BF16, little-endian) to
// packed FP8: code = Encode(x / scale, format, saturate) with IEEE float
// division. Padding codes are zero. `scales` may be null for NONE. `src`
// need not be aligned.
// pool == nullptr: ThreadPool::Default() (the same for GemvF32 / Gemv).
bool QuantizePack(const void* src, DType src_dtype, int64_t rows, int64_t cols,
                  const QuantizeOptions& opts, uint32_t* words, float* scales,
                  ThreadPool* pool = nullptr);

// Writes the dequantized matrix (rows * cols floats, row-major).
bool Dequantize(const MatrixView& w, float* out);

// y[b][r] = sum_c decode(W[r][c]) * scale(r, c) * x[b][c], FP32 accumulation
// (TENSOR/ROW: the row's dot product times its scale; BLOCK128: per-block
// partial sums times the block scale). NaN codes give NaN outputs.
// x: [batch][cols] floats, y: [batch][rows] floats. Multithreaded and
// vectorized (AVX-512 / AVX2 chosen at run time, scalar otherwise).
bool GemvF32(const MatrixView& w, const float* x, int64_t batch, float* y,
             ThreadPool* pool = nullptr);

// True when w is BLOCK128 and every row of each 128-row band has the same
// block scales as the band's first row (bit for bit): what
// MatrixView::uniform_bands may then say.
bool BlockScalesUniformInBands(const MatrixView& w);

// The same GEMV with typed activations and outputs (GemvVectors: FP8 inputs
// are multiplied by x_scale, F16/BF16 outputs rounded to nearest-even).
// Host memory.
bool Gemv(const GemvProblem& p, ThreadPool* pool = nullptr);

// Converts n elements of `dtype` to float (FP8 codes multiplied by `scale`).
bool ToFloat(const void* src, DType dtype, float scale, int64_t n, float* dst);
// Converts n floats to `dtype` (F32, F16 or BF16; RNE); false for FP8.
bool FromFloat(const float* src, int64_t n, DType dtype, void* dst);

// Which vector instruction set GemvF32 uses on this machine: "avx512", "avx2" or "scalar".
const char* GemvIsa();

}  // namespace plume::ref
