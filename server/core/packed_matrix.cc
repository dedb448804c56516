#include "server/core/packed_matrix.h"

#include <new>
#include <vector>

#include "plume/kernels/layout.h"

namespace plume::core {
namespace {

absl::StatusOr<std::vector<float>> RowScales(const MatrixShape& shape) {
  try {
    return std::vector<float>(
        static_cast<size_t>(NumScales(ScaleMode::kBlock128, shape.rows, shape.cols)));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cannot allocate host memory for the row block scales");
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPackedAsUploaded(Backend* backend,
                                                                    const MatrixShape& shape,
                                                                    const uint32_t* words,
                                                                    const float* scales) {
  if (shape.scale_mode != ScaleMode::kBlock128x128) {
    return backend->FromPacked(shape, words, scales);
  }
  auto rows = RowScales(shape);
  if (!rows.ok()) return rows.status();
  ExpandBlockScales(shape.rows, shape.cols, scales, rows->data());
  return backend->FromPacked(ResidentShape(shape), words, rows->data());
}

absl::Status ReadPackedAsUploaded(Backend* backend, const BackendMatrix& m,
                                  const MatrixShape& shape, uint32_t* words, float* scales) {
  if (shape.scale_mode != ScaleMode::kBlock128x128) return backend->ReadPacked(m, words, scales);
  auto rows = RowScales(shape);
  if (!rows.ok()) return rows.status();
  if (absl::Status s = backend->ReadPacked(m, words, rows->data()); !s.ok()) return s;
  CompressBlockScales(shape.rows, shape.cols, rows->data(), scales);
  return absl::OkStatus();
}

}  // namespace plume::core
