// Loading the durable store into the registries at start: each good file
// of the directory (DirectoryStore::LoadAll, LoadAllKv) becomes a resident
// matrix or K/V cache through the backend, charged to the budget.
#pragma once

#include "server/core/backend.h"
#include "server/core/durable_store.h"

namespace plume::core {

class KvStore;
class MatrixStore;

// LoadAll into a backend and a store: each good file becomes a resident
// matrix (FromPacked) under its name, charged to the store's budget.
DirectoryStore::LoadReport LoadStoredMatrices(DirectoryStore* disk, Backend* backend,
                                              MatrixStore* store);

// LoadAllKv into a backend (KvFromPacked) and a KvStore, charged to its budget.
DirectoryStore::LoadReport LoadStoredKvCaches(DirectoryStore* disk, Backend* backend,
                                              KvStore* store);

}  // namespace plume::core
