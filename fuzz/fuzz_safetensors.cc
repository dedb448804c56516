// libFuzzer target: the .safetensors reader: open from bytes, read every tensor.
#include <cstdint>
#include <string>

#include "plume/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = plume::io::SafetensorsFile::FromBytes(std::string(reinterpret_cast<const char*>(data), size));
  if (!f.ok()) return 0;
  for (const auto& e : f->tensors()) (void)f->Read(e.name);
  return 0;
}
