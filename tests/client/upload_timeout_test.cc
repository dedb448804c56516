// Per-message timeouts of streamed uploads (CallOptions::message_timeout,
// the CLI's --timeout) against a fake server in this process that reads
// slowly, stops reading, or answers late. A slow but steady upload that
// takes longer than the timeout succeeds, where a whole-call deadline of the
// same length fails; a stalled one fails after one timeout, not at the end
// of a whole-call deadline; --upload-deadline bounds the whole upload. The
// fake server's HTTP/2 window is fixed (no BDP probing), so a message is
// accepted only as the server reads.
//
// PLUME_CLI_BIN comes from CMake.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "plume/client/client.h"
#include "plume/io/array.h"
#include "plume/io/npy.h"
#include "tests/common/files.h"
#include "tests/common/process.h"

namespace plume {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// How the fake server treats an upload.
struct Behaviour {
  std::chrono::milliseconds read_delay{0};    // after each message read
  bool stall = false;                         // read the header, then nothing more
  std::chrono::milliseconds answer_delay{0};  // after the last message, before answering
};

// Waits, without reading, until the call is cancelled or the server stops.
void WaitForCancel(grpc::ServerContext* ctx) {
  while (!ctx->IsCancelled()) std::this_thread::sleep_for(5ms);
}

class SlowMatrixService final : public v1::MatrixService::Service {
 public:
  Behaviour behaviour;
  std::atomic<int64_t> messages{0};
  std::atomic<int64_t> data_bytes{0};

  grpc::Status UploadMatrix(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadMatrixRequest>* reader,
                            v1::UploadMatrixResponse* resp) override {
    v1::UploadMatrixRequest req;
    if (!reader->Read(&req) || !req.has_header()) return {grpc::StatusCode::INVALID_ARGUMENT, "no header"};
    const v1::MatrixHeader h = req.header();
    ++messages;
    if (behaviour.stall) {
      WaitForCancel(ctx);
      return {grpc::StatusCode::CANCELLED, "cancelled"};
    }
    while (reader->Read(&req)) {
      ++messages;
      data_bytes += static_cast<int64_t>(req.data().size());
      std::this_thread::sleep_for(behaviour.read_delay);
    }
    std::this_thread::sleep_for(behaviour.answer_delay);
    resp->mutable_matrix()->set_name(h.name());
    resp->mutable_matrix()->set_rows(h.rows());
    resp->mutable_matrix()->set_cols(h.cols());
    return grpc::Status::OK;
  }
};

class SlowAttentionService final : public v1::AttentionService::Service {
 public:
  grpc::Status UploadKV(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadKVRequest>* reader,
                        v1::UploadKVResponse*) override {
    v1::UploadKVRequest req;
    reader->Read(&req);
    WaitForCancel(ctx);  // always stalls
    return {grpc::StatusCode::CANCELLED, "cancelled"};
  }
};

class UploadTimeoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    // A fixed stream window: the client's writes wait for the server's reads.
    b.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    b.SetMaxReceiveMessageSize(64 << 20);
    b.RegisterService(&matrices_);
    b.RegisterService(&attention_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ClientOptions o;
    o.target = Address();
    o.upload_chunk_bytes = 64 << 10;
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    server_->Shutdown(std::chrono::system_clock::now() + 5s);
  }

  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  // An F32 matrix of `chunks` 64 KiB messages.
  absl::StatusOr<v1::MatrixInfo> Upload(int64_t chunks, const CallOptions& call) {
    matrix_.assign(static_cast<size_t>(chunks * (16 << 10)), 0.5f);
    return client_->UploadMatrix({.name = "w"}, TensorRef::F32(matrix_.data(), {chunks * 16, 1024}), nullptr, call);
  }

  static double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

  int port_ = 0;
  SlowMatrixService matrices_;
  SlowAttentionService attention_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Client> client_;
  std::vector<float> matrix_;
};

TEST_F(UploadTimeoutTest, SlowButSteadyUploadOutlastsItsPerMessageTimeout) {
  // 80 messages, each read 25 ms after the last: about 2 s in all.
  matrices_.behaviour.read_delay = 25ms;
  CallOptions per_message;
  per_message.message_timeout = 1000ms;
  auto t0 = Clock::now();
  auto info = Upload(80, per_message);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(SecondsSince(t0), 1.5) << "the upload was not slower than its per-message timeout";
  EXPECT_EQ(matrices_.data_bytes.load(), 80 * (64 << 10));
  EXPECT_EQ(info->rows(), 80 * 16);

  // The same upload under a whole-call deadline of the same length fails.
  matrices_.data_bytes = 0;
  CallOptions whole;
  whole.timeout = 1000ms;
  t0 = Clock::now();
  auto late = Upload(80, whole);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  EXPECT_LT(SecondsSince(t0), 1.9);
  EXPECT_LT(matrices_.data_bytes.load(), 80 * (64 << 10));
}

