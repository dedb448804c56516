#include "plume/io/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "plume/io/array.h"
#include "plume/kernels/layout.h"

namespace plume::io {

const char* Fp8ScaleLayoutName(Fp8ScaleLayout l) {
  switch (l) {
    case Fp8ScaleLayout::kNone: return "none";
    case Fp8ScaleLayout::kTensor: return "tensor";
    case Fp8ScaleLayout::kRow: return "row";
    case Fp8ScaleLayout::kBlock128: return "block128";
    case Fp8ScaleLayout::kBlock128x128: return "block128x128";
  }
  return "?";
}

namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t NumScalesFor(Fp8ScaleLayout l, int64_t rows, int64_t cols) {
  return NumScales(l, rows, cols);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Fp8ScaleLayout> ScaleLayoutFromShape(const std::vector<int64_t>& s, int64_t rows, int64_t cols) {
  const int64_t bc = CeilDiv(cols, kBlockCols), br = CeilDiv(rows, kBlockCols);
  if (s.empty() || (s.size() == 1 && s[0] == 1)) return Fp8ScaleLayout::kTensor;
  if (s.size() == 1 && s[0] == rows) return Fp8ScaleLayout::kRow;
  if (s.size() == 2) {
    const bool row = s[0] == rows && s[1] == 1;
    const bool block = s[0] == rows && s[1] == bc;
    const bool block2 = s[0] == br && s[1] == bc;
    if (row || block || block2) {
      // Coinciding shapes give every element the same scale; take the coarsest.
      if (s[0] == 1 && s[1] == 1) return Fp8ScaleLayout::kTensor;
      if (row) return Fp8ScaleLayout::kRow;
      if (block) return Fp8ScaleLayout::kBlock128;
      return Fp8ScaleLayout::kBlock128x128;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "a scale tensor of shape ", ShapeString(s), " fits no scale layout of a matrix of shape ",
      ShapeString({rows, cols}), " (expected [] or [1] for tensor, ", ShapeString({rows}), " or ",
      ShapeString({rows, 1}), " for row, ", ShapeString({rows, bc}), " for block128, ", ShapeString({br, bc}),
      " for block128x128)"));
}

std::vector<std::string> ScaleTensorCandidates(const std::string& key) {
  std::vector<std::string> out = {key + "_scale", key + "_scale_inv"};
  if (absl::EndsWith(key, ".weight")) {
    const std::string prefix = key.substr(0, key.size() - 7);
    for (const char* s : {".weight_scale", ".weight_scale_inv"}) {
      std::string c = prefix + s;
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
    }
  }
  return out;
}

bool IsScaleTensorName(const std::string& name, const std::vector<std::string>& names) {
  for (const char* suffix : {"_scale_inv", "_scale"}) {
    if (!absl::EndsWith(name, suffix)) continue;
    const std::string key = name.substr(0, name.size() - std::strlen(suffix));
    if (std::binary_search(names.begin(), names.end(), key)) return true;
  }
  return false;
}

bool Fp8FormatOfDtype(const std::string& dtype, Fp8Format* format) {
  if (dtype == "F8_E4M3") {
    *format = Fp8Format::kE4M3;
    return true;
  }
  if (dtype == "F8_E5M2") {
    *format = Fp8Format::kE5M2;
    return true;
  }
  return false;
}

absl::StatusOr<std::vector<float>> ScalesToFloats(const std::string& dtype, std::string_view bytes) {
  Array a;
  if (dtype == "F32") {
    a.dtype = ElemType::kF32;
  } else if (dtype == "BF16") {
    a.dtype = ElemType::kBF16;
  } else if (dtype == "F16") {
    a.dtype = ElemType::kF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("scales must be F32, BF16 or F16, not ", dtype));
  }
  if (bytes.size() % static_cast<size_t>(ElemSize(a.dtype)) != 0) {
    return absl::InvalidArgumentError("scale bytes are not a whole number of elements");
  }
  a.shape = {static_cast<int64_t>(bytes.size()) / ElemSize(a.dtype)};
  a.data.assign(bytes);
  return ToFloats(a);
}

// ---------------------------------------------------------------- Checkpoint

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& path) {
  Checkpoint c;
  if (!absl::EndsWith(path, ".json")) {
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) return f.status();
    c.paths_.push_back(path);
    c.files_.push_back(std::make_shared<SafetensorsFile>(*std::move(f)));
    c.entries_ = c.files_[0]->tensors();
    for (const auto& e : c.entries_) c.file_of_[e.name] = 0;
    return c;
  }
  std::string text;
  if (auto s = ReadFileToString(path, &text); !s.ok()) return s;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"weight_map\" object (a safetensors index maps "
                                                   "each tensor name to its shard file)"));
  }
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::map<std::string, size_t> file_index;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": weight_map[\"", it.key(), "\"] is not a file name"));
    }
    const std::string rel = it.value().get<std::string>();
    auto fi = file_index.find(rel);
    if (fi == file_index.end()) {
      const std::string shard = (dir / rel).string();
      auto f = SafetensorsFile::Open(shard);
      if (!f.ok()) return f.status();
      fi = file_index.emplace(rel, c.files_.size()).first;
      c.paths_.push_back(shard);
      c.files_.push_back(std::make_shared<SafetensorsFile>(*std::move(f)));
    }
    const SafetensorsEntry* e = c.files_[fi->second]->Find(it.key());
    if (e == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": weight_map puts '", it.key(), "' in ", rel,
                                                     ", which has no such tensor"));
    }
    c.entries_.push_back(*e);
    c.file_of_[it.key()] = fi->second;
  }
  std::sort(c.entries_.begin(), c.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
  return c;
}

