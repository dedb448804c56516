// libFuzzer target: the durable store's file loader. Any bytes: no crash, no
// unbounded allocation; a file that loads re-encodes to the same bytes.
#include <cstdint>
#include <string_view>

#include "server/core/durable_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto m = plume::core::DecodeMatrixFile(bytes);
  if (m.ok()) {
    const std::string again = plume::core::EncodeMatrixFile(m->meta, m->scales.data(), m->words.data());
    if (again != bytes) __builtin_trap();
  }
  return 0;
}
