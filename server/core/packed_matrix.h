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
#include "server/core/durable_store.h"

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

// Reads a resident matrix back from its backend a band of rows at a time
// (Backend::ReadPackedRows) into one host buffer that every slice reuses
// (Backend::AllocateHostBuffer: pinned on a GPU), in the form the core keeps
// (BLOCK128X128 folded back from the rows' BLOCK128): what the durable store
// writes a matrix's file from (Persistence::SaveMatrixFrom), so that the
// whole packed matrix is never on the host at once.
class BackendSliceSource final : public MatrixSliceSource {
 public:
  // Default bytes of words and scales per slice.
  static constexpr int64_t kDefaultSliceBytes = int64_t{8} << 20;

  // `m` holds a matrix of `shape` (as uploaded); both must outlive the
  // source. Slices hold at most `max_bytes` of words and scales, but at
  // least one row.
  static absl::StatusOr<std::unique_ptr<BackendSliceSource>> Create(Backend* backend,
                                                                    const BackendMatrix& m,
                                                                    const MatrixShape& shape,
                                                                    int64_t max_bytes);
  // The host buffer's bytes for a matrix of `shape` (what an upload
  // reserves against the memory budget for it).
  static int64_t BufferBytes(const MatrixShape& shape, int64_t max_bytes);

  int64_t rows_per_slice() const override { return rows_per_slice_; }
  absl::Status Read(int64_t row0, MatrixSlice* out) override;

 private:
  BackendSliceSource(Backend* backend, const BackendMatrix& m, const MatrixShape& shape,
                     int64_t rows_per_slice, std::unique_ptr<HostBuffer> buffer);
  static int64_t RowsPerSlice(const MatrixShape& shape, int64_t max_bytes);

  Backend* const backend_;
  const BackendMatrix& m_;
  const MatrixShape shape_;  // as uploaded
  const int64_t rows_per_slice_;
  std::unique_ptr<HostBuffer> buffer_;  // the words of a slice, then its rows' scales
  uint32_t* words_ = nullptr;
  float* scales_ = nullptr;
};

}  // namespace plume::core
