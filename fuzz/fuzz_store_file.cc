// libFuzzer target: the durable store's file codec (store_codec.h), matrix
// (.pmx) and K/V cache (.pkv) files. Any bytes: no crash, no unbounded
// allocation; a matrix file that loads re-encodes to the same bytes (one of
// an older version: to the same matrix in the current version), and a
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
    uint32_t version = 0;
    std::memcpy(&version, data + 8, 4);
    if (version == plume::core::kMatrixFileVersion) {
      if (again != bytes) __builtin_trap();
    } else {
      // An older version re-encodes as the current one, to the same matrix.
      auto back = plume::core::DecodeMatrixFile(again);
      if (!back.ok() || back->meta.name != m->meta.name ||
          back->meta.content_hash != m->meta.content_hash ||
          back->meta.created_unix_ms != m->meta.created_unix_ms ||
          back->meta.shape.rows != m->meta.shape.rows || back->meta.shape.cols != m->meta.shape.cols ||
          back->meta.shape.scale_mode != m->meta.shape.scale_mode ||
          back->meta.shape.format != m->meta.shape.format ||
          back->meta.shape.placement != m->meta.shape.placement ||
          back->meta.source_dtype != m->meta.source_dtype || back->scales != m->scales ||
          back->words != m->words) {
        __builtin_trap();
      }
    }
  }
  return 0;
}