const SafetensorsEntry* Checkpoint::Find(const std::string& name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? nullptr : files_[it->second]->Find(name);
}

std::string Checkpoint::FileOf(const std::string& name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? std::string() : paths_[it->second];
}

absl::StatusOr<std::string> Checkpoint::ReadBytes(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) return absl::NotFoundError(absl::StrCat("no tensor named '", name, "'"));
  const SafetensorsFile& f = *files_[it->second];
  return f.ReadBytes(*f.Find(name));
}

absl::StatusOr<ByteSource> Checkpoint::Source(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) return absl::NotFoundError(absl::StrCat("no tensor named '", name, "'"));
  const SafetensorsFile& f = *files_[it->second];
  return f.Source(*f.Find(name));
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

// ---------------------------------------------------------------- FP8 matrices

int64_t Fp8Matrix::PayloadBytes() const {
  return PackedLayout{rows, cols}.code_bytes() + static_cast<int64_t>(scales.size()) * 4;
}

absl::StatusOr<ScalePlan> PlanScales(const Checkpoint& ckpt, const std::string& key, const ScaleLookup& lookup) {
  const SafetensorsEntry* e = ckpt.Find(key);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no tensor named '", key, "'"));
  if (e->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", key, "' has shape ", ShapeString(e->shape), "; a matrix must be 2-D"));
  }
  if (lookup.no_scale) {
    if (!lookup.scale_key.empty()) {
      return absl::InvalidArgumentError("a scale tensor and 'no scales' exclude each other");
    }
    return ScalePlan{"", Fp8ScaleLayout::kNone};
  }
  std::string skey = lookup.scale_key;
  if (skey.empty()) {
    std::vector<std::string> found;
    const std::vector<std::string> cands = ScaleTensorCandidates(key);
    for (const auto& c : cands) {
      if (ckpt.Find(c) != nullptr) found.push_back(c);
    }
    if (found.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no scale tensor for FP8 tensor '", key, "' (looked for ", absl::StrJoin(cands, ", "),
          "); name it with --scale-tensor KEY, or upload the codes unscaled with --scale none"));
    }
    if (found.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat("FP8 tensor '", key, "' has several scale tensors (",
                                                     absl::StrJoin(found, ", "),
                                                     "); choose one with --scale-tensor KEY"));
    }
    skey = found[0];
  }
  const SafetensorsEntry* s = ckpt.Find(skey);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("no scale tensor named '", skey, "'"));
  if (s->dtype != "F32" && s->dtype != "BF16" && s->dtype != "F16") {
    return absl::InvalidArgumentError(
        absl::StrCat("scale tensor '", skey, "' has dtype ", s->dtype, "; scales must be F32, BF16 or F16"));
  }
  auto layout = ScaleLayoutFromShape(s->shape, e->shape[0], e->shape[1]);
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale tensor '", skey, "' of '", key, "': ", layout.status().message()));
  }
  return ScalePlan{skey, *layout};
}

