// plume's content hash: the MatrixHeader.content_hash clients put on an
// upload ("plume64v2:<16 hex digits>") so that a later run can skip what is
// already resident with the same content. A fast 64-bit non-cryptographic
// hash: it tells "the same bytes as last time" from "other bytes" and does
// not resist an adversary.
//
// Definition. The hashed stream is cut into little-endian 64-bit words w_0,
// w_1, ... (the last one zero-padded). Each word is mixed on its own with its
// position,
//     m_i = Mix(w_i + (i + 1) * G)            (mod 2^64),
// the m_i are summed modulo 2^64 into S, and the digest is
//     Mix(S + Mix(L ^ A))                     (L: the stream's length in bytes),
// with Mix splitmix64's finalizer (z ^= z >> 30; z *= A; z ^= z >> 27;
// z *= B; z ^= z >> 31), G = 0x9E3779B97F4A7C15, A = 0xBF58476D1CE4E5B9,
// B = 0x94D049BB133111EB. A field (Field) is its length as one word, then
// its bytes zero-padded to whole words, so that every field starts on a word.
//
// Every word is mixed independently of the others, so the hash splits
// across threads (large inputs here) and vectorizes: the Python client
// computes the same with numpy (client/python/plume/_hash.py; tests check
// that both give the same labels). plume64 (without v2), the hash before it,
// chained its words and could not be computed that way; its labels never
// equal these.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/io/byte_source.h"

namespace plume::io {

inline constexpr char kContentHashPrefix[] = "plume64v2:";

class ContentHasher {
 public:
  void Update(std::string_view bytes);
  // Length-prefixed and padded: Field("ab") then Field("c") differs from
  // Field("a") then Field("bc").
  void Field(std::string_view bytes);
  void Field(int64_t v);
  // A field read from `src` a few MiB at a time (by two threads when it is
  // large); the source's read error otherwise, and the hasher is then not
  // to be used further.
  absl::Status Field(const ByteSource& src);
  uint64_t Digest() const;
  // kContentHashPrefix and 16 lowercase hex digits: a MatrixHeader.content_hash.
  std::string Label() const;

 private:
  void AddWords(const unsigned char* p, uint64_t n);

  uint64_t sum_ = 0;    // S so far
  uint64_t words_ = 0;  // whole words summed
  uint64_t total_ = 0;  // L so far
  unsigned char buf_[8] = {};
  size_t buffered_ = 0;  // bytes of the next word
};

// The upload options that take part in a content hash, besides the bytes.
struct HashOptions {
  int source_dtype = 0;  // plume.v1.DType numbering
  int format = 0;        // E4M3 = 4, E5M2 = 5
  int scale_mode = 0;    // plume.v1.ScaleMode numbering
  bool non_saturating = false;
};

// The content hash of a float upload the server quantizes: the fields
// "plume float v1", the rank, each dimension, the four options, the data.
std::string FloatContentHash(const std::vector<int64_t>& shape, std::string_view data, const HashOptions& o);

// The content hash of a pre-packed FP8 upload: the fields
// "plume fp8 pre-packed v1", rows, cols, format (4 E4M3, 5 E5M2), scale mode
// (plume.v1.ScaleMode numbering), non_saturating (0/1), the codes (rows *
// cols bytes, row-major, unpadded) and the FP32 scales (little-endian, in
// the scale mode's layout). Fp8ContentHash (checkpoint.h) of an Fp8Matrix.
absl::StatusOr<std::string> Fp8CodesContentHash(int64_t rows, int64_t cols, int format, int scale_mode,
                                                bool non_saturating, const ByteSource& codes,
                                                std::string_view scales);

}  // namespace plume::io
