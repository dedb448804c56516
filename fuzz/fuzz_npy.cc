// libFuzzer target: the .npy reader. A parsed array re-encodes and parses
// back to the same shape and bytes.
#include <cstdint>
#include <string_view>

#include "plume/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto a = plume::io::ParseNpy(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!a.ok()) return 0;
  auto enc = plume::io::EncodeNpy(*a);
  if (!enc.ok()) return 0;
  auto b = plume::io::ParseNpy(*enc);
  if (!b.ok() || b->shape != a->shape || b->data != a->data) __builtin_trap();
  return 0;
}