absl::StatusOr<Fp8Matrix> LoadFp8Matrix(const Checkpoint& ckpt, const std::string& key, const ScaleLookup& lookup) {
  const SafetensorsEntry* e = ckpt.Find(key);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no tensor named '", key, "'"));
  Fp8Matrix m;
  if (!Fp8FormatOfDtype(e->dtype, &m.format)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", key, "' has dtype ", e->dtype, ", not F8_E4M3 or F8_E5M2"));
  }
  auto plan = PlanScales(ckpt, key, lookup);
  if (!plan.ok()) return plan.status();
  m.key = key;
  m.rows = e->shape[0];
  m.cols = e->shape[1];
  auto codes = ckpt.Source(key);
  if (!codes.ok()) return codes.status();
  m.codes = *std::move(codes);
  m.scale_layout = plan->layout;
  m.scale_key = plan->scale_key;
  if (!plan->scale_key.empty()) {
    const SafetensorsEntry* s = ckpt.Find(plan->scale_key);
    m.scale_shape = s->shape;
    m.scale_dtype = s->dtype;
    auto bytes = ckpt.ReadBytes(plan->scale_key);
    if (!bytes.ok()) return bytes.status();
    auto f = ScalesToFloats(s->dtype, *bytes);
    if (!f.ok()) return f.status();
    m.scales = *std::move(f);
  }
  if (static_cast<int64_t>(m.scales.size()) != NumScalesFor(m.scale_layout, m.rows, m.cols)) {
    return absl::InternalError("scale count does not match the layout");
  }
  return m;
}

absl::StatusOr<Fp8Matrix> Fp8MatrixFromCodes(Fp8Format format, const std::vector<int64_t>& codes_shape,
                                             std::string codes, bool has_scales,
                                             const std::vector<int64_t>& scale_shape, std::vector<float> scales) {
  if (codes_shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("FP8 codes must be a 2-D [rows, cols] array, got shape ", ShapeString(codes_shape)));
  }
  Fp8Matrix m;
  m.format = format;
  m.rows = codes_shape[0];
  m.cols = codes_shape[1];
  if (static_cast<int64_t>(codes.size()) != m.rows * m.cols) {
    return absl::InvalidArgumentError("the codes do not fill their shape");
  }
  m.codes = ByteSource(std::move(codes));
  if (has_scales) {
    auto layout = ScaleLayoutFromShape(scale_shape, m.rows, m.cols);
    if (!layout.ok()) return layout.status();
    m.scale_layout = *layout;
    m.scale_shape = scale_shape;
    m.scale_dtype = "F32";
    m.scales = std::move(scales);
    if (static_cast<int64_t>(m.scales.size()) != NumScalesFor(m.scale_layout, m.rows, m.cols)) {
      return absl::InvalidArgumentError("the scales do not fill their shape");
    }
  }
  return m;
}

std::vector<uint32_t> PackFp8Codes(std::string_view codes, int64_t rows, int64_t cols) {
  const PackedLayout l{rows, cols};
  std::vector<uint32_t> words(static_cast<size_t>(l.total_words()), 0u);
  for (int64_t r = 0; r < rows; ++r) {
    const unsigned char* src = reinterpret_cast<const unsigned char*>(codes.data()) + r * cols;
    uint32_t* dst = words.data() + r * l.words_per_row();
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      dst[c / 4] = uint32_t{src[c]} | uint32_t{src[c + 1]} << 8 | uint32_t{src[c + 2]} << 16 |
                   uint32_t{src[c + 3]} << 24;
    }
    for (; c < cols; ++c) dst[c / 4] |= uint32_t{src[c]} << (8 * (c % 4));
  }
  return words;
}

void PackFp8CodesRange(std::string_view codes, int64_t rows, int64_t cols, int64_t offset, int64_t n,
                       char* out) {
  const int64_t row_bytes = PackedLayout{rows, cols}.padded_cols();
  if (row_bytes == cols) {  // no padding: the codes themselves
    std::memcpy(out, codes.data() + offset, static_cast<size_t>(n));
    return;
  }
  while (n > 0) {
    const int64_t r = offset / row_bytes, c = offset % row_bytes;
    const int64_t take = std::min(n, c < cols ? cols - c : row_bytes - c);
    if (c < cols) {
      std::memcpy(out, codes.data() + r * cols + c, static_cast<size_t>(take));
    } else {
      std::memset(out, 0, static_cast<size_t>(take));
    }
    out += take;
    offset += take;
    n -= take;
  }
}

std::string UnpackFp8Codes(const uint32_t* words, int64_t rows, int64_t cols) {
  const PackedLayout l{rows, cols};
  std::string out(static_cast<size_t>(rows * cols), '\0');
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[static_cast<size_t>(r * cols + c)] = static_cast<char>(CodeAt(words, l, r, c));
  }
  return out;
}

// ---------------------------------------------------------------- content hash

absl::StatusOr<std::string> Fp8ContentHash(const Fp8Matrix& m, bool non_saturating) {
  return Fp8CodesContentHash(
      m.rows, m.cols, static_cast<int>(m.format), static_cast<int>(m.scale_layout), non_saturating, m.codes,
      std::string_view(reinterpret_cast<const char*>(m.scales.data()), m.scales.size() * sizeof(float)));
}

}  // namespace plume::io