TEST_F(UploadTimeoutTest, StalledUploadFailsAfterOnePerMessageTimeout) {
  matrices_.behaviour.stall = true;
  CallOptions call;  // no whole-call deadline: only the watchdog can end it
  call.message_timeout = 500ms;
  const auto t0 = Clock::now();
  auto info = Upload(64, call);  // 4 MiB: far more than the window holds
  const double took = SecondsSince(t0);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDeadlineExceeded) << info.status();
  EXPECT_NE(info.status().message().find("upload stalled"), std::string::npos) << info.status();
  EXPECT_NE(info.status().message().find("per-message timeout (500ms)"), std::string::npos) << info.status();
  EXPECT_GE(took, 0.5);
  EXPECT_LT(took, 5.0);

  // UploadKV too.
  const std::vector<float> kv(static_cast<size_t>(4 << 20) / 4, 0.25f);
  auto cache = client_->UploadKV({.name = "c"}, TensorRef::F32(kv.data(), {1, 1024, 1024}),
                                 TensorRef::F32(kv.data(), {1, 1024, 1024}), nullptr, call);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kDeadlineExceeded) << cache.status();
  EXPECT_NE(cache.status().message().find("upload stalled"), std::string::npos) << cache.status();
}

TEST_F(UploadTimeoutTest, TheAnswerAfterTheLastMessageHasOneTimeoutToCome) {
  CallOptions call;
  call.message_timeout = 600ms;
  matrices_.behaviour.answer_delay = 200ms;
  auto quick = Upload(4, call);
  ASSERT_TRUE(quick.ok()) << quick.status();
  matrices_.behaviour.answer_delay = 1500ms;
  auto late = Upload(4, call);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  EXPECT_NE(late.status().message().find("no answer from the server"), std::string::npos) << late.status();
}

TEST_F(UploadTimeoutTest, AWholeUploadDeadlineStillBoundsAProgressingUpload) {
  matrices_.behaviour.read_delay = 25ms;
  CallOptions call;
  call.message_timeout = 1000ms;
  call.timeout = 500ms;
  const auto t0 = Clock::now();
  auto info = Upload(80, call);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDeadlineExceeded) << info.status();
  EXPECT_EQ(info.status().message().find("per-message"), std::string::npos) << "the watchdog fired: " << info.status();
  EXPECT_LT(SecondsSince(t0), 1.4);
}

// The CLI: --timeout is per message for `plume upload`, --upload-deadline
// bounds the whole upload.
TEST_F(UploadTimeoutTest, CliTimeoutIsPerMessageAndUploadDeadlineIsWhole) {
  testing::TempDir dir;
  // 12 MiB of f32: 12 messages of the CLI's 1 MiB, each read 200 ms after the last.
  const std::vector<float> w(static_cast<size_t>(3 << 20), 0.5f);
  const std::string npy = (dir / "w.npy").string();
  ASSERT_TRUE(io::WriteNpy(npy, io::FromFloats({1536, 2048}, w.data())).ok());
  matrices_.behaviour.read_delay = 200ms;
  auto run = [&](std::vector<std::string> flags, std::string* err) {
    std::vector<std::string> args = {PLUME_CLI_BIN, "--server", Address()};
    args.insert(args.end(), flags.begin(), flags.end());
    for (const char* a : {"upload", "w"}) args.push_back(a);
    args.push_back(npy);
    const pid_t pid = testing::Spawn(args, (dir / "out").string(), (dir / "err").string());
    const int code = testing::WaitFor(pid, 60s);
    *err = testing::SlurpFile((dir / "err").string());
    return code;
  };
  std::string err;
  auto t0 = Clock::now();
  EXPECT_EQ(run({"--timeout", "1"}, &err), 0) << err;
  EXPECT_GT(SecondsSince(t0), 2.0) << "the upload was not slower than --timeout";
  EXPECT_EQ(matrices_.data_bytes.load(), int64_t{12} << 20);

  t0 = Clock::now();
  EXPECT_EQ(run({"--timeout", "1", "--upload-deadline", "1"}, &err), 1);
  EXPECT_NE(err.find("error: DEADLINE_EXCEEDED"), std::string::npos) << err;
  EXPECT_LT(SecondsSince(t0), 2.0);

  matrices_.behaviour.stall = true;
  t0 = Clock::now();
  EXPECT_EQ(run({"--timeout", "0.5"}, &err), 1);
  EXPECT_NE(err.find("error: DEADLINE_EXCEEDED: upload stalled"), std::string::npos) << err;
  EXPECT_LT(SecondsSince(t0), 5.0);
}

}  // namespace
}  // namespace plume
