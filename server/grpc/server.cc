#include "server/grpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/core/work_queue.h"
#include "server/grpc/attention_service_impl.h"
#include "server/grpc/matrix_service_impl.h"

namespace plume::server {

struct Server::Impl {
  std::unique_ptr<core::WorkQueue> queue;
  std::unique_ptr<MatrixServiceImpl> service;
  std::unique_ptr<AttentionServiceImpl> attention;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  Shutdown(std::chrono::milliseconds(0));
  impl_->queue.reset();  // finishes what is queued before the service goes
}

int Server::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      core::MatrixService* core,
                                                      core::Metrics* metrics) {
  return Start(options, core, nullptr, metrics);
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      core::MatrixService* core,
                                                      core::AttentionService* attention,
                                                      core::Metrics* metrics) {
  static const bool reflection = [] {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    return true;
  }();
  (void)reflection;
  grpc::EnableDefaultHealthCheckService(true);

  auto impl = std::make_unique<Impl>();
  impl->queue = std::make_unique<core::WorkQueue>(options.worker_threads,
                                                  options.max_queued_requests);
  MatrixServiceImpl::Options svc_options;
  svc_options.max_stream_in_flight = options.max_stream_in_flight;
  impl->service =
      std::make_unique<MatrixServiceImpl>(core, metrics, impl->queue.get(), svc_options);

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.grpc_address, grpc::InsecureServerCredentials(), &impl->port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(impl->service.get());
  if (attention != nullptr) {
    AttentionServiceImpl::Options attn_options;
    attn_options.max_stream_in_flight = options.max_stream_in_flight;
    impl->attention = std::make_unique<AttentionServiceImpl>(attention, metrics, impl->queue.get(),
                                                             attn_options);
    builder.RegisterService(impl->attention.get());
  }
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
  if (auto* health = impl_->server->GetHealthCheckService()) health->SetServingStatus(false);
  impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
  impl_->server->Wait();
}

}  // namespace plume::server
