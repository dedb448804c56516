#include "commands.h"

#include <grpcpp/channel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
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
#include "output.h"
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
  if (!(g.upload_deadline_s >= 0) || g.upload_deadline_s > 1e7) {
    return absl::InvalidArgumentError("--upload-deadline must be a number of seconds (0: none)");
  }
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

CallOptions UploadCallOptions(const GlobalFlags& g) {
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000))); };
  CallOptions call;
  call.message_timeout = ms(g.timeout_s);
  if (g.upload_deadline_s > 0) call.timeout = ms(g.upload_deadline_s);
  return call;
}

absl::Status ExplainRpcError(const GlobalFlags& g, const Client& client, const absl::Status& s) {
  if (s.code() != absl::StatusCode::kUnavailable) return s;
  // A server that answered UNAVAILABLE (draining, say) leaves the channel
  // READY or IDLE; one that was never reached leaves it failing or retrying.
  const grpc_connectivity_state state = client.channel()->GetState(/*try_to_connect=*/false);
  if (state != GRPC_CHANNEL_TRANSIENT_FAILURE && state != GRPC_CHANNEL_CONNECTING) return s;
  const bool tls = g.tls || !g.tls_ca.empty() || !g.tls_cert.empty() || !g.tls_key.empty();
  return absl::UnavailableError(absl::StrCat(
      "cannot reach plume server at ", g.server, " (", s.message(), "); is it running? pass --server HOST:PORT",
      tls ? " (and check that it serves TLS as --tls* say)" : ""));
}

int RpcFail(const GlobalFlags& g, const Client& client, const absl::Status& s) {
  return Fail(ExplainRpcError(g, client, s), kExitRpc);
}

absl::StatusOr<io::Array> ReadFloatNpy(const std::string& path, std::string* file_dtype) {
  io::NpyConversion conv;
  auto a = io::ReadNpyConverting(path, &conv);
  if (!a.ok()) return a.status();
  if (conv.from_f64) {
    absl::FPrintF(stderr, "note: %s is float64 (numpy's default); converted to float32 for plume%s\n", path,
                  conv.overflowed > 0
                      ? absl::StrCat(" (", conv.overflowed, " values beyond float32's range became +-inf)")
                      : "");
  }
  if (file_dtype != nullptr) *file_dtype = conv.from_f64 ? "f64" : io::ElemTypeName(a->dtype);
  return a;
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
    auto r = ReadFloatNpy(f.file);
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

}  // namespace

v1::DType ToWireDType(io::ElemType t) {
  switch (t) {
    case io::ElemType::kF32: return v1::DTYPE_F32;
    case io::ElemType::kF16: return v1::DTYPE_F16;
    case io::ElemType::kBF16: return v1::DTYPE_BF16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

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
  auto info = (*client)->UploadMatrix(
      spec, source, [&](int64_t sent, int64_t total) { progress.Update(sent, total); }, UploadCallOptions(g));
  progress.Done();
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (f.json) {
    PrintJson(MatrixInfoJson(*info));
  } else {
    PrintMatrixInfo(*info);
  }
  return kExitOk;
}

int RunList(const GlobalFlags& g, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto list = (*client)->ListMatrices();
  if (!list.ok()) return RpcFail(g, **client, list.status());
  if (json) {
    Json j = {{"matrices", Json::array()}};
    for (const auto& m : *list) j["matrices"].push_back(MatrixInfoJson(m));
    PrintJson(j);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"NAME", "ROWS", "COLS", "FORMAT", "SCALE", "RESIDENT_BYTES"}};
  for (const auto& m : *list) {
    rows.push_back({m.name(), absl::StrCat(m.rows()), absl::StrCat(m.cols()), DTypeShortName(m.format()),
                    ScaleModeShortName(m.scale_mode()), absl::StrCat(m.resident_bytes())});
  }
  PrintTable(rows, {1, 2, 5});
  return kExitOk;
}

int RunInfo(const GlobalFlags& g, const std::string& name, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->GetMatrix(name);
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (json) {
    PrintJson(MatrixInfoJson(*info));
  } else {
    PrintMatrixInfo(*info);
  }
  return kExitOk;
}

int RunDelete(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  if (auto s = (*client)->DeleteMatrix(name); !s.ok()) return RpcFail(g, **client, s);
  absl::PrintF("deleted %s\n", name);
  return kExitOk;
}

