// plume-server as a process (PLUME_SERVER_BIN): streams whose client stops
// reading and then cancels must not hold the drain. A client opens
// GemvStream or AttentionStream, sends far more items than the server keeps
// in flight (so the server stops reading), never reads a response (so the
// server's write blocks on HTTP/2 flow control) and cancels; SIGTERM must
// then end the process, exit 0, within --drain_timeout.
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "plume/v1/attention.grpc.pb.h"
#include "plume/v1/diagnostics.grpc.pb.h"
#include "plume/v1/plume.grpc.pb.h"
#include "tests/common/metrics_http.h"
#include "tests/common/process.h"
#include "tests/common/server_process_test.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

using namespace std::chrono_literals;
using testing::SlurpFile;

constexpr auto kDrain = 2s;

class DrainTest : public testing::ServerProcessTest {
 protected:
  void SetUp() override {
    ServerProcessTest::SetUp();
    // A budget of 256 MiB: room for every test's data, and too little for
    // the name probe's 16384 x 16384 matrix (see kProbeRows).
    ASSERT_NO_FATAL_FAILURE(StartServer({"--worker_threads=1", "--store_dir=", "--drain_timeout=2s",
                                         "--memory_budget_bytes=268435456"}));
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
    ServerProcessTest::TearDown();
  }

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
    // Past the server's in-flight limit first (slow under ASan on a loaded
    // machine), then stalled for `stall`.
    for (int i = 0; i < 750 && written.load() <= 64; ++i) std::this_thread::sleep_for(20ms);
    std::this_thread::sleep_for(stall);
    ctx->TryCancel();
    writer.join();
    const grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
    return written.load();
  }

  // SIGTERM, and the process must exit 0 within the drain timeout (plus
  // `slack` seconds for a loaded machine; calls still open at the drain
  // timeout add up to 1.5 s of graces: server.cc).
  void ExpectSigtermExitsWithinDrain(double slack = 3.0) {
    const auto t0 = std::chrono::steady_clock::now();
    kill(pid_, SIGTERM);
    const int code = testing::WaitFor(pid_, kDrain + 20s);
    pid_ = -1;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(code, 0) << "plume-server did not exit cleanly (137: killed after hanging)";
    EXPECT_LT(s, std::chrono::duration<double>(kDrain).count() + slack)
        << "exit took " << s << " s with a drain timeout of 2 s";
    std::cout << "SIGTERM to exit: " << s << " s, code " << code << "\n";
  }

  // Waits until the server has no call open (plume_calls_in_flight 0), such
  // as the streams just cancelled.
  void WaitUntilNoCallOpen(const std::string& what) {
    double open = -1;
    ASSERT_TRUE(testing::WaitUntil(
        what,
        [&] {
          auto m = testing::ScrapeMetrics(metrics_port_, {"plume_calls_in_flight"});
          open = m.ok() ? (*m)["plume_calls_in_flight"] : -1;
          return open == 0;
        },
        testing::kWaitTimeout, 10ms))
        << open << " calls open";
  }

  // A 16384 x 256 matrix "m": each GEMV item of kWideBatch vectors computes
  // for a while on one thread and answers 1 MiB, far more than a stream's
  // flow-control window.
  static constexpr int64_t kWideRows = 16384, kWideCols = 256, kWideBatch = 16;
  void UploadWide() {
    std::vector<float> w(static_cast<size_t>(kWideRows * kWideCols), 0.25f);
    ASSERT_TRUE(client_->UploadMatrix({.name = "m"}, TensorRef::F32(w.data(), {kWideRows, kWideCols})).ok());
  }
  static v1::GemvRequest WideRequest() {
    v1::GemvRequest req;
    req.set_matrix("m");
    req.mutable_input()->set_dtype(v1::DTYPE_F32);
    req.mutable_input()->add_shape(kWideBatch);
    req.mutable_input()->add_shape(kWideCols);
    std::vector<float> x(static_cast<size_t>(kWideBatch * kWideCols), 1.0f);
    req.mutable_input()->set_data(x.data(), x.size() * sizeof(float));
    return req;
  }

  std::unique_ptr<Client> client_;
};

