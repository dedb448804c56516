#include "plume/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace plume::io {
namespace {

// The format caps the header at 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed .safetensors file: ", what));
}

int SafetensorsElemSize(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

const char* SafetensorsDtype(ElemType t) {
  switch (t) {
    case ElemType::kF32: return "F32";
    case ElemType::kF16: return "F16";
    case ElemType::kBF16: return "BF16";
  }
  return "?";
}

uint64_t LoadLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(std::string_view json,
                                                                     uint64_t data_size) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("the header is not valid JSON");
  if (!j.is_object()) return Bad("the header is not a JSON object");
  std::vector<SafetensorsEntry> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const nlohmann::json& t = it.value();
    const std::string where = absl::StrCat("tensor '", it.key(), "': ");
    if (!t.is_object()) return Bad(where + "entry is not an object");
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string()) return Bad(where + "missing string 'dtype'");
    if (sh == t.end() || !sh->is_array()) return Bad(where + "missing array 'shape'");
    if (off == t.end() || !off->is_array() || off->size() != 2) {
      return Bad(where + "'data_offsets' must be [begin, end]");
    }
    SafetensorsEntry e;
    e.name = it.key();
    e.dtype = dt->get<std::string>();
    const int esize = SafetensorsElemSize(e.dtype);
    if (esize == 0) return Bad(where + "unknown dtype '" + e.dtype + "'");
    if (sh->size() > 32) return Bad(where + "too many dimensions");
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return Bad(where + "shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Bad(where + "dimension too large");
      e.shape.push_back(static_cast<int64_t>(v));
    }
    for (const auto& o : *off) {
      if (!o.is_number_unsigned()) return Bad(where + "data_offsets must be non-negative integers");
    }
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size) {
      return Bad(absl::StrCat(where, "data_offsets [", e.begin, ", ", e.end, "] fall outside the ",
                              data_size, "-byte data section"));
    }
    auto bytes = CheckedNumBytes(e.shape, esize, data_size);
    if (!bytes.ok()) return Bad(where + std::string(bytes.status().message()));
    if (static_cast<uint64_t>(*bytes) != e.end - e.begin) {
      return Bad(absl::StrCat(where, "shape needs ", *bytes, " bytes but data_offsets span ",
                              e.end - e.begin));
    }
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::ifstream in;
  absl::StatusOr<uint64_t> size = OpenForRead(path, &in);
  if (!size.ok()) return size.status();
  const uint64_t file_size = *size;
  if (file_size < 8) return Bad("shorter than the 8-byte header length");
  char lenbuf[8];
  if (!in.read(lenbuf, 8)) return absl::DataLossError(absl::StrCat("short read from ", path));
  const uint64_t n = LoadLe64(lenbuf);
  if (n > kMaxHeaderBytes || n > file_size - 8) return Bad("header length runs past the end of the file");
  std::string header(static_cast<size_t>(n), '\0');
  if (n > 0 && !in.read(header.data(), static_cast<std::streamsize>(n))) {
    return absl::DataLossError(absl::StrCat("short read from ", path));
  }
  auto entries = ParseSafetensorsHeader(header, file_size - 8 - n);
  if (!entries.ok()) {
    return absl::Status(entries.status().code(), absl::StrCat(path, ": ", entries.status().message()));
  }
  auto file = FileHandle::Open(path);
  if (!file.ok()) return file.status();
  SafetensorsFile f;
  f.file_ = *std::move(file);
  f.data_start_ = 8 + n;
  f.entries_ = *std::move(entries);
  return f;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::FromBytes(std::string bytes) {
  if (bytes.size() < 8) return Bad("shorter than the 8-byte header length");
  const uint64_t n = LoadLe64(bytes.data());
  if (n > kMaxHeaderBytes || n > bytes.size() - 8) return Bad("header length runs past the end of the file");
  auto entries = ParseSafetensorsHeader(std::string_view(bytes).substr(8, n), bytes.size() - 8 - n);
  if (!entries.ok()) return entries.status();
  SafetensorsFile f;
  f.image_ = ByteSource(std::move(bytes));
  f.data_start_ = 8 + n;
  f.entries_ = *std::move(entries);
  return f;
}

const SafetensorsEntry* SafetensorsFile::Find(const std::string& name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const SafetensorsEntry& e, const std::string& n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

absl::StatusOr<std::string> SafetensorsFile::ReadBytes(const SafetensorsEntry& e) const {
  return Source(e).ReadAll();
}

ByteSource SafetensorsFile::Source(const SafetensorsEntry& e) const {
  if (file_ == nullptr) {
    // The image in memory: a view of it is a copy of the entry's bytes.
    std::string bytes(static_cast<size_t>(e.end - e.begin), '\0');
    (void)image_.Read(data_start_ + e.begin, e.end - e.begin, bytes.data());  // within the image
    return ByteSource(std::move(bytes));
  }
  return ByteSource(file_, data_start_ + e.begin, e.end - e.begin);
}

absl::StatusOr<Array> SafetensorsFile::Read(const std::string& name) const {
  const SafetensorsEntry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no tensor named '", name, "'"));
  Array a;
  if (e->dtype == "F32") {
    a.dtype = ElemType::kF32;
  } else if (e->dtype == "F16") {
    a.dtype = ElemType::kF16;
  } else if (e->dtype == "BF16") {
    a.dtype = ElemType::kBF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has dtype ", e->dtype,
                                                   "; only F32, F16 and BF16 are supported"));
  }
  a.shape = e->shape;
  auto data = ReadBytes(*e);
  if (!data.ok()) return data.status();
  a.data = *std::move(data);
  return a;
}

absl::StatusOr<std::string> EncodeSafetensors(const std::map<std::string, Array>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, a] : tensors) {
    if (name == "__metadata__") return absl::InvalidArgumentError("'__metadata__' is reserved");
    auto bytes = CheckedNumBytes(a.shape, ElemSize(a.dtype), std::numeric_limits<int64_t>::max());
    if (!bytes.ok()) return bytes.status();
    if (static_cast<uint64_t>(*bytes) != a.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' data does not match its shape"));
    }
    header[name] = {{"dtype", SafetensorsDtype(a.dtype)},
                    {"shape", a.shape},
                    {"data_offsets", {offset, offset + a.data.size()}}};
    offset += a.data.size();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((static_cast<uint64_t>(h.size()) >> (8 * i)) & 0xff);
  out += h;
  for (const auto& [name, a] : tensors) out += a.data;
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Array>& tensors) {
  auto enc = EncodeSafetensors(tensors);
  if (!enc.ok()) return enc.status();
  return WriteStringToFile(path, *enc);
}

}  // namespace plume::io
