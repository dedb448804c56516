// Packed matrices between the shape the core keeps (as uploaded) and the one
// a backend holds (ResidentShape in backend.h): BLOCK128X128 scales are
// expanded to BLOCK128 on the way in and folded back on the way out, so the
// store file, GetMatrix and a pre-packed upload all carry the 128x128 form
// while every backend and kernel serves BLOCK128.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "server/core/backend.h"

namespace plume::core {

// backend->FromPacked of a matrix of `shape`, its `scales` in shape's mode.
absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPackedAsUploaded(Backend* backend,
                                                                    const MatrixShape& shape,
                                                                    const uint32_t* words,
                                                                    const float* scales);

// backend->ReadPacked of `m`, held for a matrix of `shape`: words
// (shape.layout().total_words()) and scales in shape's mode
// (shape.num_scales()).
absl::Status ReadPackedAsUploaded(Backend* backend, const BackendMatrix& m,
                                  const MatrixShape& shape, uint32_t* words, float* scales);

}  // namespace plume::core