int RunGemv(const GlobalFlags& g, const GemvFlags& f) {
  auto out_dtype = ParseFloatDType(f.output_dtype);
  if (!out_dtype.ok()) return Fail(out_dtype.status(), kExitUsage);
  std::string file_dtype;
  auto input = ReadFloatNpy(f.input, &file_dtype);
  if (!input.ok()) return Fail(input.status(), kExitUsage);
  if (input->shape.size() != 1 && input->shape.size() != 2) {
    return UsageError(absl::StrCat(f.input, ": the input must be 1-D [cols] or 2-D [batch, cols], got ",
                                   input->shape.size(), " dimensions"));
  }
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  const auto t0 = std::chrono::steady_clock::now();
  auto y = (*client)->Gemv(f.name, TensorRef{ToWireDType(input->dtype), input->shape, input->data}, *out_dtype);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!y.ok()) return RpcFail(g, **client, y.status());
  if (!f.json) return EmitResult(*y, f.output, nullptr);
  Json summary = {{"matrix", f.name}, {"input", ArrayJson(f.input, file_dtype, *input)}, {"seconds", seconds}};
  return EmitResult(*y, f.output, &summary);
}

// ---------------------------------------------------------------- K/V caches

namespace {

// Reads a 3-D [kv_heads, tokens, head_dim] K or V .npy file.
absl::StatusOr<io::Array> LoadKv(const std::string& path) {
  auto a = ReadFloatNpy(path);
  if (!a.ok()) return a.status();
  if (a->shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": K/V must be 3-D [kv_heads, tokens, head_dim], got ",
                                                   a->shape.size(), " dimensions"));
  }
  return a;
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
                                  [&](int64_t sent, int64_t total) { progress.Update(sent, total); },
                                  UploadCallOptions(g));
  progress.Done();
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (f.json) {
    PrintJson(KvInfoJson(*info));
  } else {
    PrintKvInfo(*info);
  }
  return kExitOk;
}

int RunKvAppend(const GlobalFlags& g, const std::string& name, const std::string& k_file,
                const std::string& v_file, bool json) {
  auto k = LoadKv(k_file);
  if (!k.ok()) return Fail(k.status(), kExitUsage);
  auto v = LoadKv(v_file);
  if (!v.ok()) return Fail(v.status(), kExitUsage);
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->AppendKV(name, TensorRef{ToWireDType(k->dtype), k->shape, k->data},
                                  TensorRef{ToWireDType(v->dtype), v->shape, v->data});
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (json) {
    PrintJson(KvInfoJson(*info));
  } else {
    PrintKvInfo(*info);
  }
  return kExitOk;
}

int RunKvList(const GlobalFlags& g, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto list = (*client)->ListKV();
  if (!list.ok()) return RpcFail(g, **client, list.status());
  if (json) {
    Json j = {{"caches", Json::array()}};
    for (const auto& c : *list) j["caches"].push_back(KvInfoJson(c));
    PrintJson(j);
    return kExitOk;
  }
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

int RunKvInfo(const GlobalFlags& g, const std::string& name, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto info = (*client)->GetKV(name);
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (json) {
    PrintJson(KvInfoJson(*info));
  } else {
    PrintKvInfo(*info);
  }
  return kExitOk;
}

int RunKvDelete(const GlobalFlags& g, const std::string& name) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  if (auto s = (*client)->DeleteKV(name); !s.ok()) return RpcFail(g, **client, s);
  absl::PrintF("deleted %s\n", name);
  return kExitOk;
}

int RunAttend(const GlobalFlags& g, const AttendFlags& f) {
  auto out_dtype = ParseFloatDType(f.output_dtype);
  if (!out_dtype.ok()) return Fail(out_dtype.status(), kExitUsage);
  if (!std::isfinite(f.scale)) return UsageError("--scale must be a finite number");
  std::string file_dtype;
  auto q = ReadFloatNpy(f.input, &file_dtype);
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
  const auto t0 = std::chrono::steady_clock::now();
  auto out = (*client)->Attention(f.name, TensorRef{ToWireDType(q->dtype), q->shape, q->data}, opts);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!out.ok()) return RpcFail(g, **client, out.status());
  if (!f.json) return EmitResult(*out, f.output, nullptr);
  Json summary = {{"cache", f.name},
                  {"query", ArrayJson(f.input, file_dtype, *q)},
                  {"causal", f.causal},
                  {"softmax_scale", f.scale > 0 ? Json(f.scale) : Json(nullptr)},
                  {"seconds", seconds}};
  return EmitResult(*out, f.output, &summary);
}

int RunHealth(const GlobalFlags& g, const std::string& service, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto h = (*client)->CheckHealth(service);
  if (!h.ok()) return RpcFail(g, **client, h.status());
  if (json) {
    PrintJson({{"server", g.server},
               {"service", service},
               {"status", HealthStatusName(*h)},
               {"serving", *h == HealthStatus::kServing}});
  } else {
    absl::PrintF("%s\n", HealthStatusName(*h));
  }
  return *h == HealthStatus::kServing ? kExitOk : kExitRpc;
}

}  // namespace plume::cli
