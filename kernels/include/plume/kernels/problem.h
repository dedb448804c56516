// The one vocabulary for plume's two operations, GEMV and attention, shared
// by the naive reference and the CPU backend's kernels (kernels/reference),
// the CUDA launchers (kernels/cuda) and the server's core (server/core).
//
// Each problem is made of two halves:
//  - the resident operand: a packed FP8 matrix (MatrixView) or a paged FP8
//    K/V cache (KvCacheView), which a backend owns;
//  - the call: the vectors (GemvVectors) or queries (AttentionQueries) that
//    come with one request, with their dtypes and shapes, and where the
//    results go.
// GemvProblem and AttentionProblem are the two halves together. They are
// aggregates, so `GemvProblem p{matrix, vectors}` builds one and the fields of
// both halves read as p.rows, p.x and so on.
//
// Memory-space neutral: nothing here says where a pointer points. Whoever runs
// a problem defines it: plume::ref and the CPU backend take host memory,
// plume::cuda device memory (its launchers' headers say so), and the core's
// Backend interface host memory (server/core/backend.h).
//
// Backend-specific knobs are not part of the vocabulary: they are extra fields
// of a type derived from it (cuda::GemvProblem adds the decode path, the kernel
// choice and the NaN-row mask; core::GemvArgs a result stride and a device
// timer).
//
// Callers validate a problem before running it (server/core does); the
// launchers check what they must and fail loudly on a value they do not know.
#pragma once

#include <cstdint>

#include "plume/kernels/kv_layout.h"
#include "plume/kernels/layout.h"
#include "plume/kernels/types.h"

namespace plume {

// A packed FP8 matrix, read-only (layout.h): rows x cols codes, row-padded,
// with its FP32 scales.
struct MatrixView {
  const uint32_t* words = nullptr;  // layout().total_words() words
  const float* scales = nullptr;    // NumScales(scale_mode, rows, cols) floats; unused for NONE
  int64_t rows = 0;
  int64_t cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  ScaleMode scale_mode = ScaleMode::kRow;
  // BLOCK128 only, a hint: every row of each 128-row band (rows 128k to
  // 128k + 127) carries the same block scales, as a BLOCK128X128 matrix held
  // as BLOCK128 does. Set it only from ref::BlockScalesUniformInBands(); the
  // CPU GEMV then scales the activations once per band and block instead of
  // every row's block sums.
  bool uniform_bands = false;

  PLUME_HD constexpr PackedLayout layout() const { return PackedLayout{rows, cols}; }
};

// The vectors of one GEMV call: y[b] = W . x[b] for b in [0, batch).
struct GemvVectors {
  const void* x = nullptr;      // [batch][cols] of x_dtype
  DType x_dtype = DType::kF32;  // F32, F16, BF16, E4M3 or E5M2
  float x_scale = 1.0f;         // FP8 activations: x = code value * x_scale
  int64_t batch = 0;
  void* y = nullptr;            // [batch][rows] of y_dtype, packed
  DType y_dtype = DType::kF32;  // F32, F16 or BF16 (rounded to nearest-even)
};

// y[b][r] = sum_c decode(W[r][c]) * scale(r, c) * x[b][c], FP32 accumulation.
struct GemvProblem : MatrixView, GemvVectors {};

// A paged FP8 K/V cache to read (kv_layout.h).
struct KvCacheView {
  KvLayout layout;
  Fp8Format format = Fp8Format::kE4M3;
  const uint8_t* const* pages = nullptr;  // KvLayout::pages_for(seq) page pointers
  const float* k_scales = nullptr;        // layout.global_scales() floats (TENSOR, HEAD)
  const float* v_scales = nullptr;
  int64_t seq = 0;                        // tokens in the cache
};

// The queries of one attention call. q is [batch][heads][q_len][head_dim] of
// q_dtype, out the same shape of out_dtype. heads is a multiple of the cache's
// kv_heads: query head h reads kv head h / (heads / kv_heads). Causal: query i
// sits at position seq - q_len + i and sees the tokens up to it (q_len <= seq).
struct AttentionQueries {
  const void* q = nullptr;
  DType q_dtype = DType::kF32;  // F32, F16 or BF16
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t q_len = 0;
  float scale = 1.0f;  // the softmax scale, resolved (1/sqrt(head_dim) is the usual one)
  bool causal = false;
  void* out = nullptr;
  DType out_dtype = DType::kF32;  // F32, F16 or BF16 (rounded to nearest-even)
};

// out[b,h,i] = sum_t softmax_t(scale * q[b,h,i] . K[kvh,t]) * V[kvh,t] over
// the dequantized cache; masked tokens take no part.
struct AttentionProblem : KvCacheView, AttentionQueries {};

}  // namespace plume
