#include "server/core/packed_matrix.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"

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

int64_t BackendSliceSource::RowsPerSlice(const MatrixShape& shape, int64_t max_bytes) {
  // A row's words and the scales it brings; TENSOR's one scale comes with
  // every slice.
  const ScaleMode resident = ResidentScaleMode(shape.scale_mode);
  const bool tensor = resident == ScaleMode::kTensor;
  const int64_t row_scales = tensor ? 0 : ScalesOfRowsCount(resident, shape.cols, 1);
  const int64_t row_bytes = (shape.layout().words_per_row() + row_scales) * 4;
  return std::clamp<int64_t>((max_bytes - (tensor ? 4 : 0)) / std::max<int64_t>(row_bytes, 1), 1,
                             std::max<int64_t>(shape.rows, 1));
}

int64_t BackendSliceSource::BufferBytes(const MatrixShape& shape, int64_t max_bytes) {
  const int64_t rows = RowsPerSlice(shape, max_bytes);
  return (rows * shape.layout().words_per_row() +
          ScalesOfRowsCount(ResidentScaleMode(shape.scale_mode), shape.cols, rows)) *
         4;
}

absl::StatusOr<std::unique_ptr<BackendSliceSource>> BackendSliceSource::Create(
    Backend* backend, const BackendMatrix& m, const MatrixShape& shape, int64_t max_bytes) {
  auto buffer = backend->AllocateHostBuffer(static_cast<size_t>(BufferBytes(shape, max_bytes)));
  if (!buffer.ok()) return buffer.status();
  return std::unique_ptr<BackendSliceSource>(new BackendSliceSource(
      backend, m, shape, RowsPerSlice(shape, max_bytes), std::move(*buffer)));
}

BackendSliceSource::BackendSliceSource(Backend* backend, const BackendMatrix& m,
                                       const MatrixShape& shape, int64_t rows_per_slice,
                                       std::unique_ptr<HostBuffer> buffer)
    : backend_(backend),
      m_(m),
      shape_(shape),
      rows_per_slice_(rows_per_slice),
      buffer_(std::move(buffer)) {
  words_ = static_cast<uint32_t*>(buffer_->data());
  scales_ = reinterpret_cast<float*>(words_ + rows_per_slice_ * shape_.layout().words_per_row());
}

absl::Status BackendSliceSource::Read(int64_t row0, MatrixSlice* out) {
  if (absl::Status s = CheckRowRange(shape_.rows, row0, 1); !s.ok()) return s;
  const int64_t rows = std::min(rows_per_slice_, shape_.rows - row0);
  if (absl::Status s = backend_->ReadPackedRows(m_, row0, rows, words_, scales_); !s.ok()) return s;
  out->row0 = row0;
  out->rows = rows;
  out->words = words_;
  out->scales = scales_;
  const int64_t nb = shape_.layout().blocks_per_row();
  switch (shape_.scale_mode) {
    case ScaleMode::kNone:
      out->first_scale = 0;
      out->num_scales = 0;
      break;
    case ScaleMode::kTensor:  // the one scale, with the first slice
      out->first_scale = row0 == 0 ? 0 : 1;
      out->num_scales = row0 == 0 ? 1 : 0;
      break;
    case ScaleMode::kRow:
    case ScaleMode::kBlock128:
      out->first_scale = ScalesOfRowsStart(shape_.scale_mode, shape_.cols, row0);
      out->num_scales = ScalesOfRowsCount(shape_.scale_mode, shape_.cols, rows);
      break;
    case ScaleMode::kBlock128x128: {
      // The bands that start in these rows, each from its first row's
      // BLOCK128 scales (every row of a band holds the same), moved to the
      // front of the buffer in order; a band's scales never move past the
      // rows of a later one.
      const int64_t b0 = (row0 + kBlockRows - 1) / kBlockRows;
      const int64_t b1 = (row0 + rows + kBlockRows - 1) / kBlockRows;
      for (int64_t b = b0; b < b1; ++b) {
        std::memmove(scales_ + (b - b0) * nb, scales_ + (b * kBlockRows - row0) * nb,
                     static_cast<size_t>(nb) * sizeof(float));
      }
      out->first_scale = b0 * nb;
      out->num_scales = (b1 - b0) * nb;
      break;
    }
    default:
      return absl::InternalError(absl::StrCat("matrix slices: unknown scale mode ",
                                              static_cast<int>(shape_.scale_mode)));
  }
  return absl::OkStatus();
}

}  // namespace plume::core
