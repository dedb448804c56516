// plume's gRPC server: an options struct and a Start factory that registers
// the handlers over a core::Engine and returns the running server with its
// real bound port (tests bind port 0). The admission gate (bearer token,
// drain) lives here; everything computed lives in the Engine.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/core/engine.h"

namespace plume::server {

struct ServerOptions {
  std::string grpc_address = "0.0.0.0:50051";
  // Responses are checked against core::Limits::max_response_bytes before
  // any work; give it the same value (plume-server does).
  int max_message_bytes = 64 << 20;
  int max_stream_in_flight = 64;   // per GemvStream

  // Security and limits.
  // TLS when tls_cert_pem is set (PEM contents, not paths); tls_client_ca_pem
  // also requires and verifies a client certificate (mutual TLS).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_client_ca_pem;
  // When not empty, MatrixService and AttentionService calls need
  // `authorization: Bearer <token>`, and server reflection is not offered.
  std::string auth_token;
  // HTTP/2 streams (calls) one connection may have open at once; 0: gRPC's default.
  int max_concurrent_streams = 256;

  // DiagnosticsService: largest Echo payload in bytes.
  int64_t max_echo_bytes = 4 << 20;
};

class Server {
 public:
  // Builds and starts the server: MatrixService, AttentionService and
  // DiagnosticsService over `engine`, which must outlive it.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       core::Engine& engine);
  // Shuts down with no grace period if Shutdown was not called, and drains
  // the engine's batches and tasks before the handlers go.
  ~Server();

  int port() const;

  // Health goes NOT_SERVING and new calls get UNAVAILABLE; in-flight calls
  // get up to `grace` to finish, and those still open then end with
  // UNAVAILABLE; clients get up to a second more to close their
  // connections. Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace plume::server
