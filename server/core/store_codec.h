// The durable store's file codec: the bytes of a matrix file (".pmx") and
// of a K/V cache file (".pkv"), encoded from and decoded into host memory.
// Pure: no file system, no store, no backend; what it checks it checks
// against the bytes it is given and the largest shapes any server accepts
// (limits.h). durable_store.h writes and reads these files; the fuzzers
// link this alone.
//
// Matrix file ("<name>.pmx"), little-endian:
//   0  char[8] magic "PLUMEMX\n"     8  u32 version (2; 1 is still read)
//  12  u32 crc32c of bytes [16, end) 16  u64 file size
//  24  u32 kind (1 = matrix)         28  u32 name length
//  32  i64 rows                      40  i64 cols
//  48  u8 format, u8 scale mode, u8 saturate, u8 source dtype,
//      u32 placement asked for at upload (0 AUTO .. 3 REPLICATED; was zero)
//  56  i64 created (unix ms)         64  u64 number of scales
//  72  u64 number of packed words
//  version 2: 80 u32 content hash length, 84 zero to 96, then the name
//  zero-padded to 16 bytes, then the content hash zero-padded to 16 bytes.
//  version 1: 80 the name, zero-padded to 16 bytes (no content hash).
//  Then the FP32 scales in the scale mode (BLOCK128X128: per 128x128 block),
//  then the packed uint32 words (plume's layout).
//
// K/V cache file ("<name>.pkv"), little-endian: a header, then records.
//   Header: 0 char[8] "PLUMEKV\n"   8 u32 version (1)
//          12 u32 crc32c of bytes [16, header end)   16 u64 header bytes
//          24 u32 kind (2)   28 u32 name length   32 i64 kv_heads
//          40 i64 head_dim   48 u8 format, u8 scale mode, u8 saturate,
//          u8 source dtype, u32 zero   56 i64 created (unix ms)
//          64 u64 page bytes   72 u64 cache-wide scales per side (G)
//          80 name, zero-padded to 16 bytes; G K scales, G V scales (FP32).
//   Record: 0 u32 "PKVR"   4 u32 crc32c of bytes [8, record end)
//          8 u64 record bytes   16 i64 seq after it   24 i64 first page
//          32 i64 page count   40 u64 zero   48 the pages (kv_layout.h bytes)
//   A record holds whole pages: the one the append started in (whose codes
//   and TOKEN_BLOCK scale it may have rewritten) and the ones it added, so
//   first page == the previous seq / 64. Replaying the records in order
//   rebuilds the cache. An upload writes header + one record through
//   DirectoryStore::WriteFileDurably; an append writes one record at the
//   end and fdatasyncs the file before it is acknowledged; when the log
//   grows past twice the live pages it is compacted (rewritten as header +
//   one record through a temp file and rename).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/backend.h"  // MatrixShape, KvShape (header only)

namespace plume::core {

inline constexpr char kStoreMagic[8] = {'P', 'L', 'U', 'M', 'E', 'M', 'X', '\n'};
inline constexpr uint32_t kStoreVersion = 1;         // K/V files; matrix files of version 1
inline constexpr int64_t kStoreHeaderBytes = 80;     // K/V files; matrix files of version 1
inline constexpr uint32_t kMatrixFileVersion = 2;    // what matrix files are written as
inline constexpr int64_t kMatrixHeaderBytes = 96;    // version 2
enum class RecordKind : uint32_t { kMatrix = 1, kKvCache = 2 };

// What a matrix file describes besides its payload.
struct StoredMatrixMeta {
  std::string name;
  MatrixShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
  std::string content_hash;  // version 2 files; empty in version 1
};

struct StoredMatrix {
  StoredMatrixMeta meta;
  std::vector<float> scales;    // shape.num_scales()
  std::vector<uint32_t> words;  // shape.layout().total_words()
};

// The header bytes of a matrix file, its checksum computed over the header's
// tail, the scales and the words.
std::string EncodeMatrixHeader(const StoredMatrixMeta& meta, const float* scales,
                               const uint32_t* words);
// The same with the words' part given as Crc32c(0, words, their bytes), for
// a writer that checksums the words as they arrive.
std::string EncodeMatrixHeaderWithWordsCrc(const StoredMatrixMeta& meta, const float* scales,
                                           uint32_t words_crc);
// The same with both parts given as checksums of their own:
// Crc32c(0, scales, their bytes) and Crc32c(0, words, their bytes), for a
// writer that has neither whole in memory (DirectoryStore::SaveMatrixFrom).
std::string EncodeMatrixHeaderWithCrcs(const StoredMatrixMeta& meta, uint32_t scales_crc,
                                       uint32_t words_crc);
// Bytes of a matrix file before its words: the header, name, content hash
// and scales (the words then run to the end of the file).
int64_t MatrixFileWordsOffset(const StoredMatrixMeta& meta);
// The whole file in memory (tests, fuzz seeds).
std::string EncodeMatrixFile(const StoredMatrixMeta& meta, const float* scales,
                             const uint32_t* words);

// Parses and verifies a whole file: DATA_LOSS naming the first problem
// (magic, version, size, checksum, shape, enum values, name, padding codes,
// scales). Never trusts a count before checking it against the file size.
absl::StatusOr<StoredMatrix> DecodeMatrixFile(std::string_view bytes);

inline constexpr char kKvStoreMagic[8] = {'P', 'L', 'U', 'M', 'E', 'K', 'V', '\n'};
inline constexpr int64_t kKvRecordHeaderBytes = 48;

struct StoredKvMeta {
  std::string name;
  KvShape shape;
  DType source_dtype = DType::kF32;
  int64_t created_unix_ms = 0;
};

struct StoredKv {
  StoredKvMeta meta;
  int64_t seq = 0;
  std::vector<uint8_t> pages;  // pages_for(seq) * page_bytes()
  std::vector<float> k_scales, v_scales;  // global_scales() each
  // The bytes of the file that make up the cache: all of it, unless the last
  // record is torn (an append cut short by a crash, never acknowledged).
  int64_t valid_bytes = 0;
  std::string torn_tail;  // why the bytes past valid_bytes were dropped, or ""
};

// The header of a K/V file (name, shape, cache-wide scales).
std::string EncodeKvHeader(const StoredKvMeta& meta, const float* k_scales, const float* v_scales);
// The 48 bytes in front of a record of `num_pages` pages at `pages`.
std::string EncodeKvRecordHeader(const KvShape& shape, int64_t seq_after, int64_t first_page,
                                 int64_t num_pages, const uint8_t* pages);
// Parses, verifies and replays a whole K/V file. DATA_LOSS for a bad header,
// a bad first record, or a bad record followed by more bytes or whose header
// contradicts itself. A bad last record (from the second on) that is too
// short for its header, all zeros, or a whole header with missing or bad
// pages is a torn append: the cache is what comes before it, and torn_tail
// says why.
absl::StatusOr<StoredKv> DecodeKvFile(std::string_view bytes);

}  // namespace plume::core
