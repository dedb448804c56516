#include "server/grpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/grpc/auth.h"
#include "server/grpc/attention_service_impl.h"
#include "server/grpc/diagnostics_service_impl.h"
#include "server/grpc/matrix_service_impl.h"

namespace plume::server {

struct Server::Impl {
  core::Engine* engine = nullptr;
  std::unique_ptr<TokenAuth> auth;
  std::unique_ptr<CallGate> gate;  // admits the calls of every service
  std::unique_ptr<MatrixServiceImpl> service;
  std::unique_ptr<AttentionServiceImpl> attention;
  std::unique_ptr<DiagnosticsServiceImpl> diagnostics;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

namespace {

// After the drain timeout: how long the calls ended with UNAVAILABLE get to
// send that status and finish, then how long clients get to close their
// connections once told to go away.
constexpr std::chrono::milliseconds kAbortGrace{500};
constexpr std::chrono::milliseconds kCloseGrace{1000};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerOptions& o) {
  if (o.tls_cert_pem.empty()) {
    if (!o.tls_key_pem.empty() || !o.tls_client_ca_pem.empty()) {
      return absl::InvalidArgumentError("a TLS key or client CA needs a TLS certificate");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_key_pem.empty()) return absl::InvalidArgumentError("a TLS certificate needs its key");
  grpc::SslServerCredentialsOptions ssl(
      o.tls_client_ca_pem.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                  : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = o.tls_client_ca_pem;
  ssl.pem_key_cert_pairs.push_back({o.tls_key_pem, o.tls_cert_pem});
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  Shutdown(std::chrono::milliseconds(0));
  // Batches and tasks still running call back into the handlers: they
  // finish before the handlers go.
  impl_->engine->Drain();
}

int Server::port() const { return impl_->port; }

namespace {

// Takes server reflection off a server that requires a bearer token. gRPC
// 1.51 cannot put reflection behind the token: the reflection service is
// registered by a plugin (no handler of ours to check the metadata in), and a
// server interceptor can observe a call but not refuse it with a status
// before its handler runs (server interceptors have no Hijack; see
// https://github.com/grpc/grpc/issues/24017). So the service is not offered at all: a reflection call gets
// UNIMPLEMENTED, token or not, and clients use the .proto files instead.
class NoReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
      return dynamic_cast<grpc::reflection::ProtoServerReflectionPlugin*>(p.get()) != nullptr;
    });
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      core::Engine& engine) {
  core::Metrics* metrics = engine.metrics();
  static const bool reflection = [] {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    return true;
  }();
  (void)reflection;
  grpc::EnableDefaultHealthCheckService(true);

  auto impl = std::make_unique<Impl>();
  impl->engine = &engine;
  if (!options.auth_token.empty()) impl->auth = std::make_unique<TokenAuth>(options.auth_token);
  impl->gate = std::make_unique<CallGate>(impl->auth.get(), metrics);
  MatrixServiceImpl::Options svc_options;
  svc_options.max_stream_in_flight = options.max_stream_in_flight;
  svc_options.batcher = engine.batcher();
  svc_options.gate = impl->gate.get();
  impl->service = std::make_unique<MatrixServiceImpl>(engine.matrices(), metrics,
                                                      engine.work_queue(), svc_options);

  grpc::ServerBuilder builder;
  if (!options.auth_token.empty()) builder.SetOption(std::make_unique<NoReflection>());
  auto creds = MakeServerCredentials(options);
  if (!creds.ok()) return creds.status();
  builder.AddListeningPort(options.grpc_address, *creds, &impl->port);
  if (options.max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  }
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(impl->service.get());
  AttentionServiceImpl::Options attn_options;
  attn_options.max_stream_in_flight = options.max_stream_in_flight;
  attn_options.batcher = engine.batcher();
  attn_options.gate = impl->gate.get();
  impl->attention = std::make_unique<AttentionServiceImpl>(engine.attention(), metrics,
                                                           engine.work_queue(), attn_options);
  builder.RegisterService(impl->attention.get());
  DiagnosticsServiceImpl::Options diag_options;
  diag_options.max_echo_bytes = options.max_echo_bytes;
  diag_options.max_response_bytes = options.max_message_bytes;
  diag_options.max_stream_in_flight = options.max_stream_in_flight;
  diag_options.gate = impl->gate.get();
  impl->diagnostics =
      std::make_unique<DiagnosticsServiceImpl>(metrics, engine.work_queue(), diag_options);
  builder.RegisterService(impl->diagnostics.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.grpc_address, " (address in use or invalid?)"));
  }
  if (auto* health = impl->server->GetHealthCheckService()) health->SetServingStatus(true);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Drain: health NOT_SERVING (probes and Watch streams see it), new calls
  // UNAVAILABLE, admitted ones get up to `grace` to finish. Those still open
  // then are ended with UNAVAILABLE, which their clients see at once.
  const auto deadline = std::chrono::system_clock::now() + grace;
  if (auto* health = impl_->server->GetHealthCheckService()) health->SetServingStatus(false);
  impl_->gate->StartDraining();
  if (!impl_->gate->WaitIdle(deadline)) {
    impl_->gate->AbortOpenCalls();
    impl_->gate->WaitIdle(std::chrono::system_clock::now() + kAbortGrace);
  }
  // gRPC's shutdown sends GOAWAY, stops listening and waits for the clients
  // to close their connections, which they do once they have read every
  // response; only past kCloseGrace does it cancel what is left (health
  // Watch streams, clients that ignore GOAWAY) and close the connections
  // itself. Closing them at once could lose responses already written: a
  // socket closed with unread input (a client's WINDOW_UPDATE or PING ack)
  // is reset, and the kernel drops what it had not yet sent.
  impl_->server->Shutdown(std::chrono::system_clock::now() + kCloseGrace);
  impl_->server->Wait();
}

}  // namespace plume::server