TEST_F(DrainTest, GemvStreamThatStopsReadingThenCancelsDoesNotHoldSigterm) {
  ASSERT_NO_FATAL_FAILURE(UploadWide());
  const v1::GemvRequest req = WideRequest();

  auto stub = v1::MatrixService::NewStub(RawChannel());
  for (int round = 0; round < 3; ++round) {  // several stalled streams
    grpc::ClientContext ctx;
    auto stream = stub->GemvStream(&ctx);
    const int written = StallAndCancel(&ctx, stream.get(), req, 2000, 1500ms);
    EXPECT_GT(written, 64) << "the client should get past the server's in-flight limit";
  }
  ASSERT_NO_FATAL_FAILURE(WaitUntilNoCallOpen("the cancelled streams to end on the server"));
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
  ASSERT_NO_FATAL_FAILURE(WaitUntilNoCallOpen("the cancelled streams to end on the server"));
  auto info = client_->GetKV("c");
  EXPECT_TRUE(info.ok()) << info.status();
  client_.reset();
  ExpectSigtermExitsWithinDrain();
}

// Calls still open when --drain_timeout runs out are ended with UNAVAILABLE
// (which retrying clients retry), and their clients see it at once, whatever
// their flow-control state: a GemvStream whose client stopped reading, an
// idle GemvStream never half-closed, and an upload never half-closed. The
// process still exits 0 within the drain timeout.
TEST_F(DrainTest, CallsOpenAtTheDrainTimeoutGetUnavailable) {
  ASSERT_NO_FATAL_FAILURE(UploadWide());
  const v1::GemvRequest req = WideRequest();

  // A stream whose client writes and never reads: the server stops reading
  // it and its writes block on flow control.
  grpc::ClientContext stalled_ctx;
  auto stalled_stub = v1::MatrixService::NewStub(RawChannel());
  auto stalled = stalled_stub->GemvStream(&stalled_ctx);
  std::atomic<int> written{0};
  std::thread writer([&] {
    v1::GemvRequest r = req;
    for (int i = 1; i <= 2000; ++i) {
      r.set_request_id(static_cast<uint64_t>(i));
      if (!stalled->Write(r)) return;
      written.fetch_add(1);
    }
  });
  // An idle stream: one item answered, then neither writes nor half-closes.
  grpc::ClientContext idle_ctx;
  auto idle_stub = v1::MatrixService::NewStub(RawChannel());
  auto idle = idle_stub->GemvStream(&idle_ctx);
  ASSERT_TRUE(idle->Write(req));
  v1::GemvResponse first;
  ASSERT_TRUE(idle->Read(&first));
  EXPECT_EQ(first.status().code(), 0) << first.status().message();
  // An upload: its header and half its data, never half-closed.
  grpc::ClientContext upload_ctx;
  v1::UploadMatrixResponse upload_resp;
  auto upload_stub = v1::MatrixService::NewStub(RawChannel());
  auto upload = upload_stub->UploadMatrix(&upload_ctx, &upload_resp);
  {
    v1::UploadMatrixRequest h;
    h.mutable_header()->set_name("late");
    h.mutable_header()->set_rows(64);
    h.mutable_header()->set_cols(64);
    h.mutable_header()->set_source_dtype(v1::DTYPE_F32);
    ASSERT_TRUE(upload->Write(h));
    v1::UploadMatrixRequest d;
    d.set_data(std::string(64 * 32 * sizeof(float), '\0'));
    ASSERT_TRUE(upload->Write(d));
  }
  // The upload is admitted once its name is taken: a header of the same
  // name is then refused with ALREADY_EXISTS. The probe asks for more than
  // the budget, so while the name is free it is refused too
  // (RESOURCE_EXHAUSTED) and never takes the name itself: a probe that fit
  // would hold "late" if the server read it before the upload's header, and
  // the upload would then be the one refused.
  constexpr int64_t kProbeRows = 16384;  // 256 MiB of codes resident
  grpc::Status taken;
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext probe_ctx;
    v1::UploadMatrixResponse probe_resp;
    auto probe = upload_stub->UploadMatrix(&probe_ctx, &probe_resp);
    v1::UploadMatrixRequest h;
    h.mutable_header()->set_name("late");
    h.mutable_header()->set_rows(kProbeRows);
    h.mutable_header()->set_cols(kProbeRows);
    h.mutable_header()->set_source_dtype(v1::DTYPE_F32);
    probe->Write(h);
    probe->WritesDone();
    taken = probe->Finish();
    if (taken.error_code() == grpc::StatusCode::ALREADY_EXISTS) break;
    ASSERT_EQ(taken.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << taken.error_message();
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(taken.error_code(), grpc::StatusCode::ALREADY_EXISTS) << taken.error_message();
  for (int i = 0; i < 500 && written.load() <= 64; ++i) std::this_thread::sleep_for(20ms);
  ASSERT_GT(written.load(), 64) << "the client should get past the server's in-flight limit";

  client_.reset();
  ExpectSigtermExitsWithinDrain(4.5);
  writer.join();
  // The results that reached the client come first, then the status.
  int delivered = 0;
  for (v1::GemvResponse r; stalled->Read(&r);) ++delivered;
  for (v1::GemvResponse r; idle->Read(&r);) ++delivered;
  const std::pair<const char*, grpc::Status> ended[] = {
      {"stalled GemvStream", stalled->Finish()},
      {"idle GemvStream", idle->Finish()},
      {"unfinished upload", upload->Finish()}};
  for (const auto& [what, st] : ended) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << what << ": " << st.error_code() << " " << st.error_message();
    EXPECT_NE(st.error_message().find("drain timeout"), std::string::npos)
        << what << ": " << st.error_message();
  }
  std::cout << "at the drain timeout: " << written.load() << " items sent on the stalled stream, "
            << delivered << " results delivered before UNAVAILABLE\n";
}

