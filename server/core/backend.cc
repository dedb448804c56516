#include "server/core/backend.h"

#include <cstdlib>
#include <new>

namespace plume::core {
namespace {

// Heap memory aligned for vector loads, freed with the buffer.
class HeapHostBuffer final : public HostBuffer {
 public:
  HeapHostBuffer(void* data, size_t size) : HostBuffer(data, size) {}
  ~HeapHostBuffer() override { std::free(data()); }
};

}  // namespace

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
