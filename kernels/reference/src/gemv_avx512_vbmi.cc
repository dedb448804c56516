// AVX-512 + VBMI GEMV kernels: FP8 decode by byte-table lookup.
//
// Every E4M3 and E5M2 value (subnormals, +-inf and NaN included) is exactly a
// bfloat16, i.e. an FP32 whose low 16 bits are zero. Two 128-entry byte
// tables (indexed by the 7 magnitude bits; vpermi2b ignores index bit 7)
// give the high and low byte of that bfloat16; the code's sign bit is OR'ed
// into the high byte; two byte unpacks and four word unpacks with zero turn
// 64 codes into 4 x 16 FP32 values. That is 10 shuffle/logic operations per
// 64 codes (with the order vpermb below) and no NaN test (NaN codes look up
// a NaN), against ~20 for the shift-and-multiply decode in gemv_avx512.cc.
//
// The unpacks work within 128-bit lanes, so a chunk's decoded values would
// come out in the order VbmiColumnOrder() gives. One vpermb of the codes
// first (the inverse order) makes them come out in natural order: each
// accumulator lane then sums the same columns in the same sequence as the
// shift-decode kernel in gemv_avx512.cc, so a GEMV's result does not depend
// on which of the two kernels its batch size picks (GemvIsaTest.
// BatchedMatchesOneAtATimeBitForBit).
//
// Compiled for these ISAs through a target pragma that covers only this
// file's functions; GemvF32 picks the path at run time.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "gemv_internal.h"
#include "plume/kernels/fp8.h"

namespace plume::ref::detail {
namespace {

// Output position p (0..63) of the unpacks holds input byte VbmiColumnOrder(p):
// output vector q = p / 16, element j = p % 16.
int VbmiColumnOrder(int p) {
  const int q = p / 16, j = p % 16;
  // f[q], element j = 4 * lane + dword d: word 2d (+1 for odd q) of the
  // lane's low (q < 2) or high (q >= 2) byte unpack (Decode64 widens the
  // words by a shift and a mask, not a shuffle).
  return 16 * (j / 4) + 8 * (q / 2) + 2 * (j % 4) + q % 2;
}

}  // namespace
}  // namespace plume::ref::detail

#if defined(__x86_64__) && defined(__GNUC__)
#if defined(__clang__)  // clang has no GCC target pragma: the same as an attribute
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")
#endif
#define PLUME_TILE_AVX512
#include "gemv_tile.h"  // inside the target region: its loop is compiled for it
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace plume::ref::detail {
namespace {

#ifndef PLUME_VBMI_PREFETCH
#define PLUME_VBMI_PREFETCH 512
#endif
constexpr int kPrefetchBytes = PLUME_VBMI_PREFETCH;

// hi/lo bytes of the bfloat16 of each magnitude code 0..127, as two 64-byte
// halves each (vpermi2b's two table operands).
// order: the vpermb index that moves column p's code to byte
// VbmiColumnOrder(p), which the unpacks bring out at position p: their output
// is then in column order.
struct alignas(64) ByteTables {
  uint8_t hi[128];
  uint8_t lo[128];
  uint8_t order[64];
};

ByteTables MakeTables(Fp8Format f) {
  ByteTables t;
  for (int c = 0; c < 128; ++c) {
    const float v = fp8::Decode(static_cast<uint8_t>(c), f);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    // Exact: the low 16 bits of every decoded FP8 value are zero (checked
    // over all codes in tests/kernels/gemv_test.cc through the GEMV itself).
    t.hi[c] = static_cast<uint8_t>(bits >> 24);
    t.lo[c] = static_cast<uint8_t>(bits >> 16);
  }
  for (int p = 0; p < 64; ++p) t.order[VbmiColumnOrder(p)] = static_cast<uint8_t>(p);
  return t;
}

const ByteTables& TablesFor(Fp8Format f) {
  static const ByteTables e4m3 = MakeTables(Fp8Format::kE4M3);
  static const ByteTables e5m2 = MakeTables(Fp8Format::kE5M2);
  return f == Fp8Format::kE4M3 ? e4m3 : e5m2;
}

struct Tab {
  __m512i hi0, hi1, lo0, lo1, order;
};

PLUME_AI Tab LoadTab(Fp8Format f) {
  const ByteTables& t = TablesFor(f);
  return {_mm512_load_si512(t.hi), _mm512_load_si512(t.hi + 64), _mm512_load_si512(t.lo),
          _mm512_load_si512(t.lo + 64), _mm512_load_si512(t.order)};
}

// 64 codes -> 4 x 16 floats in column order: f[q] holds columns 16q..16q+15.
PLUME_AI void Decode64(const uint8_t* p, const Tab& t, __m512 (&f)[4]) {
  const __m512i code = _mm512_permutexvar_epi8(t.order, _mm512_loadu_si512(p));
  __m512i hi = _mm512_permutex2var_epi8(t.hi0, code, t.hi1);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, code, t.lo1);
  // hi | (code & 0x80): the sign bit.
  hi = _mm512_ternarylogic_epi32(hi, code, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  const __m512i wl = _mm512_unpacklo_epi8(lo, hi), wh = _mm512_unpackhi_epi8(lo, hi);
  // Even words to the high half with a shift, odd words kept with a mask.
  const __m512i m = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  f[0] = _mm512_castsi512_ps(_mm512_slli_epi32(wl, 16));
  f[1] = _mm512_castsi512_ps(_mm512_and_si512(wl, m));
  f[2] = _mm512_castsi512_ps(_mm512_slli_epi32(wh, 16));
  f[3] = _mm512_castsi512_ps(_mm512_and_si512(wh, m));
}

// 16 codes -> 16 floats, for the columns past the last full 64-column chunk:
// the same lookups on the low lane, then a dword zero-extend.
PLUME_AI __m512 Decode16(const uint8_t* p, const Tab& t) {
  const __m512i code = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m512i hi = _mm512_permutex2var_epi8(t.hi0, code, t.hi1);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, code, t.lo1);
  hi = _mm512_ternarylogic_epi32(hi, code, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  const __m256i w16 = _mm512_castsi512_si256(_mm512_unpacklo_epi8(lo, hi));  // lane 0: codes 0..7
  const __m256i w16h = _mm512_castsi512_si256(_mm512_unpackhi_epi8(lo, hi));  // lane 0: codes 8..15
  const __m256i words = _mm256_permute2x128_si256(w16, w16h, 0x20);          // codes 0..15 in order
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(words), 16));
}

