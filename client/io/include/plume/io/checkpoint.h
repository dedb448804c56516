// FP8 checkpoints as they ship: a .safetensors file (or the shards a
// model.safetensors.index.json names) holding F8_E4M3 / F8_E5M2 weights next
// to FP32/BF16/F16 scale tensors. Everything here reads files and maps them
// onto plume's wire model (packed words, scale modes); nothing talks gRPC.
//
// Scale convention: value = code x scale in every mode. DeepSeek-V3's
// `weight_scale_inv` and Llama-FP8's `weight_scale` are both multipliers
// (the "_inv" is historical: the inverse of the quantization scale).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "plume/io/content_hash.h"
#include "plume/io/safetensors.h"
#include "plume/kernels/types.h"

namespace plume::io {

// How FP32 scales attach to an FP8 matrix: plume's scale modes (types.h,
// numbered as plume.v1.ScaleMode): NONE no scales, TENSOR [1], ROW [rows],
// BLOCK128 [rows][ceil(cols/128)], BLOCK128X128 [ceil(rows/128)][ceil(cols/128)].
using Fp8ScaleLayout = ScaleMode;

const char* Fp8ScaleLayoutName(Fp8ScaleLayout l);  // "none", "tensor", "row", "block128", "block128x128"
int64_t NumScalesFor(Fp8ScaleLayout l, int64_t rows, int64_t cols);
std::string ShapeString(const std::vector<int64_t>& shape);  // "[200, 300]", "[]"

// The layout a scale tensor of `scale_shape` gives a [rows, cols] matrix:
//   [] or [1]                               -> TENSOR
//   [rows] or [rows, 1]                     -> ROW
//   [rows, ceil(cols/128)]                  -> BLOCK128
//   [ceil(rows/128), ceil(cols/128)]        -> BLOCK128X128
// Both dimensions are always compared. Shapes coincide only where a
// dimension is 1 (rows == 1, or cols <= 128, or rows and cols <= 128 with a
// [1, 1] scale); the coinciding layouts then give every element the same
// scale, and the first in the order TENSOR, ROW, BLOCK128, BLOCK128X128 is
// chosen (the coarsest one, which every server version accepts): a [1, 1]
// scale that fits is TENSOR, [rows, 1] with cols <= 128 is ROW, [1, n] of a
// one-row matrix is BLOCK128. Any other shape is
// INVALID_ARGUMENT naming the scale's shape and the matrix's shape.
absl::StatusOr<Fp8ScaleLayout> ScaleLayoutFromShape(const std::vector<int64_t>& scale_shape, int64_t rows,
                                                    int64_t cols);

// Scale tensor names tried for tensor `key`, in order: `<key>_scale`,
// `<key>_scale_inv`, and for a key `<prefix>.weight` the siblings
// `<prefix>.weight_scale` and `<prefix>.weight_scale_inv` (the same names
// spelled from the prefix), without duplicates.
std::vector<std::string> ScaleTensorCandidates(const std::string& key);
// True when `name` is the scale tensor of some tensor in `names` by the rules
// above (e.g. "x.weight_scale_inv" next to "x.weight").
bool IsScaleTensorName(const std::string& name, const std::vector<std::string>& names);

// True for the safetensors dtypes "F8_E4M3" and "F8_E5M2", with `*format` set.
bool Fp8FormatOfDtype(const std::string& safetensors_dtype, Fp8Format* format);

// FP32, BF16 or F16 little-endian bytes to floats (F32 copied).
absl::StatusOr<std::vector<float>> ScalesToFloats(const std::string& dtype, std::string_view bytes);

// One checkpoint: a single .safetensors file, or a sharded one read through
// its index JSON ({"weight_map": {key: file}}, files relative to the index's
// folder). Tensor names are unique across shards.
class Checkpoint {
 public:
  // `path` ending in ".json" is an index; anything else one .safetensors file.
  static absl::StatusOr<Checkpoint> Open(const std::string& path);

