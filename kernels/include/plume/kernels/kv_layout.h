// plume's resident K/V cache layout, shared by the CPU reference and the CUDA
// attention kernels (host + device).
//
// A cache holds K and V, each logically [kv_heads, seq, head_dim], as FP8
// codes (E4M3 or E5M2) with FP32 scales. Storage is paged:
//
//  - A page holds kKvPageTokens (64) consecutive token positions of every
//    kv head, for K and for V. Pages are separate allocations listed in a page
//    table (one pointer per page, in token order); appending tokens fills the
//    last page and then allocates new ones, so growth never copies the tokens
//    already stored. Only the page table (8 bytes per 64 tokens) is
//    reallocated, geometrically. New pages are zero-filled.
//  - Within a page (page_bytes() bytes, 256-byte aligned, a multiple of 256):
//      K codes  [kv_heads][64][row_bytes]   at offset 0
//      V codes  [kv_heads][64][row_bytes]   at offset codes_bytes()
//      K scales [kv_heads] float            at offset 2 * codes_bytes()
//      V scales [kv_heads] float            right after   (TOKEN_BLOCK only)
//    A row is the head_dim codes of one (kv_head, token), packed as in the
//    matrix layout (four codes per little-endian uint32, element 4j in bits
//    0-7), padded with zero codes to row_bytes = head_dim rounded up to 16, so
//    every row starts 16-byte aligned. One kv head's 64 rows of a page are
//    contiguous (64 * row_bytes bytes): a GPU tile is one contiguous load.
//    Rows at or past seq (the unfilled end of the last page) are zero codes
//    and must be masked by the kernels, never read as values.
//  - Scales (decoded value = fp8_decode(code) * scale):
//      NONE         scale 1
//      TENSOR       one scale for K and one for V (cache-wide)
//      HEAD         one scale per kv head for K, and for V (cache-wide)
//      TOKEN_BLOCK  one scale per (kv head, page) for K, and for V: a block is
//                   the 64 tokens of a page, and its scales live in the page.
//    Cache-wide scales (TENSOR, HEAD) are fixed by the first tokens stored
//    (the upload); later appends encode with them and saturate (or overflow to
//    NaN/inf when non-saturating) beyond their range. A TOKEN_BLOCK scale is
//    set by the first tokens of its block; an append whose values need a larger
//    scale re-encodes the block's earlier codes with the new scale (one extra
//    rounding for those tokens), so a block's scale only grows.
#pragma once

#include <cstdint>

#include "plume/kernels/types.h"

namespace plume {

enum class KvScaleMode : uint8_t { kNone = 1, kTensor = 2, kHead = 3, kTokenBlock = 4 };

inline constexpr int64_t kKvPageTokens = 64;
inline constexpr int64_t kKvPageAlign = 256;

struct KvLayout {
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  KvScaleMode scale_mode = KvScaleMode::kTokenBlock;

  // Bytes of one (kv_head, token) row: head_dim codes padded to 16.
  PLUME_HD constexpr int64_t row_bytes() const { return (head_dim + 15) / 16 * 16; }
  // Bytes of one kv head's rows within a page (K or V).
  PLUME_HD constexpr int64_t head_tile_bytes() const { return kKvPageTokens * row_bytes(); }
  // Bytes of K (or V) codes within a page.
  PLUME_HD constexpr int64_t codes_bytes() const { return kv_heads * head_tile_bytes(); }
  PLUME_HD constexpr int64_t page_scale_floats() const {
    return scale_mode == KvScaleMode::kTokenBlock ? 2 * kv_heads : 0;
  }
  PLUME_HD constexpr int64_t page_bytes() const {
    const int64_t b = 2 * codes_bytes() + page_scale_floats() * 4;
    return (b + kKvPageAlign - 1) / kKvPageAlign * kKvPageAlign;
  }
  // Cache-wide scales for K (the same number again for V).
  PLUME_HD constexpr int64_t global_scales() const {
    return scale_mode == KvScaleMode::kTensor ? 1
           : scale_mode == KvScaleMode::kHead ? kv_heads
                                              : 0;
  }
  PLUME_HD static constexpr int64_t pages_for(int64_t seq) {
    return (seq + kKvPageTokens - 1) / kKvPageTokens;
  }
  // Bytes held for `seq` tokens: whole pages plus the cache-wide scales.
  PLUME_HD constexpr int64_t resident_bytes(int64_t seq) const {
    return pages_for(seq) * page_bytes() + 2 * global_scales() * 4;
  }

  // The K / V row of (head, token t within the page).
  PLUME_HD constexpr int64_t k_row_offset(int64_t head, int64_t t) const {
    return head * head_tile_bytes() + t * row_bytes();
  }
  PLUME_HD constexpr int64_t v_row_offset(int64_t head, int64_t t) const {
    return codes_bytes() + k_row_offset(head, t);
  }
  // TOKEN_BLOCK: offsets of the page's K / V scale of `head`, in floats from
  // 2 * codes_bytes().
  PLUME_HD constexpr int64_t k_scale_index(int64_t head) const { return head; }
  PLUME_HD constexpr int64_t v_scale_index(int64_t head) const { return kv_heads + head; }
};

// The page scales of a page (TOKEN_BLOCK), K then V.
PLUME_HD const float* KvPageScales(const uint8_t* page, const KvLayout& l) {
  return reinterpret_cast<const float*>(page + 2 * l.codes_bytes());
}
PLUME_HD float* KvPageScales(uint8_t* page, const KvLayout& l) {
  return reinterpret_cast<float*>(page + 2 * l.codes_bytes());
}

// The scale of K (is_v false) or V of (head, token) in a cache whose
// cache-wide scales are `global_k` / `global_v` (global_scales() floats each).
PLUME_HD float KvScaleAt(const KvLayout& l, const uint8_t* const* pages, const float* global_k,
                         const float* global_v, bool is_v, int64_t head, int64_t token) {
  const float* g = is_v ? global_v : global_k;
  switch (l.scale_mode) {
    case KvScaleMode::kNone: return 1.0f;
    case KvScaleMode::kTensor: return g[0];
    case KvScaleMode::kHead: return g[head];
    default: {
      const float* s = KvPageScales(pages[token / kKvPageTokens], l);
      return s[is_v ? l.v_scale_index(head) : l.k_scale_index(head)];
    }
  }
}

const char* KvScaleModeName(KvScaleMode m);  // "none", "tensor", "head", "block"

}  // namespace plume
