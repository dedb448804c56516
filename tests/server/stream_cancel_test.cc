// Stream reactors on cancel, in process (so that ThreadSanitizer and
// AddressSanitizer see the reactor): a client sends more items than the
// server keeps in flight, never reads a response, and cancels; the stream
// must finish and Server::Shutdown return within its grace period. GemvStream
// and EchoStream share the reactor.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "plume/v1/diagnostics.grpc.pb.h"
#include "plume/v1/plume.grpc.pb.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/test_server.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

using namespace std::chrono_literals;

class StreamCancelTest : public ::testing::Test {
 protected:
  static constexpr int kInFlight = 4;  // the server's max_stream_in_flight

  void SetUp() override {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.budget_bytes = int64_t{256} << 20;
    eo.work.worker_threads = 1;
    server::ServerOptions o;
    o.max_stream_in_flight = kInFlight;
    auto t = testing::StartTestServer(eo, o, std::make_unique<core::CpuBackend>(1));
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(server_->port()),
                                         grpc::InsecureChannelCredentials(), args);
  }
  void TearDown() override {
    channel_.reset();
    if (server_) ShutdownWithin(5s);
  }

  // Server::Shutdown(1 s) must return within `limit`; a hung shutdown ends
  // the test binary (it cannot be joined).
  void ShutdownWithin(std::chrono::seconds limit) {
    auto done = std::async(std::launch::async, [this] { server_->Shutdown(1000ms); });
    if (done.wait_for(limit) != std::future_status::ready) {
      ADD_FAILURE() << "Server::Shutdown hung with a cancelled stream open";
      std::cerr << "Server::Shutdown hung; exiting\n";
      std::_Exit(1);
    }
    server_.reset();
  }

  // Writes `req` (request_id 1..items) on a stream whose responses are never
  // read; once past the server's in-flight limit (kInFlight items), stalls
  // for `stall` (the client has stopped reading) and cancels. Returns the
  // items written.
  template <class Req, class Resp>
  int StallAndCancel(grpc::ClientContext* ctx, grpc::ClientReaderWriter<Req, Resp>* stream, Req req,
                     int items, std::chrono::milliseconds stall) {
    std::atomic<int> written{0};
    std::thread writer([&] {
      for (int i = 1; i <= items; ++i) {
        req.set_request_id(static_cast<uint64_t>(i));
        if (!stream->Write(req)) return;
        ++written;
      }
    });
    EXPECT_TRUE(testing::WaitUntil("the client to get past the server's in-flight limit",
                                   [&] { return written > kInFlight; }))
        << written << " items written";
    std::this_thread::sleep_for(stall);
    ctx->TryCancel();
    writer.join();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    return written;
  }

  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(StreamCancelTest, StalledGemvStreamFinishesOnCancel) {
  // 4096 x 64, 64 vectors an item: 1 MiB answers, beyond a stream's window.
  constexpr int64_t kRows = 4096, kCols = 64, kBatch = 64;
  Client client(channel_, ClientOptions{});
  std::vector<float> w(static_cast<size_t>(kRows * kCols), 0.5f);
  ASSERT_TRUE(client.UploadMatrix({.name = "m"}, TensorRef::F32(w.data(), {kRows, kCols})).ok());
  v1::GemvRequest req;
  req.set_matrix("m");
  req.mutable_input()->set_dtype(v1::DTYPE_F32);
  req.mutable_input()->add_shape(kBatch);
  req.mutable_input()->add_shape(kCols);
  std::vector<float> x(static_cast<size_t>(kBatch * kCols), 1.0f);
  req.mutable_input()->set_data(x.data(), x.size() * sizeof(float));

  auto stub = v1::MatrixService::NewStub(channel_);
  for (int round = 0; round < 2; ++round) {
    grpc::ClientContext ctx;
    auto stream = stub->GemvStream(&ctx);
    EXPECT_GT(StallAndCancel(&ctx, stream.get(), req, 500, 700ms), kInFlight);
  }
  // The server still serves, then shuts down in time.
  EXPECT_TRUE(client.GetMatrix("m").ok());
  ShutdownWithin(5s);
}

TEST_F(StreamCancelTest, StalledEchoStreamFinishesOnCancel) {
  v1::EchoRequest req;
  req.mutable_input()->set_data(std::string(512 << 10, 'e'));
  auto stub = v1::DiagnosticsService::NewStub(channel_);
  for (int round = 0; round < 2; ++round) {
    grpc::ClientContext ctx;
    auto stream = stub->EchoStream(&ctx);
    EXPECT_GT(StallAndCancel(&ctx, stream.get(), req, 500, 700ms), kInFlight);
  }
  ShutdownWithin(5s);
}

}  // namespace
}  // namespace plume
