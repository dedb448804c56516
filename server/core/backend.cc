#include "server/core/backend.h"

#include <cstdlib>
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

namespace {
// A call that ran to completion when it was started.
class DoneGemv final : public PendingGemv {
 public:
  explicit DoneGemv(absl::Status s) : status_(std::move(s)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
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

absl::StatusOr<std::unique_ptr<PendingGemv>> Backend::StartGemv(const BackendMatrix& w,
                                                                const GemvArgs& args) {
  return std::unique_ptr<PendingGemv>(new DoneGemv(Gemv(w, args)));
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
