// FP8 checkpoints in the CLI: `plume upload` of an F8_E4M3 / F8_E5M2
// safetensors tensor or of --codes/--scales .npy files (pre-packed, never
// re-quantized), and `plume upload-model`.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "commands.h"
#include "plume/client/checkpoint.h"
#include "plume/io/checkpoint.h"
#include "plume/io/npy.h"
#include "plume/io/safetensors.h"
#include "plume/kernels/layout.h"
#include "output.h"
#include "progress.h"

namespace plume::cli {
namespace {

const char* FormatName(Fp8Format f) { return f == Fp8Format::kE5M2 ? "e5m2" : "e4m3"; }

// Checks the flags that do not apply to an FP8 source and builds its spec.
absl::StatusOr<UploadSpec> Fp8Spec(const UploadFlags& f) {
  UploadSpec spec;
  spec.name = f.name;
  spec.non_saturating = f.non_saturating;
  auto placement = ParsePlacement(f.placement);
  if (!placement.ok()) return placement.status();
  spec.placement = *placement;
  return spec;
}

int UploadAndPrint(const GlobalFlags& g, UploadSpec spec, const io::Fp8Matrix& m, bool json) {
  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto hash = io::Fp8ContentHash(m, spec.non_saturating);
  if (!hash.ok()) return Fail(hash.status(), kExitUsage);
  spec.content_hash = *std::move(hash);
  absl::FPrintF(stderr, "%s: %s [%d, %d], scales %s (%s)\n", m.key.empty() ? spec.name : m.key,
                FormatName(m.format), m.rows, m.cols, io::Fp8ScaleLayoutName(m.scale_layout),
                m.scale_key.empty() ? (m.scale_shape.empty() && m.scales.empty() ? std::string("none")
                                                                                  : io::ShapeString(m.scale_shape))
                                    : absl::StrCat(m.scale_key, " ", m.scale_dtype, " ", io::ShapeString(m.scale_shape)));
  ProgressDisplay progress(absl::StrCat("upload ", spec.name), stderr);
  auto info = UploadFp8Matrix(**client, spec, m, [&](int64_t sent, int64_t total) { progress.Update(sent, total); },
                              UploadCallOptions(g));
  progress.Done();
  if (!info.ok()) return RpcFail(g, **client, info.status());
  if (json) {
    PrintJson(MatrixInfoJson(*info));
  } else {
    PrintMatrixInfo(*info);
  }
  return kExitOk;
}

}  // namespace

int RunUploadFp8Tensor(const GlobalFlags& g, const UploadFlags& f, const std::string& key) {
  auto ckpt = io::Checkpoint::Open(f.file);
  if (!ckpt.ok()) return Fail(ckpt.status(), kExitUsage);
  const io::SafetensorsEntry* e = ckpt->Find(key);
  Fp8Format format;
  if (!io::Fp8FormatOfDtype(e->dtype, &format)) {
    return UsageError(absl::StrCat("tensor '", key, "' has dtype ", e->dtype, ", not F8_E4M3 or F8_E5M2"));
  }
  if (!f.format.empty() && f.format != FormatName(format)) {
    return UsageError(absl::StrCat("tensor '", key, "' is ", e->dtype, "; --format ", f.format,
                                   " contradicts it (an FP8 tensor's format is its dtype)"));
  }
  if (!f.scale.empty() && f.scale != "none") {
    return UsageError(absl::StrCat("--scale ", f.scale, " applies to F32/F16/BF16 sources; the scale mode of FP8 "
                                   "tensor '", key, "' comes from its scale tensor's shape (or --scale none)"));
  }
  io::ScaleLookup lookup;
  lookup.scale_key = f.scale_tensor;
  lookup.no_scale = f.scale == "none";
  if (lookup.no_scale && !lookup.scale_key.empty()) {
    return UsageError("--scale none and --scale-tensor exclude each other");
  }
  auto spec = Fp8Spec(f);
  if (!spec.ok()) return Fail(spec.status(), kExitUsage);
  auto m = io::LoadFp8Matrix(*ckpt, key, lookup);
  if (!m.ok()) return Fail(absl::Status(m.status().code(), absl::StrCat(f.file, ": ", m.status().message())), kExitUsage);
  return UploadAndPrint(g, *spec, *m, f.json);
}

int RunUploadCodes(const GlobalFlags& g, const UploadFlags& f) {
  if (!f.file.empty()) return UsageError("give either FILE or --codes, not both");
  if (f.codes.empty()) return UsageError("--scales needs --codes CODES.npy");
  if (!f.tensor.empty() || !f.scale_tensor.empty()) {
    return UsageError("--tensor and --scale-tensor apply to .safetensors files, not --codes");
  }
  if (f.format != "e4m3" && f.format != "e5m2") {
    return UsageError("--codes needs --format e4m3 or --format e5m2 (raw codes do not say which)");
  }
  const bool no_scale = f.scale == "none";
  if (!f.scale.empty() && !no_scale) {
    return UsageError(absl::StrCat("--scale ", f.scale, " does not apply to --codes: the shape of --scales picks the "
                                   "scale mode (or --scale none without --scales)"));
  }
  if (no_scale == !f.scales.empty()) {
    return UsageError(no_scale ? "--scale none and --scales exclude each other"
                               : "--codes needs --scales SCALES.npy (or --scale none for unscaled codes)");
  }
  auto codes = io::ReadNpyU8(f.codes);
  if (!codes.ok()) return Fail(codes.status(), kExitUsage);
  std::vector<int64_t> scale_shape;
  std::vector<float> scales;
  if (!no_scale) {
    auto s = ReadFloatNpy(f.scales);
    if (!s.ok()) return Fail(s.status(), kExitUsage);
    scale_shape = s->shape;
    scales = io::ToFloats(*s);
  }
  auto m = io::Fp8MatrixFromCodes(f.format == "e5m2" ? Fp8Format::kE5M2 : Fp8Format::kE4M3, codes->shape,
                                  std::move(codes->data), !no_scale, scale_shape, std::move(scales));
  if (!m.ok()) return Fail(m.status(), kExitUsage);
  auto spec = Fp8Spec(f);
  if (!spec.ok()) return Fail(spec.status(), kExitUsage);
  return UploadAndPrint(g, *spec, *m, f.json);
}

// ---------------------------------------------------------------- upload-model

namespace {

struct Planned {
  std::string key;
  std::string name;  // prefix + key
  const io::SafetensorsEntry* entry = nullptr;
  bool fp8 = false;
  io::ScalePlan scales;  // fp8 only
  int64_t payload_bytes = 0;
};

// What happened to one tensor, for the summary table.
struct Outcome {
  std::string result;
  double seconds = 0;
  std::string mode;
};

std::string LowerDtype(const std::string& d) {
  std::string s = d;
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

int RunUploadModel(const GlobalFlags& g, const UploadModelFlags& f) {
  auto format = ParseFormat(f.format);
  if (!format.ok()) return Fail(format.status(), kExitUsage);
  auto mode = ParseScaleMode(f.scale);
  if (!mode.ok()) return Fail(mode.status(), kExitUsage);
  auto placement = ParsePlacement(f.placement);
  if (!placement.ok()) return Fail(placement.status(), kExitUsage);
  std::optional<std::regex> re;
  if (!f.match.empty()) {
    try {
      re.emplace(f.match, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return UsageError(absl::StrCat("--match '", f.match, "' is not a regular expression: ", e.what()));
    }
  }
  auto ckpt = io::Checkpoint::Open(f.file);
  if (!ckpt.ok()) return Fail(ckpt.status(), kExitUsage);
  const std::vector<std::string> names = ckpt->names();

  // Plan from the headers alone: every problem is reported before anything is sent.
  std::vector<Planned> plan;
  std::vector<std::string> problems;
  int64_t total_bytes = 0;
  for (const io::SafetensorsEntry& e : ckpt->tensors()) {
    if (e.shape.size() != 2) continue;
    if (re ? !std::regex_search(e.name, *re) : !absl::EndsWith(e.name, "weight")) continue;
    if (io::IsScaleTensorName(e.name, names)) continue;
    Planned p;
    p.key = e.name;
    p.name = f.prefix + e.name;
    p.entry = &e;
    Fp8Format fmt;
    if (io::Fp8FormatOfDtype(e.dtype, &fmt)) {
      p.fp8 = true;
      auto sp = io::PlanScales(*ckpt, e.name, {});
      if (!sp.ok()) {
        problems.push_back(std::string(sp.status().message()));
        continue;
      }
      p.scales = *sp;
      p.payload_bytes = PackedLayout{e.shape[0], e.shape[1]}.code_bytes() +
                        4 * io::NumScalesFor(sp->layout, e.shape[0], e.shape[1]);
    } else if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16") {
      p.payload_bytes = static_cast<int64_t>(e.end - e.begin);
    } else {
      problems.push_back(absl::StrCat("tensor '", e.name, "' has dtype ", e.dtype,
                                      "; plume takes F8_E4M3, F8_E5M2, F32, F16 or BF16 (narrow the selection with --match)"));
      continue;
    }
    total_bytes += p.payload_bytes;
    plan.push_back(std::move(p));
  }
  if (!problems.empty()) {
    for (const auto& p : problems) absl::FPrintF(stderr, "error: INVALID_ARGUMENT: %s\n", p);
    absl::FPrintF(stderr, "nothing uploaded\n");
    return kExitUsage;
  }
  if (plan.empty()) {
    return UsageError(absl::StrCat(f.file, ": no 2-D tensor matches ",
                                   f.match.empty() ? std::string("(names ending in \"weight\")") : "--match " + f.match));
  }

  auto client = MakeClient(g);
  if (!client.ok()) return Fail(client.status(), kExitUsage);
  auto listed = (*client)->ListMatrices();
  if (!listed.ok()) return RpcFail(g, **client, listed.status());
  std::map<std::string, v1::MatrixInfo> resident;
  for (auto& m : *listed) resident[m.name()] = std::move(m);

  ProgressDisplay progress(absl::StrCat("upload-model ", plan.size(), " tensors"), stderr);
  int64_t done_bytes = 0;
  int rc = kExitOk;
  int uploaded = 0, skipped = 0, conflicts = 0, failed = 0;
  std::vector<Outcome> outcomes;
  std::vector<std::string> notes;
  progress.Update(0, total_bytes);
  for (const Planned& p : plan) {
    const auto t0 = std::chrono::steady_clock::now();
    Outcome o;
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    // A tensor that cannot be read: noted, counted, and the next one goes on.
    auto read_failed = [&](const absl::Status& s) {
      o.result = "failed (read)";
      notes.push_back(absl::StrCat(p.key, ": ", s.message()));
      rc = std::max(rc, kExitUsage);
      ++failed;
      outcomes.push_back(o);
    };
    // Read and hash.
    std::optional<io::Fp8Matrix> fp8;
    io::Array floats;
    std::string hash;
    UploadSpec spec;
    spec.name = p.name;
    spec.non_saturating = f.non_saturating;
    spec.placement = *placement;
    if (p.fp8) {
      auto m = io::LoadFp8Matrix(*ckpt, p.key, {p.scales.scale_key, p.scales.scale_key.empty()});
      if (!m.ok()) {
        read_failed(m.status());
        continue;
      }
      fp8 = *std::move(m);
      auto h = io::Fp8ContentHash(*fp8, f.non_saturating);
      if (!h.ok()) {
        read_failed(h.status());
        continue;
      }
      hash = *std::move(h);
      o.mode = io::Fp8ScaleLayoutName(fp8->scale_layout);
    } else {
      auto bytes = ckpt->ReadBytes(p.key);
      if (!bytes.ok()) {
        read_failed(bytes.status());
        continue;
      }
      floats.dtype = p.entry->dtype == "F32"   ? io::ElemType::kF32
                     : p.entry->dtype == "F16" ? io::ElemType::kF16
                                               : io::ElemType::kBF16;
      floats.shape = p.entry->shape;
      floats.data = *std::move(bytes);
      spec.format = *format;
      spec.scale_mode = *mode;
      hash = io::FloatContentHash(floats.shape, floats.data,
                                  {ToWireDType(floats.dtype), *format, *mode, f.non_saturating});
      o.mode = ScaleModeShortName(*mode);
    }
    spec.content_hash = hash;

    // Already resident?
    bool replace = false;
    if (auto it = resident.find(p.name); it != resident.end()) {
      if (it->second.content_hash() == hash) {
        o.result = "skipped (resident, same content)";
        ++skipped;
        done_bytes += p.payload_bytes;
        progress.Update(done_bytes, total_bytes);
        o.seconds = seconds();
        outcomes.push_back(o);
        continue;
      }
      if (!f.replace) {
        o.result = "skipped (resident, other content)";
        notes.push_back(absl::StrCat(
            p.name, ": resident with content hash '", it->second.content_hash(), "', this tensor's is '", hash,
            "'; not replaced (use --replace)"));
        ++conflicts;
        rc = std::max(rc, kExitRpc);
        done_bytes += p.payload_bytes;
        progress.Update(done_bytes, total_bytes);
        o.seconds = seconds();
        outcomes.push_back(o);
        continue;
      }
      if (auto s = (*client)->DeleteMatrix(p.name); !s.ok() && s.code() != absl::StatusCode::kNotFound) {
        o.result = "failed (delete)";
        notes.push_back(absl::StrCat(p.name, ": ", FormatStatus(s)));
        ++failed;
        rc = std::max(rc, kExitRpc);
        done_bytes += p.payload_bytes;
        o.seconds = seconds();
        outcomes.push_back(o);
        continue;
      }
      replace = true;
    }

    // Upload.
    const int64_t before = done_bytes;
    auto report = [&](int64_t sent, int64_t) { progress.Update(before + sent, total_bytes); };
    const CallOptions call = UploadCallOptions(g);
    absl::StatusOr<v1::MatrixInfo> info =
        fp8 ? UploadFp8Matrix(**client, spec, *fp8, report, call)
            : (*client)->UploadMatrix(spec, TensorRef{ToWireDType(floats.dtype), floats.shape, floats.data}, report,
                                      call);
    done_bytes = before + p.payload_bytes;
    progress.Update(done_bytes, total_bytes);
    o.seconds = seconds();
    if (!info.ok()) {
      o.result = "failed";
      notes.push_back(absl::StrCat(p.name, ": ", FormatStatus(ExplainRpcError(g, **client, info.status()))));
      ++failed;
      rc = std::max(rc, kExitRpc);
    } else {
      o.result = replace ? "replaced" : "uploaded";
      ++uploaded;
    }
    outcomes.push_back(o);
  }
  progress.Done();

  std::vector<std::vector<std::string>> rows = {{"NAME", "SHAPE", "DTYPE", "MODE", "BYTES", "SECONDS", "RESULT"}};
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    const Outcome& o = outcomes[i];
    rows.push_back({p.name, absl::StrCat(p.entry->shape[0], "x", p.entry->shape[1]), LowerDtype(p.entry->dtype),
                    o.mode.empty() ? "-" : o.mode, absl::StrCat(p.payload_bytes), absl::StrFormat("%.2f", o.seconds),
                    o.result});
  }
  PrintTable(rows, {4, 5});
  absl::PrintF("%d uploaded, %d skipped as already resident, %d resident with other content, %d failed\n", uploaded,
               skipped, conflicts, failed);
  for (const auto& n : notes) absl::FPrintF(stderr, "error: %s\n", n);
  return rc;
}

}  // namespace plume::cli
