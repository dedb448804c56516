// The column loop of one GEMV tile (R rows x B vectors), shared by the SIMD
// kernels. Include it inside an ISA translation unit's target pragma: it is
// always inlined into that unit's Tile(), so the accumulators stay in
// registers.
#pragma once

#include <immintrin.h>

#include <cstdint>

#define PLUME_AI __attribute__((always_inline)) inline
// Full unrolling keeps the accumulator arrays in registers.
#define PLUME_UNROLL _Pragma("GCC unroll 16")
// For the step lambdas handed to TileColumns.
#define PLUME_LAMBDA_AI __attribute__((always_inline))

namespace plume::ref::detail {

// Ops: using V (the vector type), static V Zero(), static V Splat(float),
// static V Fma(V a, V b, V c) (= a * b + c), static V Load(const float*),
// static void Store(float*, V) (aligned) and static float Sum(V).
// wide(c, acc) accumulates kWide columns starting at column c; narrow(c, acc)
// 16 columns (the padded row length is a multiple of 16). Without kBlock,
// out[r * B + b] is the row's dot product; with kBlock (BLOCK128), each
// 128-column block's partial sum is scaled by bs[r * nblk + blk] first.
//
// With kBlock only the block's partial sums live in registers: the scaled
// running sums stay in a buffer in L1, touched once per 128 columns, so a
// BLOCK128 tile needs the registers of a ROW tile and takes as many rows
// (the sums were registers too before, which halved the rows per tile and
// doubled the activation loads per FMA: 1.7-2x ROW's time at batch 8).
// The operations and their order are the same either way.
template <class Ops, int kWide, int R, int B, bool kBlock, class Wide, class Narrow>
PLUME_AI void TileColumns(int64_t pc, const float* bs, int64_t nblk, float* out, Wide wide,
                          Narrow narrow) {
  using V = typename Ops::V;
  V acc[R][B];
  PLUME_UNROLL for (int r = 0; r < R; ++r)
    PLUME_UNROLL for (int b = 0; b < B; ++b) acc[r][b] = Ops::Zero();
  int64_t c = 0;
  if constexpr (!kBlock) {
    for (; c + kWide <= pc; c += kWide) wide(c, acc);
    for (; c < pc; c += 16) narrow(c, acc);
  } else {
    constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
    alignas(64) float sums[R][B][kLanes];
    PLUME_UNROLL for (int r = 0; r < R; ++r)
      PLUME_UNROLL for (int b = 0; b < B; ++b) Ops::Store(sums[r][b], Ops::Zero());
    // The buffer's address escapes, so the compiler keeps it in memory
    // instead of giving it registers of its own.
    asm volatile("" : : "r"(&sums[0][0][0]) : "memory");
    for (int64_t blk = 0; blk < nblk; ++blk) {
      V part[R][B];
      PLUME_UNROLL for (int r = 0; r < R; ++r)
        PLUME_UNROLL for (int b = 0; b < B; ++b) part[r][b] = Ops::Zero();
      const int64_t end = c + 128 < pc ? c + 128 : pc;
      for (; c + kWide <= end; c += kWide) wide(c, part);
      for (; c < end; c += 16) narrow(c, part);
      PLUME_UNROLL for (int r = 0; r < R; ++r) {
        const V s = Ops::Splat(bs[r * nblk + blk]);
        PLUME_UNROLL for (int b = 0; b < B; ++b) {
          Ops::Store(sums[r][b], Ops::Fma(part[r][b], s, Ops::Load(sums[r][b])));
        }
      }
    }
    PLUME_UNROLL for (int r = 0; r < R; ++r)
      PLUME_UNROLL for (int b = 0; b < B; ++b) acc[r][b] = Ops::Load(sums[r][b]);
  }
  PLUME_UNROLL for (int r = 0; r < R; ++r)
    PLUME_UNROLL for (int b = 0; b < B; ++b) out[r * B + b] = Ops::Sum(acc[r][b]);
}

// Vector operations for TileColumns, for the ISA the including unit targets:
// it defines PLUME_TILE_AVX512 or PLUME_TILE_AVX2 before the include.
#if defined(PLUME_TILE_AVX512)
struct Ops512 {
  using V = __m512;
  static PLUME_AI V Zero() { return _mm512_setzero_ps(); }
  static PLUME_AI V Splat(float f) { return _mm512_set1_ps(f); }
  static PLUME_AI V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static PLUME_AI V Load(const float* p) { return _mm512_load_ps(p); }
  static PLUME_AI void Store(float* p, V v) { _mm512_store_ps(p, v); }
  static PLUME_AI float Sum(V v) { return _mm512_reduce_add_ps(v); }
};

// Rows per tile that keep the accumulators (BLOCK128: the block's partial
// sums) within 16 of the 32 zmm registers.
constexpr int RowsFor512(int B, bool /*block*/) { return B == 1 ? 8 : B <= 4 ? 4 : 2; }
#elif defined(PLUME_TILE_AVX2)
struct Ops256 {
  using V = __m256;
  static PLUME_AI V Zero() { return _mm256_setzero_ps(); }
  static PLUME_AI V Splat(float f) { return _mm256_set1_ps(f); }
  static PLUME_AI V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static PLUME_AI V Load(const float* p) { return _mm256_load_ps(p); }
  static PLUME_AI void Store(float* p, V v) { _mm256_store_ps(p, v); }
  static PLUME_AI float Sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
#endif

}  // namespace plume::ref::detail
