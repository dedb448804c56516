#include "server/core/store_loader.h"

#include "server/core/kv_store.h"
#include "server/core/matrix_store.h"
#include "server/core/packed_matrix.h"

namespace plume::core {

DirectoryStore::LoadReport LoadStoredMatrices(DirectoryStore* disk, Backend* backend,
                                              MatrixStore* store) {
  return disk->LoadAll([&](StoredMatrix m) -> absl::Status {
    auto pending =
        store->BeginUpload(m.meta.name, backend->ReservedBytes(ResidentShape(m.meta.shape)));
    if (!pending.ok()) return pending.status();
    auto data = FromPackedAsUploaded(backend, m.meta.shape, m.words.data(), m.scales.data());
    if (!data.ok()) return data.status();
    store->Commit(std::move(*pending), m.meta.shape, m.meta.source_dtype, std::move(*data),
                  m.meta.created_unix_ms, {0, {}, 0}, std::move(m.meta.content_hash));
    return absl::OkStatus();
  });
}

DirectoryStore::LoadReport LoadStoredKvCaches(DirectoryStore* disk, Backend* backend,
                                              KvStore* store) {
  return disk->LoadAllKv([&](StoredKv kv) -> absl::Status {
    const KvShape& shape = kv.meta.shape;
    auto pending = store->BeginUpload(kv.meta.name, shape.resident_bytes(kv.seq));
    if (!pending.ok()) return pending.status();
    auto data = backend->KvFromPacked(shape, kv.seq, kv.pages.data(), kv.k_scales.data(),
                                      kv.v_scales.data());
    if (!data.ok()) return data.status();
    store->Commit(std::move(*pending), shape, kv.meta.source_dtype, std::move(*data),
                  kv.meta.created_unix_ms, kv.valid_bytes);
    return absl::OkStatus();
  });
}

}  // namespace plume::core
