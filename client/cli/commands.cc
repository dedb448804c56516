#include "commands.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "plume/io/checkpoint.h"
#include "plume/io/npy.h"
#include "plume/io/safetensors.h"
#include "progress.h"

namespace plume::cli {

int Fail(const absl::Status& s, int exit_code) {
  absl::FPrintF(stderr, "error: %s\n", FormatStatus(s));
  return exit_code;
}

int UsageError(const std::string& msg) { return Fail(absl::InvalidArgumentError(msg), kExitUsage); }

absl::StatusOr<std::unique_ptr<Client>> MakeClient(const GlobalFlags& g) {
  ClientOptions o;
  o.target = g.server;
  if (!(g.timeout_s > 0) || g.timeout_s > 1e7) {
    return absl::InvalidArgumentError("--timeout must be a positive number of seconds");
  }
  o.default_timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(g.timeout_s * 1000)));
  o.use_tls = g.tls;
  o.tls_ca_file = g.tls_ca;
  o.tls_cert_file = g.tls_cert;
  o.tls_key_file = g.tls_key;
  o.bearer_token = g.token;
  if (!g.token_file.empty()) {
    std::string t;
    if (auto s = io::ReadFileToString(g.token_file, &t); !s.ok()) return s;
    o.bearer_token = std::string(absl::StripAsciiWhitespace(t));
  }
  return Client::Connect(std::move(o));
}

namespace {

// The tensor of a .safetensors file `plume upload` takes: --tensor, or the
// only one that is not the scale tensor of another.
absl::StatusOr<std::string> ChooseTensor(const io::SafetensorsFile& file, const UploadFlags& f) {
  if (!f.tensor.empty()) {
    if (file.Find(f.tensor) == nullptr) {
      return absl::NotFoundError(absl::StrCat(f.file, ": no tensor named '", f.tensor, "'"));
    }
    return f.tensor;
  }
  std::vector<std::string> names, matrices;
  for (const auto& e : file.tensors()) names.push_back(e.name);
  for (const auto& n : names) {
    if (!io::IsScaleTensorName(n, names) && n != f.scale_tensor) matrices.push_back(n);
  }
  if (matrices.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(f.file, " holds ", file.tensors().size(),
                                                   " tensors; choose one with --tensor KEY (",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  return matrices[0];
}

// Loads the 2-D source matrix of `plume upload`.
absl::StatusOr<io::Array> LoadMatrix(const UploadFlags& f, const io::SafetensorsFile* file,
                                     const std::string& key) {
  io::Array a;
  if (file == nullptr) {
    if (!f.tensor.empty()) return absl::InvalidArgumentError("--tensor applies to .safetensors files only");
    auto r = io::ReadNpy(f.file);
    if (!r.ok()) return r.status();
    a = *std::move(r);
  } else {
    auto r = file->Read(key);
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(f.file, ": ", r.status().message()));
    a = *std::move(r);
  }
  if (a.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.file, ": a matrix must be 2-D, this array has ", a.shape.size(), " dimensions"));
  }
  return a;
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(unix_ms % 1000));
}

void PrintInfo(const v1::MatrixInfo& m) {
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
    static constexpr const char* kPlacement[] = {"auto", "single", "sharded", "replicated"};
    const int p = m.placement();
    absl::PrintF("placement:        %s on device(s) %s", p >= 0 && p < 4 ? kPlacement[p] : "unknown",
                 absl::StrJoin(m.devices(), ","));
    if (m.shard_rows_size() > 0) absl::PrintF(", rows %s", absl::StrJoin(m.shard_rows(), "+"));
    absl::PrintF("\n");
  }
  absl::PrintF("backend:          %s\n", m.backend().empty() ? "-" : m.backend());
  if (!m.content_hash().empty()) absl::PrintF("content_hash:     %s\n", m.content_hash());
  // GEMV kernels per batch bucket, one line per activation dtype:
  // "gemv f16:         <=1 wgmma*, <=2 mma, ..." (* = measured).
  for (v1::DType x : {v1::DTYPE_F16, v1::DTYPE_BF16, v1::DTYPE_F32}) {
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

}  // namespace

