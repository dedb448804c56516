// libFuzzer target: the durable store's file codec (store_codec.h), matrix
// (.pmx) and K/V cache (.pkv) files. Any bytes: no crash, no unbounded
// allocation; a matrix file that loads re-encodes to the same bytes, and a
// K/V file that loads re-encodes (compacted: header and one record) to the same cache.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "server/core/store_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (size >= 8 && std::memcmp(data, plume::core::kKvStoreMagic, 8) == 0) {
    auto kv = plume::core::DecodeKvFile(bytes);
    if (!kv.ok()) return 0;
    if (kv->valid_bytes > static_cast<int64_t>(size) || kv->torn_tail.empty() != (kv->valid_bytes == static_cast<int64_t>(size))) {
      __builtin_trap();
    }
    const int64_t pages = plume::KvLayout::pages_for(kv->seq);
    std::string again = plume::core::EncodeKvHeader(kv->meta, kv->k_scales.data(), kv->v_scales.data());
    again += plume::core::EncodeKvRecordHeader(kv->meta.shape, kv->seq, 0, pages, kv->pages.data());
    again.append(reinterpret_cast<const char*>(kv->pages.data()), kv->pages.size());
    auto back = plume::core::DecodeKvFile(again);
    if (!back.ok() || back->seq != kv->seq || back->pages != kv->pages ||
        back->k_scales != kv->k_scales || back->v_scales != kv->v_scales || !back->torn_tail.empty()) {
      __builtin_trap();
    }
    return 0;
  }
  auto m = plume::core::DecodeMatrixFile(bytes);
  if (m.ok()) {
    const std::string again = plume::core::EncodeMatrixFile(m->meta, m->scales.data(), m->words.data());
    if (again != bytes) __builtin_trap();
  }
  return 0;
}
