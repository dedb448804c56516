// The naive reference: what a GEMV and an attention call mean, in FP64 loops
// over the codec (plume/kernels/fp8.h, half.h, layout.h, kv_layout.h) and
// nothing else: the definition of right. The CPU backend's SIMD kernels
// (plume/reference/api.h, attention.h) are tested against it; the GPU
// attention tests check their threaded FP64 copy against it. It shares no
// code with the kernels beyond that codec: its own library
// (plume_kernels_naive), no vector code, no thread pool, no lookup tables.
// Slow by design; for tests.
//
// Both take the problem vocabulary (plume/kernels/problem.h) in host memory
// and write FP64 results to `out`; the problem's own output pointer and dtype
// are not used. Both return false, having written nothing, for a format,
// scale mode or dtype outside its enum.
#pragma once

#include <cstdint>

#include "plume/kernels/problem.h"

namespace plume::naive {

// out[b][r] = sum_c decode(W[r][c]) * scale(r, c) * x[b][c], every term and
// the sum in FP64; x widened exactly (FP8 codes times x_scale). Any scale
// mode, BLOCK128X128 included. NaN codes give NaN results.
// out: [batch][rows] doubles.
bool Gemv(const GemvProblem& p, double* out);

// softmax(scale * q . K^T) . V over the cache dequantized in FP64 (decode *
// scale), two-pass max-subtracted softmax, FP64 sums; masked tokens take no
// part (plume/reference/attention.h states the semantics).
// Queries F32/F16/BF16, widened exactly. out: p's output shape in doubles.
bool Attention(const AttentionProblem& p, double* out);

}  // namespace plume::naive
