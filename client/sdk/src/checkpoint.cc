#include "plume/client/checkpoint.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace plume {

v1::ScaleMode ToWireScaleMode(io::Fp8ScaleLayout l) { return static_cast<v1::ScaleMode>(static_cast<int>(l)); }

v1::DType ToWireFormat(Fp8Format f) { return f == Fp8Format::kE5M2 ? v1::DTYPE_E5M2 : v1::DTYPE_E4M3; }

absl::StatusOr<v1::MatrixInfo> UploadFp8Matrix(Client& client, UploadSpec spec, const io::Fp8Matrix& m,
                                               const UploadProgressFn& progress, const CallOptions& call) {
  if (m.rows < 0 || m.cols < 0 || m.codes.size() != static_cast<uint64_t>(m.rows * m.cols)) {
    return absl::InvalidArgumentError("the FP8 codes do not fill [rows, cols]");
  }
  if (static_cast<int64_t>(m.scales.size()) != io::NumScalesFor(m.scale_layout, m.rows, m.cols)) {
    return absl::InvalidArgumentError(absl::StrCat("scale mode ", io::Fp8ScaleLayoutName(m.scale_layout), " needs ",
                                                   io::NumScalesFor(m.scale_layout, m.rows, m.cols),
                                                   " scales, got ", m.scales.size()));
  }
  spec.format = ToWireFormat(m.format);
  spec.scale_mode = ToWireScaleMode(m.scale_layout);
  if (spec.content_hash.empty()) {
    auto hash = io::Fp8ContentHash(m, spec.non_saturating);
    if (!hash.ok()) return hash.status();
    spec.content_hash = *std::move(hash);
  }
  return client.UploadPackedCodes(spec, m.rows, m.cols, m.codes, m.scales.data(),
                                  static_cast<int64_t>(m.scales.size()), progress, call);
}

absl::StatusOr<v1::MatrixInfo> UploadFp8Tensor(Client& client, UploadSpec spec, const io::Checkpoint& ckpt,
                                               const std::string& key, const io::ScaleLookup& lookup,
                                               const UploadProgressFn& progress, const CallOptions& call) {
  auto m = io::LoadFp8Matrix(ckpt, key, lookup);
  if (!m.ok()) return m.status();
  return UploadFp8Matrix(client, std::move(spec), *m, progress, call);
}

absl::Status VerifyResident(Client& client, const std::string& name, const io::Fp8Matrix& m,
                            const CallOptions& call) {
  auto p = client.GetMatrixPacked(name, call);
  if (!p.ok()) return p.status();
  if (p->info.rows() != m.rows || p->info.cols() != m.cols) {
    return absl::DataLossError(absl::StrCat("'", name, "' is [", p->info.rows(), ", ", p->info.cols(),
                                            "] on the server, [", m.rows, ", ", m.cols, "] here"));
  }
  if (p->info.format() != ToWireFormat(m.format) || p->info.scale_mode() != ToWireScaleMode(m.scale_layout)) {
    return absl::DataLossError(absl::StrCat("'", name, "' has another format or scale mode on the server"));
  }
  const std::string codes = io::UnpackFp8Codes(p->words.data(), m.rows, m.cols);
  auto mine = m.codes.ReadAll();
  if (!mine.ok()) return mine.status();
  for (size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] != (*mine)[i]) {
      return absl::DataLossError(absl::StrCat("'", name, "' differs at code ", i, " (row ", i / m.cols, ", col ",
                                              i % m.cols, ")"));
    }
  }
  if (p->scales.size() != m.scales.size() ||
      (!m.scales.empty() && std::memcmp(p->scales.data(), m.scales.data(), m.scales.size() * 4) != 0)) {
    return absl::DataLossError(absl::StrCat("'", name, "' has other scales on the server"));
  }
  return absl::OkStatus();
}

}  // namespace plume
