// FP8 checkpoints through the SDK: upload an F8_E4M3 / F8_E5M2 tensor and
// its scale tensor pre-packed (the codes as they are, never re-quantized).
//
//   auto ckpt = plume::io::Checkpoint::Open("model.safetensors.index.json");
//   auto m = plume::io::LoadFp8Matrix(*ckpt, "model.layers.0.mlp.down_proj.weight");
//   plume::UploadSpec spec;
//   spec.name = "down0";
//   auto info = plume::UploadFp8Matrix(*client, spec, *m);
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "plume/client/client.h"
#include "plume/io/checkpoint.h"

namespace plume {

// The wire scale mode of a layout (same numbering).
v1::ScaleMode ToWireScaleMode(io::Fp8ScaleLayout l);
v1::DType ToWireFormat(Fp8Format f);

// Uploads `m` pre-packed: format and scale mode come from `m` (spec's are
// overwritten), the codes are packed into plume's layout on the way, a
// message at a time (Client::UploadPackedCodes). An empty spec.content_hash
// is filled with io::Fp8ContentHash(m, ...).
absl::StatusOr<v1::MatrixInfo> UploadFp8Matrix(Client& client, UploadSpec spec, const io::Fp8Matrix& m,
                                               const UploadProgressFn& progress = nullptr,
                                               const CallOptions& call = {});

// LoadFp8Matrix(ckpt, key, lookup) then UploadFp8Matrix.
absl::StatusOr<v1::MatrixInfo> UploadFp8Tensor(Client& client, UploadSpec spec, const io::Checkpoint& ckpt,
                                               const std::string& key, const io::ScaleLookup& lookup = {},
                                               const UploadProgressFn& progress = nullptr,
                                               const CallOptions& call = {});

// Reads back what the server keeps for `name` (GetMatrix include_packed) and
// compares it with `m` code for code and scale for scale; OK when equal,
// DATA_LOSS naming the first difference otherwise.
absl::Status VerifyResident(Client& client, const std::string& name, const io::Fp8Matrix& m,
                            const CallOptions& call = {});

}  // namespace plume
