// plume-server's reliability and security flags, kept apart from
// main.cc: the durable store (--store_dir), TLS and bearer-token auth on the
// gRPC port, basic auth on /metrics, and per-connection stream limits.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/backend.h"
#include "server/core/durable_store.h"
#include "server/core/kv_store.h"
#include "server/core/matrix_store.h"
#include "server/grpc/server.h"

namespace prometheus {
class Exposer;
}

namespace plume::server_main {

// --store_dir: opens the directory, loads (and verifies) every stored
// matrix and K/V cache into `backend`, `store` and `kv_store`, logs what was
// loaded and quarantined, and makes both stores persist from now on. nullptr
// when --store_dir is empty (memory only).
absl::StatusOr<std::unique_ptr<core::DirectoryStore>> OpenDurableStore(core::Backend* backend,
                                                                       core::MatrixStore* store,
                                                                       core::KvStore* kv_store);

// --tls_cert/--tls_key/--tls_client_ca, --auth_token_file and
// --max_concurrent_streams into `options` (files are read here).
absl::Status ApplySecurityFlags(server::ServerOptions* options);

// --metrics_user/--metrics_password_file: basic auth on /metrics. Call before
// RegisterCollectable.
absl::Status ProtectMetrics(prometheus::Exposer* exposer);

}  // namespace plume::server_main
