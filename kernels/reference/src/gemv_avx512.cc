// AVX-512 GEMV kernels (F, BW, VL, DQ). Compiled for these ISAs through a
// target pragma that covers only the functions below, so the library itself
// stays baseline x86-64; GemvF32 picks this path at run time.
#include <immintrin.h>

#include <cstdint>

#include "gemv_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#if defined(__clang__)  // clang has no GCC target pragma: the same as an attribute
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
#define PLUME_TILE_AVX512
#include "gemv_tile.h"  // inside the target region: its loop is compiled for it
// GCC 12 warns about _mm512_undefined_* inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace plume::ref::detail {
namespace {

// Software prefetch distance along each row (bytes). With several rows read
// in an interleaved way the hardware prefetcher alone left DRAM bandwidth
// unused (8192x8192 E4M3: ~4.3 ms without, ~2.6 ms with, on a quiet 2-core EPYC).
constexpr int kPrefetchBytes = 512;

// 16 E4M3 codes -> floats: sign-extend, move exponent/mantissa into the FP32
// field (e -> e, m -> top 3 mantissa bits) and multiply by 2^120 (the bias
// difference); exact for normals and subnormals. NaN codes are fixed apart.
PLUME_AI __m512 DecodeE4M3x16(const uint8_t* p) {
  __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v = _mm512_and_si512(_mm512_slli_epi32(v, 20), _mm512_set1_epi32(static_cast<int>(0x87F00000u)));
  return _mm512_mul_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(0x1p120f));
}

// 16 E5M2 codes -> floats: an E5M2 code is the high byte of a binary16.
PLUME_AI __m512 DecodeE5M2x16(const uint8_t* p) {
  const __m256i h =
      _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 8);
  return _mm512_cvtph_ps(h);
}

template <Fp8Format F>
PLUME_AI __m512 Decode16(const uint8_t* p, __mmask16 nan) {
  if constexpr (F == Fp8Format::kE4M3) {
    __m512 w = DecodeE4M3x16(p);
    if (__builtin_expect(nan != 0, 0)) w = _mm512_mask_mov_ps(w, nan, _mm512_set1_ps(__builtin_nanf("")));
    return w;
  } else {
    return DecodeE5M2x16(p);
  }
}

// NaN codes (0x7F / 0xFF) among 64 E4M3 codes, one bit per code.
PLUME_AI __mmask64 NanMask64(const uint8_t* p) {
  const __m512i v = _mm512_loadu_si512(p);
  return _mm512_cmpeq_epi8_mask(_mm512_or_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))),
                                _mm512_set1_epi8(static_cast<char>(0xFF)));
}
PLUME_AI __mmask16 NanMask16(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm_cmpeq_epi8_mask(_mm_or_si128(v, _mm_set1_epi8(static_cast<char>(0x80))),
                             _mm_set1_epi8(static_cast<char>(0xFF)));
}

template <Fp8Format F, int R, int B>
PLUME_AI void Step64(const uint8_t* w, int64_t pc, const float* x, int64_t c, __m512 (&acc)[R][B]) {
  __mmask64 nm[R] = {};
  // Prefetching past the end of the matrix is harmless (prefetches never fault).
  PLUME_UNROLL for (int r = 0; r < R; ++r)
    _mm_prefetch(reinterpret_cast<const char*>(w + r * pc + c + kPrefetchBytes), _MM_HINT_T0);
  if constexpr (F == Fp8Format::kE4M3) {
    // One test for all R rows: a byte of (code | 0x80) is 0xFF only for the
    // NaN codes 0x7F / 0xFF, and 0xFF is the largest byte, so the unsigned
    // maximum over the rows has a 0xFF byte iff some row has a NaN code there.
    const __m512i hi = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i mx = _mm512_or_si512(_mm512_loadu_si512(w + c), hi);
    PLUME_UNROLL for (int r = 1; r < R; ++r)
      mx = _mm512_max_epu8(mx, _mm512_or_si512(_mm512_loadu_si512(w + r * pc + c), hi));
    if (__builtin_expect(_mm512_cmpeq_epi8_mask(mx, _mm512_set1_epi8(static_cast<char>(0xFF))) != 0, 0)) {
      PLUME_UNROLL for (int r = 0; r < R; ++r) nm[r] = NanMask64(w + r * pc + c);
    }
  }
  PLUME_UNROLL for (int q = 0; q < 4; ++q) {
    __m512 xv[B];
    PLUME_UNROLL for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_ps(x + b * pc + c + 16 * q);
    PLUME_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 wv = Decode16<F>(w + r * pc + c + 16 * q, static_cast<__mmask16>(nm[r] >> (16 * q)));
      PLUME_UNROLL for (int b = 0; b < B; ++b) acc[r][b] = _mm512_fmadd_ps(wv, xv[b], acc[r][b]);
    }
  }
}

template <Fp8Format F, int R, int B>
PLUME_AI void Step16(const uint8_t* w, int64_t pc, const float* x, int64_t c, __m512 (&acc)[R][B]) {
  __m512 xv[B];
  PLUME_UNROLL for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_ps(x + b * pc + c);
  PLUME_UNROLL for (int r = 0; r < R; ++r) {
    const __mmask16 nm = F == Fp8Format::kE4M3 ? NanMask16(w + r * pc + c) : 0;
    const __m512 wv = Decode16<F>(w + r * pc + c, nm);
    PLUME_UNROLL for (int b = 0; b < B; ++b) acc[r][b] = _mm512_fmadd_ps(wv, xv[b], acc[r][b]);
  }
}

struct K512 {
  static constexpr int RowsFor(int B, bool block) { return RowsFor512(B, block); }
  template <Fp8Format F, int R, int B, bool kBlock>
  static void Tile(const uint8_t* w, int64_t pc, const float* x, const float* bs, int64_t nblk,
                   float* out) {
    TileColumns<Ops512, 64, R, B, kBlock>(
        pc, bs, nblk, out,
        [&](int64_t c, __m512(&acc)[R][B]) PLUME_LAMBDA_AI { Step64<F, R, B>(w, pc, x, c, acc); },
        [&](int64_t c, __m512(&acc)[R][B]) PLUME_LAMBDA_AI { Step16<F, R, B>(w, pc, x, c, acc); });
  }
};

}  // namespace

void GemvRowsAvx512(const PaddedGemv& a, int64_t r0, int64_t r1) { DriveRows<K512>(a, r0, r1); }

}  // namespace plume::ref::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace plume::ref::detail {
void GemvRowsAvx512(const PaddedGemv&, int64_t, int64_t) { __builtin_trap(); }
}  // namespace plume::ref::detail
#endif
