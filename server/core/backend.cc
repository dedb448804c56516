#include "server/core/backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"

namespace plume::core {
namespace {

// Heap memory aligned for vector loads, freed with the buffer.
class HeapHostBuffer final : public HostBuffer {
 public:
  HeapHostBuffer(void* data, size_t size) : HostBuffer(data, size) {}
  ~HeapHostBuffer() override { std::free(data()); }
};

}  // namespace

const char* PlacementName(Placement p) {
  switch (p) {
    case Placement::kAuto: return "auto";
    case Placement::kSingle: return "single";
    case Placement::kSharded: return "sharded";
    case Placement::kReplicated: return "replicated";
  }
  return "unknown";
}

absl::Status RowQuantizer::AddRows(const void* src, int64_t rows) {
  if (rows < 0 || next_row_ + rows > rows_) {
    return absl::InvalidArgumentError(absl::StrCat("rows ", next_row_, "..", next_row_ + rows,
                                                   " of a ", rows_, "-row matrix"));
  }
  if (rows == 0) return absl::OkStatus();
  if (absl::Status s = Quantize(src, next_row_, rows); !s.ok()) return s;
  next_row_ += rows;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> RowQuantizer::Finish() {
  if (next_row_ != rows_) {
    return absl::FailedPreconditionError(
        absl::StrCat("quantized ", next_row_, " of ", rows_, " rows"));
  }
  return Take();
}

absl::Status PackedWriter::Append(std::string_view bytes) {
  const PackedLayout layout = shape_.layout();
  const int64_t n = static_cast<int64_t>(bytes.size());
  if (n > layout.code_bytes() - appended_) {
    return absl::InvalidArgumentError(absl::StrCat("packed bytes ", appended_, "..", appended_ + n,
                                                   " of ", layout.code_bytes()));
  }
  const int64_t row_bytes = layout.padded_cols();
  if (row_bytes == layout.cols) {  // no padding: the bytes as they are
    if (n > 0) {
      if (absl::Status s = Write(appended_, bytes.data(), n); !s.ok()) return s;
    }
    appended_ += n;
    return absl::OkStatus();
  }
  // Row by row: the codes as sent, the padding as zeros (at most 15 bytes).
  static constexpr char kZeros[kRowAlignCodes] = {};
  while (!bytes.empty()) {
    const int64_t in_row = appended_ % row_bytes;
    const int64_t codes_left = std::max<int64_t>(layout.cols - in_row, 0);
    const int64_t take = std::min<int64_t>(static_cast<int64_t>(bytes.size()),
                                           codes_left > 0 ? codes_left : row_bytes - in_row);
    if (absl::Status s = Write(appended_, codes_left > 0 ? bytes.data() : kZeros, take); !s.ok()) {
      return s;
    }
    appended_ += take;
    bytes.remove_prefix(static_cast<size_t>(take));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> PackedWriter::Finish(const float* scales, ScaleMode mode) {
  const int64_t bytes = shape_.layout().code_bytes();
  if (appended_ != bytes) {
    return absl::FailedPreconditionError(absl::StrCat("packed ", appended_, " of ", bytes, " bytes"));
  }
  const bool expand = mode == ScaleMode::kBlock128x128 && shape_.scale_mode == ScaleMode::kBlock128;
  if (!expand && mode != shape_.scale_mode) {
    return absl::InternalError("pre-packed scales in a mode the matrix is not held in");
  }
  const int64_t n = shape_.num_scales();
  if (float* dst = host_scales(); dst != nullptr) {
    if (expand) {
      ExpandBlockScales(shape_.rows, shape_.cols, scales, dst);
    } else if (n > 0) {
      std::memcpy(dst, scales, static_cast<size_t>(n) * sizeof(float));
    }
    return Take(nullptr);
  }
  if (!expand) return Take(scales);
  std::vector<float> rows;
  try {
    rows.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cannot allocate host memory for the row block scales");
  }
  ExpandBlockScales(shape_.rows, shape_.cols, scales, rows.data());
  return Take(rows.data());
}

void Backend::GemvAsync(const BackendMatrix& w, const GemvArgs& args, GemvDoneFn done) {
  double device = -1;
  GemvArgs timed = args;
  timed.device_seconds = &device;
  const absl::Status s = Gemv(w, timed);
  done(s, device);
}

absl::StatusOr<std::unique_ptr<HostBuffer>> Backend::AllocateHostBuffer(size_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a host buffer of ", bytes, " bytes"));
  }
  return std::unique_ptr<HostBuffer>(new HeapHostBuffer(p, bytes));
}

}  // namespace plume::core
