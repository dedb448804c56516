// plume-server as a process (PLUME_SERVER_BIN): streams whose client stops
// reading and then cancels must not hold the drain. A client opens
// GemvStream or AttentionStream, sends far more items than the server keeps
// in flight (so the server stops reading), never reads a response (so the
// server's write blocks on HTTP/2 flow control) and cancels; SIGTERM must
// then end the process, exit 0, within --drain_timeout.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "plume/v1/attention.grpc.pb.h"
#include "plume/v1/plume.grpc.pb.h"
#include "tests/common/process.h"

namespace plume {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::SlurpFile;

constexpr auto kDrain = 2s;

class DrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("plume_drain_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::vector<std::string> args = {
        PLUME_SERVER_BIN, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
        "--backend=cpu", "--cpu_threads=1", "--worker_threads=1", "--store_dir=",
        "--drain_timeout=2s", "--ready_file=" + File("ready.json")};
    pid_ = testing::Spawn(args, File("server.out"), File("server.err"));
    ASSERT_GT(pid_, 0);
    std::string why;
    int metrics_port = 0;
    ASSERT_TRUE(testing::WaitForReadyFile(pid_, File("ready.json"), &port_, &metrics_port, 60s, &why))
        << why << "\n" << SlurpFile(File("server.err"));
    ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(port_);
    o.max_attempts = 1;
    o.default_timeout = 60s;
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      testing::WaitFor(pid_, 10s);
    }
    if (HasFailure()) {
      std::cerr << "server log:\n" << SlurpFile(File("server.err")) << "\nkept " << dir_ << "\n";
    } else {
      fs::remove_all(dir_);
    }
  }
  std::string File(const std::string& f) const { return (dir_ / f).string(); }

  // A channel of its own, so that the stalled stream's connection is not the
  // one the SDK client uses.
  std::shared_ptr<grpc::Channel> RawChannel() const {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(-1);
    return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_),
                                     grpc::InsecureChannelCredentials(), args);
  }

  // Writes `items` copies of `req` (request_id 1..items) on a stream whose
  // responses are never read, cancels it after `stall`, and returns the
  // number of items the client managed to write.
  template <class Req, class Resp>
  int StallAndCancel(grpc::ClientContext* ctx, grpc::ClientReaderWriter<Req, Resp>* stream, Req req,
                     int items, std::chrono::milliseconds stall) {
    std::atomic<int> written{0};
    std::thread writer([&] {
      for (int i = 1; i <= items; ++i) {
        req.set_request_id(static_cast<uint64_t>(i));
        if (!stream->Write(req)) return;
        written.fetch_add(1);
      }
    });
    std::this_thread::sleep_for(stall);
    ctx->TryCancel();
    writer.join();
    const grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
    return written.load();
  }

  // SIGTERM, and the process must exit 0 within the drain timeout (plus
  // slack for a loaded machine).
  void ExpectSigtermExitsWithinDrain() {
    const auto t0 = std::chrono::steady_clock::now();
    kill(pid_, SIGTERM);
    const int code = testing::WaitFor(pid_, kDrain + 20s);
    pid_ = -1;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(code, 0) << "plume-server did not exit cleanly (137: killed after hanging)";
    EXPECT_LT(s, std::chrono::duration<double>(kDrain).count() + 3.0)
        << "exit took " << s << " s with a drain timeout of 2 s";
    std::cout << "SIGTERM to exit: " << s << " s, code " << code << "\n";
  }

  fs::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::unique_ptr<Client> client_;
};

TEST_F(DrainTest, GemvStreamThatStopsReadingThenCancelsDoesNotHoldSigterm) {
  // 16384 x 256: each item of 16 vectors computes for a while on one thread
  // and answers 1 MiB, far more than a stream's flow-control window.
  constexpr int64_t kRows = 16384, kCols = 256, kBatch = 16;
  std::vector<float> w(static_cast<size_t>(kRows * kCols), 0.25f);
  ASSERT_TRUE(client_->UploadMatrix({.name = "m"}, TensorRef::F32(w.data(), {kRows, kCols})).ok());

  v1::GemvRequest req;
  req.set_matrix("m");
  req.mutable_input()->set_dtype(v1::DTYPE_F32);
  req.mutable_input()->add_shape(kBatch);
  req.mutable_input()->add_shape(kCols);
  std::vector<float> x(static_cast<size_t>(kBatch * kCols), 1.0f);
  req.mutable_input()->set_data(x.data(), x.size() * sizeof(float));

  auto stub = v1::MatrixService::NewStub(RawChannel());
  for (int round = 0; round < 3; ++round) {  // several stalled streams
    grpc::ClientContext ctx;
    auto stream = stub->GemvStream(&ctx);
    const int written = StallAndCancel(&ctx, stream.get(), req, 2000, 1500ms);
    EXPECT_GT(written, 64) << "the client should get past the server's in-flight limit";
  }
  std::this_thread::sleep_for(300ms);
  // The server still answers.
  auto info = client_->GetMatrix("m");
  EXPECT_TRUE(info.ok()) << info.status();
  client_.reset();
  ExpectSigtermExitsWithinDrain();
}

TEST_F(DrainTest, AttentionStreamThatStopsReadingThenCancelsDoesNotHoldSigterm) {
  // A cache of 4 kv heads x 64 tokens x 128; each query of 32 heads x 64
  // rows answers 1 MiB.
  constexpr int64_t kKvHeads = 4, kSeq = 64, kHeadDim = 128, kHeads = 32, kQLen = 64;
  std::vector<float> kv(static_cast<size_t>(kKvHeads * kSeq * kHeadDim), 0.5f);
  auto cache = client_->UploadKV({.name = "c"}, TensorRef::F32(kv.data(), {kKvHeads, kSeq, kHeadDim}),
                                 TensorRef::F32(kv.data(), {kKvHeads, kSeq, kHeadDim}));
  ASSERT_TRUE(cache.ok()) << cache.status();

  v1::AttentionRequest req;
  req.set_cache("c");
  auto* q = req.mutable_query();
  q->set_dtype(v1::DTYPE_F32);
  for (int64_t d : {int64_t{1}, kHeads, kQLen, kHeadDim}) q->add_shape(d);
  std::vector<float> qv(static_cast<size_t>(kHeads * kQLen * kHeadDim), 0.1f);
  q->set_data(qv.data(), qv.size() * sizeof(float));

  auto stub = v1::AttentionService::NewStub(RawChannel());
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext ctx;
    auto stream = stub->AttentionStream(&ctx);
    const int written = StallAndCancel(&ctx, stream.get(), req, 2000, 1500ms);
    EXPECT_GT(written, 64) << "the client should get past the server's in-flight limit";
  }
  std::this_thread::sleep_for(300ms);
  auto info = client_->GetKV("c");
  EXPECT_TRUE(info.ok()) << info.status();
  client_.reset();
  ExpectSigtermExitsWithinDrain();
}

}  // namespace
}  // namespace plume