// Calls that arrive while the server tears down get UNAVAILABLE, never
// INTERNAL: four clients call in a loop (ListMatrices, Gemv, Echo), two on a
// channel each and two on a fresh connection every few calls, from before
// SIGTERM until after the process is gone, while a stalled stream holds the
// drain to its timeout, so that the drain, its end and gRPC's shutdown all
// fall inside the run. One gap is gRPC's own: a call that reaches the server
// in the instant its shutdown begins, before the client has read the
// GOAWAY, is dropped by gRPC core (Server::CallData::KillZombie in 1.51)
// and its client sees CANCELLED; at most once per client here.
TEST_F(DrainTest, CallsDuringTeardownGetUnavailableNeverInternal) {
  ASSERT_NO_FATAL_FAILURE(UploadWide());
  const v1::GemvRequest wide = WideRequest();
  grpc::ClientContext stalled_ctx;
  auto stalled_stub = v1::MatrixService::NewStub(RawChannel());
  auto stalled = stalled_stub->GemvStream(&stalled_ctx);
  std::atomic<int> written{0};
  std::thread writer([&] {
    v1::GemvRequest r = wide;
    for (int i = 1; i <= 2000; ++i) {
      r.set_request_id(static_cast<uint64_t>(i));
      if (!stalled->Write(r)) return;
      written.fetch_add(1);
    }
  });

  v1::GemvRequest small;
  small.set_matrix("m");
  small.mutable_input()->set_dtype(v1::DTYPE_F32);
  small.mutable_input()->add_shape(kWideCols);
  small.mutable_input()->set_data(std::string(kWideCols * sizeof(float), '\0'));
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<int, int> codes;
  std::vector<std::string> unexpected;
  // Per client: calls answered, and those answered OK.
  std::array<std::atomic<int>, 4> calls{}, oks{};
  std::vector<std::thread> clients;
  const auto t_start = std::chrono::steady_clock::now();
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      std::shared_ptr<grpc::Channel> channel = RawChannel();
      for (int i = 0; !stop.load(); ++i) {
        if (t >= 2 && i % 4 == 0) channel = RawChannel();
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + 10s);
        grpc::Status st;
        if (i % 3 == 0) {
          v1::ListMatricesResponse r;
          st = v1::MatrixService::NewStub(channel)->ListMatrices(&ctx, {}, &r);
        } else if (i % 3 == 1) {
          v1::GemvResponse r;
          st = v1::MatrixService::NewStub(channel)->Gemv(&ctx, small, &r);
        } else {
          v1::EchoRequest e;
          e.mutable_input()->set_dtype(v1::DTYPE_F32);
          e.mutable_input()->add_shape(4);
          e.mutable_input()->set_data(std::string(16, 'x'));
          v1::EchoResponse r;
          st = v1::DiagnosticsService::NewStub(channel)->Echo(&ctx, e, &r);
        }
        if (st.ok()) ++oks[t];
        ++calls[t];
        std::lock_guard<std::mutex> l(mu);
        ++codes[st.error_code()];
        if (!st.ok() && st.error_code() != grpc::StatusCode::UNAVAILABLE &&
            st.error_code() != grpc::StatusCode::CANCELLED) {
          unexpected.push_back(std::to_string(st.error_code()) + " \"" + st.error_message() +
                               "\" (call " + std::to_string(i % 3) + ", " +
                               std::to_string(std::chrono::duration<double>(
                                   std::chrono::steady_clock::now() - t_start).count()) +
                               " s into the run)");
        }
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  // SIGTERM once every client has been served and the stalled stream is
  // past the server's in-flight limit.
  EXPECT_TRUE(testing::WaitUntil("every client to get an OK and the stalled stream to stall", [&] {
    return std::all_of(oks.begin(), oks.end(), [](const std::atomic<int>& n) { return n > 0; }) &&
           written > 64;
  }))
      << oks[0] << " " << oks[1] << " " << oks[2] << " " << oks[3] << " OK; " << written
      << " items written on the stalled stream";
  client_.reset();
  ExpectSigtermExitsWithinDrain(4.5);
  // Every client makes two more calls, so at least one starts after the
  // process is gone.
  std::array<int, 4> after{};
  for (int t = 0; t < 4; ++t) after[t] = calls[t] + 2;
  EXPECT_TRUE(testing::WaitUntil("every client to call the server that is gone", [&] {
    for (int t = 0; t < 4; ++t) {
      if (calls[t] < after[t]) return false;
    }
    return true;
  }));
  stop.store(true);
  for (auto& c : clients) c.join();
  stalled_ctx.TryCancel();
  writer.join();
  (void)stalled->Finish();
  std::lock_guard<std::mutex> l(mu);
  EXPECT_GT(codes[grpc::StatusCode::OK], 0);
  EXPECT_GT(codes[grpc::StatusCode::UNAVAILABLE], 0);
  EXPECT_LE(codes[grpc::StatusCode::CANCELLED], 4);
  EXPECT_TRUE(unexpected.empty()) << unexpected.size() << " calls got a code other than OK, "
                                  << "UNAVAILABLE and CANCELLED; the first: " << unexpected.front();
  std::cout << "calls during teardown: " << codes[grpc::StatusCode::OK] << " OK, "
            << codes[grpc::StatusCode::UNAVAILABLE] << " UNAVAILABLE, "
            << codes[grpc::StatusCode::CANCELLED] << " CANCELLED, " << unexpected.size()
            << " other\n";
}

}  // namespace
}  // namespace plume
