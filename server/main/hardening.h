// plume-server's reliability and security flags, kept apart from
// main.cc: the durable store's directory (--store_dir), TLS and bearer-token auth on the
// gRPC port, basic auth on /metrics, and per-connection stream limits.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include <string>

#include "server/grpc/server.h"

namespace prometheus {
class Exposer;
}

namespace plume::server_main {

// --store_dir (empty: memory only); the Engine opens and loads it.
std::string StoreDirFlag();

// --tls_cert/--tls_key/--tls_client_ca, --auth_token_file and
// --max_concurrent_streams into `options` (files are read here).
absl::Status ApplySecurityFlags(server::ServerOptions* options);

// --metrics_user/--metrics_password_file: basic auth on /metrics. Call before
// RegisterCollectable.
absl::Status ProtectMetrics(prometheus::Exposer* exposer);

}  // namespace plume::server_main
