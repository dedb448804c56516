// AVX2 + FMA + F16C GEMV kernels, compiled through a target pragma that covers
// only the functions below; GemvF32 picks this path at run time.
#include <immintrin.h>

#include <cstdint>

#include "gemv_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#if defined(__clang__)  // clang has no GCC target pragma: the same as an attribute
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define PLUME_TILE_AVX2
#include "gemv_tile.h"  // inside the target region: its loop is compiled for it

namespace plume::ref::detail {
namespace {


template <Fp8Format F>
PLUME_AI __m256 Decode8(const uint8_t* p, bool any_nan) {
  const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  if constexpr (F == Fp8Format::kE4M3) {
    // See gemv_avx512.cc: exponent/mantissa into the FP32 fields, times 2^120.
    __m256i v = _mm256_cvtepi8_epi32(c);
    v = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32(static_cast<int>(0x87F00000u)));
    __m256 w = _mm256_mul_ps(_mm256_castsi256_ps(v), _mm256_set1_ps(0x1p120f));
    if (__builtin_expect(any_nan, 0)) {
      const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7FF00000));
      const __m256i isnan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x07F00000));
      w = _mm256_blendv_ps(w, _mm256_set1_ps(__builtin_nanf("")), _mm256_castsi256_ps(isnan));
    }
    return w;
  } else {
    (void)any_nan;
    return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(c), 8));
  }
}

// Whether any of 32 / 16 E4M3 codes is a NaN (0x7F / 0xFF).
PLUME_AI bool AnyNan32(const uint8_t* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i ff = _mm256_set1_epi8(static_cast<char>(0xFF));
  return _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_or_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))), ff)) != 0;
}
PLUME_AI bool AnyNan16(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i ff = _mm_set1_epi8(static_cast<char>(0xFF));
  return _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(v, _mm_set1_epi8(static_cast<char>(0x80))), ff)) != 0;
}

// Q chunks of 8 codes starting at column c (Q = 4: 32 codes, Q = 2: 16 codes).
template <Fp8Format F, int R, int B, int Q>
PLUME_AI void Step(const uint8_t* w, int64_t pc, const float* x, int64_t c, __m256 (&acc)[R][B]) {
  bool nan[R];
  if constexpr (Q == 4)
    PLUME_UNROLL for (int r = 0; r < R; ++r)
      _mm_prefetch(reinterpret_cast<const char*>(w + r * pc + c + 512), _MM_HINT_T0);
  PLUME_UNROLL for (int r = 0; r < R; ++r)
    nan[r] = F == Fp8Format::kE4M3 && (Q == 4 ? AnyNan32(w + r * pc + c) : AnyNan16(w + r * pc + c));
  PLUME_UNROLL for (int q = 0; q < Q; ++q) {
    PLUME_UNROLL for (int r = 0; r < R; ++r) {
      const __m256 wv = Decode8<F>(w + r * pc + c + 8 * q, nan[r]);
      PLUME_UNROLL for (int b = 0; b < B; ++b)
        acc[r][b] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + b * pc + c + 8 * q), acc[r][b]);
    }
  }
}

struct K256 {
  // BLOCK128 takes as many rows as ROW: its running sums are in memory
  // (TileColumns).
  static constexpr int RowsFor(int B, bool /*block*/) { return B <= 2 ? 4 : B <= 4 ? 2 : 1; }
  template <Fp8Format F, int R, int B, bool kBlock>
  static void Tile(const uint8_t* w, int64_t pc, const float* x, const float* bs, int64_t nblk,
                   float* out) {
    TileColumns<Ops256, 32, R, B, kBlock>(
        pc, bs, nblk, out,
        [&](int64_t c, __m256(&acc)[R][B]) PLUME_LAMBDA_AI { Step<F, R, B, 4>(w, pc, x, c, acc); },
        [&](int64_t c, __m256(&acc)[R][B]) PLUME_LAMBDA_AI { Step<F, R, B, 2>(w, pc, x, c, acc); });
  }
};

}  // namespace

void GemvRowsAvx2(const PaddedGemv& a, int64_t r0, int64_t r1) { DriveRows<K256>(a, r0, r1); }

}  // namespace plume::ref::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace plume::ref::detail {
void GemvRowsAvx2(const PaddedGemv&, int64_t, int64_t) { __builtin_trap(); }
}  // namespace plume::ref::detail
#endif
