#include "commands.h"

#include <cmath>
#include <cstdio>
#include <ctime>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "plume/io/npy.h"
#include "plume/io/safetensors.h"
#include "progress.h"

namespace plume::cli {
namespace {

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

v1::DType ToWire(io::ElemType t) {
  switch (t) {
    case io::ElemType::kF32: return v1::DTYPE_F32;
    case io::ElemType::kF16: return v1::DTYPE_F16;
    case io::ElemType::kBF16: return v1::DTYPE_BF16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// Loads the 2-D source matrix of `plume upload`.
absl::StatusOr<io::Array> LoadMatrix(const UploadFlags& f) {
  io::Array a;
  if (absl::EndsWith(f.file, ".npy")) {
    if (!f.tensor.empty()) return absl::InvalidArgumentError("--tensor applies to .safetensors files only");
    auto r = io::ReadNpy(f.file);
    if (!r.ok()) return r.status();
    a = *std::move(r);
  } else if (absl::EndsWith(f.file, ".safetensors")) {
    auto file = io::SafetensorsFile::Open(f.file);
    if (!file.ok()) return file.status();
    std::string key = f.tensor;
    if (key.empty()) {
      if (file->tensors().size() != 1) {
        std::string names;
        for (const auto& e : file->tensors()) absl::StrAppend(&names, names.empty() ? "" : ", ", e.name);
        return absl::InvalidArgumentError(absl::StrCat(
            f.file, " holds ", file->tensors().size(), " tensors; choose one with --tensor KEY (", names, ")"));
      }
      key = file->tensors()[0].name;
    }
    auto r = file->Read(key);
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(f.file, ": ", r.status().message()));
    a = *std::move(r);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("cannot tell the format of ", f.file,
                                                   ": expected a .npy or .safetensors file"));
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
  absl::PrintF("backend:          %s\n", m.backend().empty() ? "-" : m.backend());
}

absl::StatusOr<v1::DType> ParseFloatDType(const std::string& s) {
  if (s == "f32") return v1::DTYPE_F32;
  if (s == "f16") return v1::DTYPE_F16;
  if (s == "bf16") return v1::DTYPE_BF16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", s, "' (f32, f16 or bf16)"));
}

}  // namespace

int RunUpload(const GlobalFlags& g, const UploadFlags& f) {
  UploadSpec spec;
  spec.name = f.name;
  if (f.format == "e4m3") {
    spec.format = v1::DTYPE_E4M3;
  } else if (f.format == "e5m2") {
    spec.format = v1::DTYPE_E5M2;
  } else {
    return UsageError(absl::StrCat("unknown --format '", f.format, "' (e4m3 or e5m2)"));
  }
  if (f.scale == "none") {
    spec.scale_mode = v1::SCALE_MODE_NONE;
  } else if (f.scale == "tensor") {
    spec.scale_mode = v1::SCALE_MODE_TENSOR;
  } else if (f.scale == "row") {
    spec.scale_mode = v1::SCALE_MODE_ROW;
  } else if (f.scale == "block128") {
    spec.scale_mode = v1::SCALE_MODE_BLOCK128;
  } else {
    return UsageError(absl::StrCat("unknown --scale '", f.scale, "' (none, tensor, row or block128)"));
  }
  spec.non_saturating = f.non_saturating;
  auto matrix = LoadMatrix(f);
  if (!matrix.ok()) return Fail(matrix.status(), kExitUsage);
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  const TensorRef source{ToWire(matrix->dtype), matrix->shape, matrix->data};
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
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      // Names and words left-aligned, numbers right-aligned.
      const bool numeric = i == 1 || i == 2 || i == 5;
      const std::string pad(width[i] - r[i].size(), ' ');
      absl::StrAppend(&line, i ? "  " : "", numeric ? pad + r[i] : r[i] + (i + 1 < r.size() ? pad : ""));
    }
    absl::PrintF("%s\n", line);
  }
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
  auto y = (*client)->Gemv(f.name, TensorRef{ToWire(input->dtype), input->shape, input->data}, *out_dtype);
  if (!y.ok()) return Fail(y.status(), kExitRpc);
  io::Array out;
  out.shape = y->shape;
  if (y->dtype == v1::DTYPE_F16) {
    out.dtype = io::ElemType::kF16;
    out.data = y->data;
  } else {
    // F32 as is; BF16 (which .npy cannot hold) widened to F32.
    auto floats = y->ToFloats();
    if (!floats.ok()) return Fail(floats.status(), kExitRpc);
    out = io::FromFloats(y->shape, floats->data());
  }
  if (auto s = ValidateTensor(y->ref()); !s.ok()) {
    return Fail(absl::InternalError(absl::StrCat("malformed GEMV result: ", s.message())), kExitRpc);
  }
  if (!f.output.empty()) {
    if (auto s = io::WriteNpy(f.output, out); !s.ok()) return Fail(s, kExitUsage);
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

int RunHealth(const GlobalFlags& g, const std::string& service) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto h = (*client)->CheckHealth(service);
  if (!h.ok()) return Fail(h.status(), kExitRpc);
  absl::PrintF("%s\n", HealthStatusName(*h));
  return *h == HealthStatus::kServing ? kExitOk : kExitRpc;
}

}  // namespace plume::cli