v1::DType ToWireDType(io::ElemType t) {
  switch (t) {
    case io::ElemType::kF32: return v1::DTYPE_F32;
    case io::ElemType::kF16: return v1::DTYPE_F16;
    case io::ElemType::kBF16: return v1::DTYPE_BF16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

void PrintMatrixInfo(const v1::MatrixInfo& m) { PrintInfo(m); }

absl::StatusOr<v1::DType> ParseFormat(const std::string& s) {
  if (s.empty() || s == "e4m3") return v1::DTYPE_E4M3;
  if (s == "e5m2") return v1::DTYPE_E5M2;
  return absl::InvalidArgumentError(absl::StrCat("unknown --format '", s, "' (e4m3 or e5m2)"));
}

absl::StatusOr<v1::ScaleMode> ParseScaleMode(const std::string& s) {
  if (s == "none") return v1::SCALE_MODE_NONE;
  if (s == "tensor") return v1::SCALE_MODE_TENSOR;
  if (s.empty() || s == "row") return v1::SCALE_MODE_ROW;
  if (s == "block128") return v1::SCALE_MODE_BLOCK128;
  if (s == "block128x128") return v1::SCALE_MODE_BLOCK128X128;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --scale '", s, "' (none, tensor, row, block128 or block128x128)"));
}

absl::StatusOr<v1::Placement> ParsePlacement(const std::string& s) {
  if (s.empty() || s == "auto") return v1::PLACEMENT_AUTO;
  if (s == "single") return v1::PLACEMENT_SINGLE;
  if (s == "sharded") return v1::PLACEMENT_SHARDED;
  if (s == "replicated") return v1::PLACEMENT_REPLICATED;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --placement '", s, "' (auto, single, sharded or replicated)"));
}

absl::StatusOr<v1::DType> ParseFloatDType(const std::string& s) {
  if (s == "f32") return v1::DTYPE_F32;
  if (s == "f16") return v1::DTYPE_F16;
  if (s == "bf16") return v1::DTYPE_BF16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", s, "' (f32, f16 or bf16)"));
}

// Prints rows as aligned columns: words left-aligned, the `numeric` columns
// right-aligned.
void PrintTable(const std::vector<std::vector<std::string>>& rows, const std::set<size_t>& numeric) {
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      const std::string pad(width[i] - r[i].size(), ' ');
      absl::StrAppend(&line, i ? "  " : "",
                      numeric.count(i) ? pad + r[i] : r[i] + (i + 1 < r.size() ? pad : ""));
    }
    absl::PrintF("%s\n", line);
  }
}

namespace {

// Writes a result tensor to `output` (.npy) or, when that is empty, prints
// it one line per last-dimension row.
int EmitResult(const HostTensor& y, const std::string& output) {
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
    return kExitOk;
  }
  const std::vector<float> v = io::ToFloats(out);
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

}  // namespace

int RunUpload(const GlobalFlags& g, const UploadFlags& f) {
  if (!f.codes.empty() || !f.scales.empty()) return RunUploadCodes(g, f);
  if (f.file.empty()) return UsageError("give a FILE to upload, or --codes CODES.npy");
  std::optional<io::SafetensorsFile> file;
  std::string key;
  if (absl::EndsWith(f.file, ".safetensors")) {
    auto opened = io::SafetensorsFile::Open(f.file);
    if (!opened.ok()) return Fail(opened.status(), kExitUsage);
    file = *std::move(opened);
    auto k = ChooseTensor(*file, f);
    if (!k.ok()) return Fail(k.status(), kExitUsage);
    key = *k;
    // FP8 tensors travel pre-packed, with the scales of their scale tensor.
    if (absl::StartsWith(file->Find(key)->dtype, "F8_")) return RunUploadFp8Tensor(g, f, key);
  } else if (!absl::EndsWith(f.file, ".npy")) {
    return UsageError(absl::StrCat("cannot tell the format of ", f.file, ": expected a .npy or .safetensors file"));
  }
  if (!f.scale_tensor.empty()) return UsageError("--scale-tensor applies to FP8 (F8_E4M3/F8_E5M2) tensors only");
  UploadSpec spec;
  spec.name = f.name;
  auto format = ParseFormat(f.format);
  if (!format.ok()) return Fail(format.status(), kExitUsage);
  spec.format = *format;
  auto mode = ParseScaleMode(f.scale);
  if (!mode.ok()) return Fail(mode.status(), kExitUsage);
  spec.scale_mode = *mode;
  spec.non_saturating = f.non_saturating;
  auto placement = ParsePlacement(f.placement);
  if (!placement.ok()) return Fail(placement.status(), kExitUsage);
  spec.placement = *placement;
  auto matrix = LoadMatrix(f, file ? &*file : nullptr, key);
  if (!matrix.ok()) return Fail(matrix.status(), kExitUsage);
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  const TensorRef source{ToWireDType(matrix->dtype), matrix->shape, matrix->data};
  // The same label `plume upload-model` gives this tensor with these options.
  spec.content_hash = io::FloatContentHash(matrix->shape, matrix->data,
                                           {source.dtype, spec.format, spec.scale_mode, spec.non_saturating});
  ProgressDisplay progress(absl::StrCat("upload ", f.name), stderr);
  CallOptions call;
  auto info = (*client)->UploadMatrix(
      spec, source, [&](int64_t sent, int64_t total) { progress.Update(sent, total); }, call);
  progress.Done();
  if (!info.ok()) return Fail(info.status(), kExitRpc);
  PrintInfo(*info);
  return kExitOk;
}

