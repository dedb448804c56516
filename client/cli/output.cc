#include "output.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "commands.h"
#include "plume/io/npy.h"

namespace plume::cli {

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(unix_ms % 1000));
}

namespace {

const char* PlacementName(int p) {
  static constexpr const char* kPlacement[] = {"auto", "single", "sharded", "replicated"};
  return p >= 0 && p < 4 ? kPlacement[p] : "unknown";
}

Json OrNull(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

}  // namespace

void PrintMatrixInfo(const v1::MatrixInfo& m) {
  absl::PrintF("name:             %s\n", m.name());
  absl::PrintF("rows:             %d\n", m.rows());
  absl::PrintF("cols:             %d\n", m.cols());
  absl::PrintF("format:           %s\n", DTypeShortName(m.format()));
  absl::PrintF("scale_mode:       %s\n", ScaleModeShortName(m.scale_mode()));
  absl::PrintF("source_dtype:     %s\n", DTypeShortName(m.source_dtype()));
  absl::PrintF("non_saturating:   %s\n", m.non_saturating() ? "true" : "false");
  absl::PrintF("padded_cols:      %d\n", m.layout().padded_cols());
  absl::PrintF("row_stride_bytes: %d\n", m.layout().row_stride_bytes());
  absl::PrintF("num_scales:       %d\n", m.layout().num_scales());
  absl::PrintF("resident_bytes:   %d\n", m.resident_bytes());
  absl::PrintF("created:          %s\n", FormatTime(m.created_unix_ms()));
  if (m.devices_size() > 0) {
    absl::PrintF("placement:        %s on device(s) %s", PlacementName(m.placement()),
                 absl::StrJoin(m.devices(), ","));
    if (m.shard_rows_size() > 0) absl::PrintF(", rows %s", absl::StrJoin(m.shard_rows(), "+"));
    absl::PrintF("\n");
  }
  absl::PrintF("backend:          %s\n", m.backend().empty() ? "-" : m.backend());
  if (!m.content_hash().empty()) absl::PrintF("content_hash:     %s\n", m.content_hash());
  // GEMV kernels per batch bucket, one line per activation dtype:
  // "gemv f16:         <=1 wgmma*, <=2 mma, ..." (* = measured); FP8
  // activations may also show cublaslt.
  for (v1::DType x :
       {v1::DTYPE_F16, v1::DTYPE_BF16, v1::DTYPE_F32, v1::DTYPE_E4M3, v1::DTYPE_E5M2}) {
    std::vector<std::string> cells;
    for (const v1::GemvKernelChoice& k : m.gemv_kernels()) {
      if (k.activation_dtype() != x) continue;
      cells.push_back(absl::StrCat("<=", k.max_batch(), " ", k.kernel(), k.measured() ? "*" : ""));
    }
    if (cells.empty()) continue;
    absl::PrintF("gemv %-4s kernels: %s\n", DTypeShortName(x), absl::StrJoin(cells, ", "));
  }
  if (m.gemv_kernels_size() > 0) {
    absl::PrintF("                  (batch bucket, kernel; * = measured on first use, else the default)\n");
  }
}

void PrintKvInfo(const v1::KVInfo& c) {
  absl::PrintF("name:             %s\n", c.name());
  absl::PrintF("kv_heads:         %d\n", c.kv_heads());
  absl::PrintF("seq:              %d\n", c.seq());
  absl::PrintF("head_dim:         %d\n", c.head_dim());
  absl::PrintF("format:           %s\n", DTypeShortName(c.format()));
  absl::PrintF("scale_mode:       %s\n", KvScaleModeShortName(c.scale_mode()));
  absl::PrintF("source_dtype:     %s\n", DTypeShortName(c.source_dtype()));
  absl::PrintF("non_saturating:   %s\n", c.non_saturating() ? "true" : "false");
  absl::PrintF("page_tokens:      %d\n", c.layout().page_tokens());
  absl::PrintF("row_stride_bytes: %d\n", c.layout().row_stride_bytes());
  absl::PrintF("pages:            %d\n", c.layout().pages());
  absl::PrintF("capacity_tokens:  %d\n", c.layout().capacity_tokens());
  absl::PrintF("resident_bytes:   %d\n", c.resident_bytes());
  absl::PrintF("created:          %s\n", FormatTime(c.created_unix_ms()));
  absl::PrintF("backend:          %s\n", c.backend().empty() ? "-" : c.backend());
}

Json MatrixInfoJson(const v1::MatrixInfo& m) {
  Json j;
  j["name"] = m.name();
  j["rows"] = m.rows();
  j["cols"] = m.cols();
  j["format"] = DTypeShortName(m.format());
  j["scale_mode"] = ScaleModeShortName(m.scale_mode());
  j["source_dtype"] = DTypeShortName(m.source_dtype());
  j["non_saturating"] = m.non_saturating();
  j["padded_cols"] = m.layout().padded_cols();
  j["row_stride_bytes"] = m.layout().row_stride_bytes();
  j["num_scales"] = m.layout().num_scales();
  j["resident_bytes"] = m.resident_bytes();
  j["created_unix_ms"] = m.created_unix_ms();
  j["created"] = m.created_unix_ms() > 0 ? Json(FormatTime(m.created_unix_ms())) : Json(nullptr);
  // A server that places matrices on devices says where; others say nothing.
  j["placement"] = m.devices_size() > 0 ? Json(PlacementName(m.placement())) : Json(nullptr);
  j["devices"] = Json::array();
  for (int d : m.devices()) j["devices"].push_back(d);
  j["shard_rows"] = Json::array();
  for (int64_t r : m.shard_rows()) j["shard_rows"].push_back(r);
  j["backend"] = OrNull(m.backend());
  j["content_hash"] = OrNull(m.content_hash());
  j["gemv_kernels"] = Json::array();
  for (const v1::GemvKernelChoice& k : m.gemv_kernels()) {
    j["gemv_kernels"].push_back({{"activation_dtype", DTypeShortName(k.activation_dtype())},
                                 {"max_batch", k.max_batch()},
                                 {"kernel", k.kernel()},
                                 {"measured", k.measured()}});
  }
  return j;
}

Json KvInfoJson(const v1::KVInfo& c) {
  Json j;
  j["name"] = c.name();
  j["kv_heads"] = c.kv_heads();
  j["seq"] = c.seq();
  j["head_dim"] = c.head_dim();
  j["format"] = DTypeShortName(c.format());
  j["scale_mode"] = KvScaleModeShortName(c.scale_mode());
  j["source_dtype"] = DTypeShortName(c.source_dtype());
  j["non_saturating"] = c.non_saturating();
  j["page_tokens"] = c.layout().page_tokens();
  j["row_stride_bytes"] = c.layout().row_stride_bytes();
  j["page_bytes"] = c.layout().page_bytes();
  j["pages"] = c.layout().pages();
  j["capacity_tokens"] = c.layout().capacity_tokens();
  j["resident_bytes"] = c.resident_bytes();
  j["created_unix_ms"] = c.created_unix_ms();
  j["created"] = c.created_unix_ms() > 0 ? Json(FormatTime(c.created_unix_ms())) : Json(nullptr);
  j["backend"] = OrNull(c.backend());
  return j;
}

Json ArrayJson(const std::string& file, const std::string& file_dtype, const io::Array& a) {
  return {{"file", file}, {"file_dtype", file_dtype}, {"dtype", io::ElemTypeName(a.dtype)}, {"shape", a.shape}};
}

void PrintJson(const Json& j) {
  // Non-finite floats have no JSON form: nlohmann writes them as null.
  absl::PrintF("%s\n", j.dump(2));
}

namespace {

// `v` (row-major, `shape`) as nested arrays; each float as the shortest
// decimal that reads back as the same float; NaN and infinities as null.
Json Nested(const std::vector<float>& v, const std::vector<int64_t>& shape, size_t dim, size_t* pos) {
  if (dim == shape.size()) {
    const float f = v[(*pos)++];
    if (!std::isfinite(f)) return nullptr;
    return std::stod(absl::StrFormat("%.9g", f));
  }
  Json a = Json::array();
  for (int64_t i = 0; i < shape[dim]; ++i) a.push_back(Nested(v, shape, dim + 1, pos));
  return a;
}

}  // namespace

int EmitResult(const HostTensor& y, const std::string& output, Json* summary) {
  io::Array out;
  out.shape = y.shape;
  if (y.dtype == v1::DTYPE_F16) {
    out.dtype = io::ElemType::kF16;
    out.data = y.data;
  } else {
    // F32 as is; BF16 (which .npy cannot hold) widened to F32.
    auto floats = y.ToFloats();
    if (!floats.ok()) return Fail(floats.status(), kExitRpc);
    out = io::FromFloats(y.shape, floats->data());
  }
  if (auto s = ValidateTensor(y.ref()); !s.ok()) {
    return Fail(absl::InternalError(absl::StrCat("malformed result: ", s.message())), kExitRpc);
  }
  if (!output.empty()) {
    if (auto s = io::WriteNpy(output, out); !s.ok()) return Fail(s, kExitUsage);
  }
  const std::vector<float> v = output.empty() ? io::ToFloats(out) : std::vector<float>();
  if (summary != nullptr) {
    (*summary)["output"] = {{"file", OrNull(output)}, {"dtype", DTypeShortName(y.dtype)}, {"shape", y.shape}};
    size_t pos = 0;
    (*summary)["values"] = output.empty() ? Nested(v, y.shape, 0, &pos) : Json(nullptr);
    PrintJson(*summary);
    return kExitOk;
  }
  if (!output.empty()) return kExitOk;
  const int64_t row_len = out.shape.empty() ? 1 : out.shape.back();
  const int64_t nrows = row_len > 0 ? static_cast<int64_t>(v.size()) / row_len : (out.shape.size() == 2 ? out.shape[0] : 1);
  for (int64_t r = 0; r < nrows; ++r) {
    std::string line = "[";
    for (int64_t c = 0; c < row_len; ++c) {
      absl::StrAppend(&line, c ? " " : "", absl::StrFormat("%.7g", v[static_cast<size_t>(r * row_len + c)]));
    }
    line += "]";
    absl::PrintF("%s\n", line);
  }
  return kExitOk;
}

}  // namespace plume::cli