  // Every tensor, sorted by name.
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  const SafetensorsEntry* Find(const std::string& name) const;
  // The file holding `name` (empty if there is none).
  std::string FileOf(const std::string& name) const;
  absl::StatusOr<std::string> ReadBytes(const std::string& name) const;
  // The same bytes, to be read in pieces (SafetensorsFile::Source).
  absl::StatusOr<ByteSource> Source(const std::string& name) const;
  // All tensor names (sorted).
  std::vector<std::string> names() const;

 private:
  std::vector<std::string> paths_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> file_of_;  // name -> index into files_
};

// An FP8 matrix as it travels pre-packed: its codes (row-major, one byte
// each, exactly as stored in the file, which LoadFp8Matrix leaves there to
// be read as they are hashed and sent) and its FP32 scales.
struct Fp8Matrix {
  std::string key;  // the tensor's name in the checkpoint ("" for .npy input)
  Fp8Format format = Fp8Format::kE4M3;
  int64_t rows = 0;
  int64_t cols = 0;
  ByteSource codes;  // rows * cols bytes
  Fp8ScaleLayout scale_layout = Fp8ScaleLayout::kNone;
  std::vector<float> scales;  // NumScalesFor(scale_layout, rows, cols) floats
  std::string scale_key;      // the scale tensor's name; "" when none
  std::vector<int64_t> scale_shape;
  std::string scale_dtype;  // as in the file: "F32", "BF16", "F16"

  // Bytes a pre-packed upload sends: packed words plus FP32 scales.
  int64_t PayloadBytes() const;
};

// How to find the scale tensor of an FP8 tensor.
struct ScaleLookup {
  std::string scale_key;  // set: this tensor (--scale-tensor)
  bool no_scale = false;  // set: no scale tensor, SCALE_MODE_NONE (--scale none)
};

// Where the scale tensor of FP8 tensor `key` is and which layout it gives,
// from the headers only. NOT_FOUND (suggesting --scale-tensor or --scale
// none) when no candidate exists; INVALID_ARGUMENT when two do, or when the
// shape or dtype does not fit.
struct ScalePlan {
  std::string scale_key;  // "" for none
  Fp8ScaleLayout layout = Fp8ScaleLayout::kNone;
};
absl::StatusOr<ScalePlan> PlanScales(const Checkpoint& ckpt, const std::string& key, const ScaleLookup& lookup);

// FP8 tensor `key` (2-D, F8_E4M3 or F8_E5M2): its scales read, its codes
// a ByteSource of the file.
absl::StatusOr<Fp8Matrix> LoadFp8Matrix(const Checkpoint& ckpt, const std::string& key,
                                        const ScaleLookup& lookup = {});
// Builds an Fp8Matrix from raw [rows, cols] uint8 codes and a float scale
// array whose shape picks the layout (ScaleLayoutFromShape); `has_scales`
// false means no scales (NONE).
absl::StatusOr<Fp8Matrix> Fp8MatrixFromCodes(Fp8Format format, const std::vector<int64_t>& codes_shape,
                                             std::string codes, bool has_scales,
                                             const std::vector<int64_t>& scale_shape, std::vector<float> scales);

// plume's packed layout (kernels/include/plume/kernels/layout.h): four codes
// per little-endian uint32, rows padded with zero codes to padded_cols.
std::vector<uint32_t> PackFp8Codes(std::string_view codes, int64_t rows, int64_t cols);
// Bytes [offset, offset + n) of that layout, from rows * cols codes, into
// `out` (a pre-packed upload packs each message this way). Byte k of word j
// is code 4j + k, so a row is its codes followed by its zero padding: when
// cols is a multiple of 16 the packed bytes are the codes themselves.
void PackFp8CodesRange(std::string_view codes, int64_t rows, int64_t cols, int64_t offset, int64_t n,
                       char* out);
// The inverse: rows * cols codes, padding dropped.
std::string UnpackFp8Codes(const uint32_t* words, int64_t rows, int64_t cols);

// The content hash of a pre-packed FP8 upload: shape, options, codes,
// scales (content_hash.h, Fp8CodesContentHash). Reads the codes through
// once; their read's error otherwise.
absl::StatusOr<std::string> Fp8ContentHash(const Fp8Matrix& m, bool non_saturating);

}  // namespace plume::io