int RunList(const GlobalFlags& g) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto list = (*client)->ListMatrices();
  if (!list.ok()) return Fail(list.status(), kExitRpc);
  std::vector<std::vector<std::string>> rows = {{"NAME", "ROWS", "COLS", "FORMAT", "SCALE", "RESIDENT_BYTES"}};
  for (const auto& m : *list) {
    rows.push_back({m.name(), absl::StrCat(m.rows()), absl::StrCat(m.cols()), DTypeShortName(m.format()),
                    ScaleModeShortName(m.scale_mode()), absl::StrCat(m.resident_bytes())});
  }
  PrintTable(rows, {1, 2, 5});
  return kExitOk;
}

int RunInfo(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->GetMatrix(name);
  if (!info.ok()) return Fail(info.status(), kExitRpc);
  PrintInfo(*info);
  return kExitOk;
}

int RunDelete(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  if (auto s = (*client)->DeleteMatrix(name); !s.ok()) return Fail(s, kExitRpc);
  absl::PrintF("deleted %s\n", name);
  return kExitOk;
}

int RunGemv(const GlobalFlags& g, const GemvFlags& f) {
  auto out_dtype = ParseFloatDType(f.output_dtype);
  if (!out_dtype.ok()) return Fail(out_dtype.status(), kExitUsage);
  auto input = io::ReadNpy(f.input);
  if (!input.ok()) return Fail(input.status(), kExitUsage);
  if (input->shape.size() != 1 && input->shape.size() != 2) {
    return UsageError(absl::StrCat(f.input, ": the input must be 1-D [cols] or 2-D [batch, cols], got ",
                                   input->shape.size(), " dimensions"));
  }
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto y = (*client)->Gemv(f.name, TensorRef{ToWireDType(input->dtype), input->shape, input->data}, *out_dtype);
  if (!y.ok()) return Fail(y.status(), kExitRpc);
  return EmitResult(*y, f.output);
}

// ---------------------------------------------------------------- K/V caches

namespace {

// Reads a 3-D [kv_heads, tokens, head_dim] K or V .npy file.
absl::StatusOr<io::Array> LoadKv(const std::string& path) {
  auto a = io::ReadNpy(path);
  if (!a.ok()) return a.status();
  if (a->shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": K/V must be 3-D [kv_heads, tokens, head_dim], got ",
                                                   a->shape.size(), " dimensions"));
  }
  return a;
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

}  // namespace