template <int R, int B>
PLUME_AI void Step64(const uint8_t* w, int64_t pc, const float* x, int64_t c, const Tab& t,
                     __m512 (&acc)[R][B]) {
  PLUME_UNROLL for (int r = 0; r < R; ++r)
    _mm_prefetch(reinterpret_cast<const char*>(w + r * pc + c + kPrefetchBytes), _MM_HINT_T0);
  if constexpr (B == 1) {
    __m512 xv[4];
    PLUME_UNROLL for (int q = 0; q < 4; ++q) xv[q] = _mm512_loadu_ps(x + c + 16 * q);
    PLUME_UNROLL for (int r = 0; r < R; ++r) {
      __m512 f[4];
      Decode64(w + r * pc + c, t, f);
      PLUME_UNROLL for (int q = 0; q < 4; ++q) acc[r][0] = _mm512_fmadd_ps(f[q], xv[q], acc[r][0]);
    }
  } else {
    __m512 f[R][4];
    PLUME_UNROLL for (int r = 0; r < R; ++r) Decode64(w + r * pc + c, t, f[r]);
    PLUME_UNROLL for (int q = 0; q < 4; ++q)
      PLUME_UNROLL for (int b = 0; b < B; ++b) {
        const __m512 xv = _mm512_loadu_ps(x + b * pc + c + 16 * q);
        PLUME_UNROLL for (int r = 0; r < R; ++r) acc[r][b] = _mm512_fmadd_ps(f[r][q], xv, acc[r][b]);
      }
  }
}

template <int R, int B>
PLUME_AI void Step16(const uint8_t* w, int64_t pc, const float* x, int64_t c, const Tab& t,
                     __m512 (&acc)[R][B]) {
  __m512 xv[B];
  PLUME_UNROLL for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_ps(x + b * pc + c);
  PLUME_UNROLL for (int r = 0; r < R; ++r) {
    const __m512 wv = Decode16(w + r * pc + c, t);
    PLUME_UNROLL for (int b = 0; b < B; ++b) acc[r][b] = _mm512_fmadd_ps(wv, xv[b], acc[r][b]);
  }
}

struct K512Vbmi {
  static constexpr int RowsFor(int B, bool block) { return RowsFor512(B, block); }
  template <Fp8Format F, int R, int B, bool kBlock>
  static void Tile(const uint8_t* w, int64_t pc, const float* x, const float* bs, int64_t nblk,
                   float* out) {
    const Tab t = LoadTab(F);
    TileColumns<Ops512, 64, R, B, kBlock>(
        pc, bs, nblk, out,
        [&](int64_t c, __m512(&acc)[R][B]) PLUME_LAMBDA_AI { Step64<R, B>(w, pc, x, c, t, acc); },
        [&](int64_t c, __m512(&acc)[R][B]) PLUME_LAMBDA_AI { Step16<R, B>(w, pc, x, c, t, acc); });
  }
};

}  // namespace

void GemvRowsAvx512Vbmi(const PaddedGemv& a, int64_t r0, int64_t r1) { DriveRows<K512Vbmi>(a, r0, r1); }

}  // namespace plume::ref::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace plume::ref::detail {
void GemvRowsAvx512Vbmi(const PaddedGemv&, int64_t, int64_t) { __builtin_trap(); }
}  // namespace plume::ref::detail
#endif
