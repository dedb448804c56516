// The one way tests build a server: an Engine over a backend (a 2-thread
// CPU backend unless one is given), memory only, with a 1 GiB budget unless
// the options say otherwise, and a Server over it on 127.0.0.1:0 — the same
// path as plume-server's main (flags -> options -> Engine -> Server).
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/engine.h"
#include "server/grpc/server.h"

namespace plume::testing {

// Engine options for tests: 1 GiB budget, memory only, defaults otherwise.
inline core::EngineOptions TestEngineOptions() {
  core::EngineOptions o;
  o.store.budget_bytes = int64_t{1} << 30;
  return o;
}

struct TestServer {
  std::unique_ptr<core::Engine> engine;
  std::unique_ptr<server::Server> server;  // declared last: goes first

  int port() const { return server->port(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }
  core::Metrics* metrics() const { return engine->metrics(); }
};

// Builds the engine and starts the server. `backend` null: CpuBackend(2).
inline absl::StatusOr<TestServer> StartTestServer(
    core::EngineOptions engine_options = TestEngineOptions(),
    server::ServerOptions server_options = {},
    std::unique_ptr<core::Backend> backend = nullptr) {
  if (backend == nullptr) backend = std::make_unique<core::CpuBackend>(2);
  TestServer t;
  auto engine = core::Engine::Create(std::move(engine_options), std::move(backend));
  if (!engine.ok()) return engine.status();
  t.engine = std::move(*engine);
  if (server_options.grpc_address == server::ServerOptions{}.grpc_address) {
    server_options.grpc_address = "127.0.0.1:0";
  }
  auto server = server::Server::Start(server_options, *t.engine);
  if (!server.ok()) return server.status();
  t.server = std::move(*server);
  return t;
}

}  // namespace plume::testing