int RunKvUpload(const GlobalFlags& g, const KvUploadFlags& f) {
  KvUploadSpec spec;
  spec.name = f.name;
  if (f.format != "e4m3" && f.format != "e5m2") {
    return UsageError(absl::StrCat("unknown --format '", f.format, "' (e4m3 or e5m2)"));
  }
  spec.format = f.format == "e5m2" ? v1::DTYPE_E5M2 : v1::DTYPE_E4M3;
  if (f.scale == "none") {
    spec.scale_mode = v1::KV_SCALE_MODE_NONE;
  } else if (f.scale == "tensor") {
    spec.scale_mode = v1::KV_SCALE_MODE_TENSOR;
  } else if (f.scale == "head") {
    spec.scale_mode = v1::KV_SCALE_MODE_HEAD;
  } else if (f.scale == "block") {
    spec.scale_mode = v1::KV_SCALE_MODE_TOKEN_BLOCK;
  } else {
    return UsageError(absl::StrCat("unknown --scale '", f.scale, "' (none, tensor, head or block)"));
  }
  spec.non_saturating = f.non_saturating;
  auto k = LoadKv(f.k_file);
  if (!k.ok()) return Fail(k.status(), kExitUsage);
  auto v = LoadKv(f.v_file);
  if (!v.ok()) return Fail(v.status(), kExitUsage);
  if (k->shape != v->shape || k->dtype != v->dtype) {
    return UsageError(absl::StrCat(f.k_file, " and ", f.v_file, " must have the same shape and dtype"));
  }
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  ProgressDisplay progress(absl::StrCat("upload ", f.name), stderr);
  auto info = (*client)->UploadKV(spec, TensorRef{ToWireDType(k->dtype), k->shape, k->data},
                                  TensorRef{ToWireDType(v->dtype), v->shape, v->data},
                                  [&](int64_t sent, int64_t total) { progress.Update(sent, total); });
  progress.Done();
  if (!info.ok()) return Fail(info.status(), kExitRpc);
  PrintKvInfo(*info);
  return kExitOk;
}

int RunKvAppend(const GlobalFlags& g, const std::string& name, const std::string& k_file,
                const std::string& v_file) {
  auto k = LoadKv(k_file);
  if (!k.ok()) return Fail(k.status(), kExitUsage);
  auto v = LoadKv(v_file);
  if (!v.ok()) return Fail(v.status(), kExitUsage);
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->AppendKV(name, TensorRef{ToWireDType(k->dtype), k->shape, k->data},
                                  TensorRef{ToWireDType(v->dtype), v->shape, v->data});
  if (!info.ok()) return Fail(info.status(), kExitRpc);
  PrintKvInfo(*info);
  return kExitOk;
}

int RunKvList(const GlobalFlags& g) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto list = (*client)->ListKV();
  if (!list.ok()) return Fail(list.status(), kExitRpc);
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "KV_HEADS", "SEQ", "HEAD_DIM", "FORMAT", "SCALE", "RESIDENT_BYTES"}};
  for (const auto& c : *list) {
    rows.push_back({c.name(), absl::StrCat(c.kv_heads()), absl::StrCat(c.seq()), absl::StrCat(c.head_dim()),
                    DTypeShortName(c.format()), KvScaleModeShortName(c.scale_mode()),
                    absl::StrCat(c.resident_bytes())});
  }
  PrintTable(rows, {1, 2, 3, 6});
  return kExitOk;
}

int RunKvInfo(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->GetKV(name);
  if (!info.ok()) return Fail(info.status(), kExitRpc);
  PrintKvInfo(*info);
  return kExitOk;
}

int RunKvDelete(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  if (auto s = (*client)->DeleteKV(name); !s.ok()) return Fail(s, kExitRpc);
  absl::PrintF("deleted %s\n", name);
  return kExitOk;
}

int RunAttend(const GlobalFlags& g, const AttendFlags& f) {
  auto out_dtype = ParseFloatDType(f.output_dtype);
  if (!out_dtype.ok()) return Fail(out_dtype.status(), kExitUsage);
  if (!std::isfinite(f.scale)) return UsageError("--scale must be a finite number");
  auto q = io::ReadNpy(f.input);
  if (!q.ok()) return Fail(q.status(), kExitUsage);
  if (q->shape.size() != 4) {
    return UsageError(absl::StrCat(f.input, ": the query must be 4-D [batch, heads, q_len, head_dim], got ",
                                   q->shape.size(), " dimensions"));
  }
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  AttentionOptions opts;
  opts.softmax_scale = static_cast<float>(f.scale);
  opts.causal = f.causal;
  opts.output_dtype = *out_dtype;
  auto out = (*client)->Attention(f.name, TensorRef{ToWireDType(q->dtype), q->shape, q->data}, opts);
  if (!out.ok()) return Fail(out.status(), kExitRpc);
  return EmitResult(*out, f.output);
}

int RunHealth(const GlobalFlags& g, const std::string& service) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto h = (*client)->CheckHealth(service);
  if (!h.ok()) return Fail(h.status(), kExitRpc);
  absl::PrintF("%s\n", HealthStatusName(*h));
  return *h == HealthStatus::kServing ? kExitOk : kExitRpc;
}

}  // namespace plume::cli
