// A K/V page's FP8 codes decoded to FP16 in shared memory as wgmma reads its
// operands: K-major 8 x 8 core matrices without swizzle, K as [token][dim]
// (the B operand of S = Q K^T) and V transposed to [dim][token] (the B
// operand of O += P V). Shared by the Hopper flash prefill over pages
// (attention_prefill_wgmma.cu) and the Hopper decode
// (attention_decode_wgmma.cuh); the CPU emulation (tests/emu) runs it too.
#pragma once

#include <cstdint>

#include "attention_common.cuh"
#include "attention_fp8.cuh"

namespace plume::cuda::attn {

// Offset in halves of (row r, column k) of a K-major operand of `rows` rows
// in 8 x 8 core matrices: [k / 16][r / 8][k % 16 / 8][r % 8][k % 8].
__host__ __device__ __forceinline__ int CoreOffset(int rows, int r, int k) {
  return (k >> 4) * rows * 16 + (r >> 3) * 128 + ((k >> 3) & 1) * 64 + (r & 7) * 8 + (k & 7);
}

// Bytes of one k16 step of such an operand of `rows` rows.
constexpr int CoreStepBytes(int rows) { return rows * 32; }

// A wgmma shared-memory descriptor of that layout at shared address addr:
// 128 bytes between the two core matrices of a k16 step, 256 between groups
// of 8 rows.
constexpr uint64_t kCoreDescStrides = (uint64_t{128 >> 4} << 16) | (uint64_t{256 >> 4} << 32);
__device__ __forceinline__ uint64_t CoreDesc(uint32_t addr) {
  return uint64_t{(addr & 0x3FFFFu) >> 4} | kCoreDescStrides;
}

// Four codes to FP16 pairs, NaN codes kept NaN: DecodeWordNan's result,
// with the software E4M3 decode's fix-up behind a branch (rarely taken), so
// that the producers' few registers hold the page loops.
template <Dec kDec>
__device__ __forceinline__ void DecodePageWord(uint32_t w, uint32_t& lo, uint32_t& hi) {
  DecodeWord<kDec>(w, lo, hi);
  if constexpr (kDec == Dec::kE4M3Soft) {
    if (HasE4M3Nan(w)) DecodeWordNan<kDec>(w, lo, hi);
  }
}

// The page's K codes (kPage rows of row_bytes) to FP16 [token][dim]. A unit
// is 16 codes of one token (one k16 step): the eight lanes of a quarter warp
// take eight tokens and eight different steps, so neither the reads nor the
// writes conflict on a bank. kRowBytes: row_bytes known at compile time (the
// loop unrolls, its loads issue together), or 0. ptid: the thread among
// `threads` that share the work.
template <Dec kDec, int kRowBytes, int kThreads = 128>
__device__ __forceinline__ void DecodeKPage(const uint8_t* raw, __half* kh, int row_bytes_rt, int ptid) {
  const int row_bytes = kRowBytes > 0 ? kRowBytes : row_bytes_rt;
  const int steps = row_bytes >> 4;
#pragma unroll
  for (int u = ptid; u < kPage * steps; u += kThreads) {
    const int i = u & 7, rest = u >> 3;
    const int tok = 8 * (rest & 7) + i;
    const int j = ((rest >> 3) + i) % steps;
    const uint4 w = *reinterpret_cast<const uint4*>(raw + tok * row_bytes + 16 * j);
    uint32_t h[4][2];
    DecodePageWord<kDec>(w.x, h[0][0], h[0][1]);
    DecodePageWord<kDec>(w.y, h[1][0], h[1][1]);
    DecodePageWord<kDec>(w.z, h[2][0], h[2][1]);
    DecodePageWord<kDec>(w.w, h[3][0], h[3][1]);
    uint4* d = reinterpret_cast<uint4*>(kh + CoreOffset(kPage, tok, 16 * j));
    d[0] = make_uint4(h[0][0], h[0][1], h[1][0], h[1][1]);
    d[8] = make_uint4(h[2][0], h[2][1], h[3][0], h[3][1]);  // the step's upper 8 dims
  }
}

// The page's V codes to FP16 [dim][token] (kD rows): a unit is one word (4
// dims) of 8 consecutive tokens, transposed by byte permutes; a lane starts
// at dim (c / 2) % 4 of its four so that a quarter warp's stores hit 8 banks.
template <Dec kDec, int kD, int kRowBytes, int kThreads = 128>
__device__ __forceinline__ void DecodeVPage(const uint8_t* raw, __half* vt, int row_bytes_rt, int ptid) {
  const int row_bytes = kRowBytes > 0 ? kRowBytes : row_bytes_rt;
  const int words = row_bytes >> 2;
#pragma unroll
  for (int u = ptid; u < 8 * words; u += kThreads) {
    const int c = u % words, q = u / words;
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = *reinterpret_cast<const uint32_t*>(raw + (8 * q + i) * row_bytes + 4 * c);
#pragma unroll
    for (int e0 = 0; e0 < 4; ++e0) {
      const uint32_t e = (e0 + (c >> 1)) & 3;
      const uint32_t sel = e | ((e + 4) << 4);
      const uint32_t lo = __byte_perm(__byte_perm(w[0], w[1], sel), __byte_perm(w[2], w[3], sel), 0x5410);
      const uint32_t hi = __byte_perm(__byte_perm(w[4], w[5], sel), __byte_perm(w[6], w[7], sel), 0x5410);
      uint32_t a[2], b[2];
      DecodePageWord<kDec>(lo, a[0], a[1]);
      DecodePageWord<kDec>(hi, b[0], b[1]);
      *reinterpret_cast<uint4*>(vt + CoreOffset(kD, 4 * c + e, 8 * q)) = make_uint4(a[0], a[1], b[0], b[1]);
    }
  }
}

}  // namespace plume::cuda::attn
