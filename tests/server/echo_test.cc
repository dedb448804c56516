// DiagnosticsService (Echo, EchoStream) on the real gRPC server at
// 127.0.0.1:0 through the real SDK: payloads come back byte for byte (unary,
// callback and streaming forms), the size limit gives RESOURCE_EXHAUSTED
// (and, in a stream, fails that item only), the bearer token is required
// when set, and the calls are counted under their method labels. Also the
// SDK's non-blocking GemvAsync, which `plume bench --mode unary` uses.
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "plume/client/client.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/test_server.h"
#include "tests/common/gemv_reference.h"

namespace plume {
namespace {

constexpr int64_t kLimit = 64 << 10;
constexpr char kToken[] = "echo-test-token-41c2";

// n random bytes (every bit pattern, NaNs included, when read as F32).
std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

TensorRef AsF32(const std::string& bytes) {
  return TensorRef{v1::DTYPE_F32, {static_cast<int64_t>(bytes.size() / 4)}, bytes};
}

class EchoTest : public ::testing::Test {
 protected:
  void StartServer(const std::string& token = "") {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.budget_bytes = int64_t{1} << 24;
    server::ServerOptions o;
    o.max_echo_bytes = kLimit;
    o.auth_token = token;
    auto t = testing::StartTestServer(eo, o, std::make_unique<core::CpuBackend>(1));
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    metrics_ = engine_->metrics();
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::milliseconds(100));
  }

  std::unique_ptr<Client> Connect(const std::string& token = "") {
    ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(server_->port());
    o.default_timeout = std::chrono::seconds(20);
    o.max_attempts = 1;
    o.bearer_token = token;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // The value of plume_requests_total{method, code}, 0 when absent.
  double RequestsTotal(const std::string& method, const std::string& code) {
    const std::string text = prometheus::TextSerializer().Serialize(metrics_->registry()->Collect());
    const std::string key =  // prometheus-cpp writes labels sorted by name
        "plume_requests_total{code=\"" + code + "\",method=\"" + method + "\"} ";
    const size_t at = text.find(key);
    return at == std::string::npos ? 0.0 : std::stod(text.substr(at + key.size()));
  }

  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  core::Metrics* metrics_ = nullptr;
};

TEST_F(EchoTest, UnaryRoundTripIsByteExact) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  int calls = 0;
  for (size_t n : {size_t{0}, size_t{4}, size_t{4100}, static_cast<size_t>(kLimit)}) {
    const std::string bytes = RandomBytes(n, static_cast<uint32_t>(n) + 7);
    auto r = c->Echo(AsF32(bytes));
    ++calls;
    ASSERT_TRUE(r.ok()) << n << ": " << r.status();
    EXPECT_EQ(r->dtype, v1::DTYPE_F32);
    EXPECT_EQ(r->shape, std::vector<int64_t>{static_cast<int64_t>(n / 4)});
    EXPECT_TRUE(r->data == bytes) << "payload of " << n << " bytes changed on the way";
  }
  // A 2-D F16 payload keeps its dtype and shape.
  const std::string h = RandomBytes(3 * 10 * 2, 99);
  auto r = c->Echo(TensorRef{v1::DTYPE_F16, {3, 10}, h});
  ++calls;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->dtype, v1::DTYPE_F16);
  EXPECT_EQ(r->shape, (std::vector<int64_t>{3, 10}));
  EXPECT_TRUE(r->data == h);
  EXPECT_EQ(RequestsTotal("Echo", "OK"), calls);
}

TEST_F(EchoTest, OverTheLimitIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  auto r = c->Echo(AsF32(RandomBytes(kLimit + 4, 3)));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("max_echo_bytes"), std::string::npos) << r.status();
  EXPECT_EQ(RequestsTotal("Echo", "RESOURCE_EXHAUSTED"), 1);
  // A malformed tensor never leaves the client.
  auto bad = c->Echo(TensorRef{v1::DTYPE_F32, {3}, "12345"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  // The server is still fine.
  EXPECT_TRUE(c->Echo(AsF32(RandomBytes(64, 4))).ok());
}

TEST_F(EchoTest, AsyncCallsRoundTrip) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  constexpr int kCalls = 64;
  std::vector<std::string> payloads;
  for (int i = 0; i < kCalls; ++i) payloads.push_back(RandomBytes(4 * (1 + i * 37), 100 + i));
  std::vector<std::promise<absl::StatusOr<HostTensor>>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    c->EchoAsync(AsF32(payloads[i]), [&done, i](absl::StatusOr<HostTensor> r) {
      done[i].set_value(std::move(r));
    });
  }
  for (int i = 0; i < kCalls; ++i) {
    auto r = done[i].get_future().get();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    EXPECT_TRUE(r->data == payloads[i]) << i;
  }
  // An invalid input calls back inline with INVALID_ARGUMENT.
  absl::Status inline_status;
  c->EchoAsync(TensorRef{v1::DTYPE_F32, {2}, "abc"},
               [&](absl::StatusOr<HostTensor> r) { inline_status = r.status(); });
  EXPECT_EQ(inline_status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EchoTest, GemvAsyncGivesWhatGemvGives) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  const int64_t rows = 37, cols = 150;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 21);
  ASSERT_TRUE(c->UploadMatrix({.name = "w"}, TensorRef::F32(w.data(), {rows, cols})).ok());
  constexpr int kCalls = 16;
  std::vector<std::vector<float>> xs;
  for (int i = 0; i < kCalls; ++i) xs.push_back(testing::RandomNormal(2 * cols, 300 + i));
  std::vector<std::promise<absl::StatusOr<HostTensor>>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    c->GemvAsync("w", TensorRef::F32(xs[i].data(), {2, cols}), v1::DTYPE_F32,
                 [&done, i](absl::StatusOr<HostTensor> r) { done[i].set_value(std::move(r)); });
  }
  for (int i = 0; i < kCalls; ++i) {
    auto r = done[i].get_future().get();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    auto want = c->Gemv("w", TensorRef::F32(xs[i].data(), {2, cols}));
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(r->shape, (std::vector<int64_t>{2, rows}));
    // The same bytes: the CPU backend's result does not depend on the batch
    // the call shared with others.
    EXPECT_EQ(r->data, want->data) << "call " << i;
  }
  std::promise<absl::Status> missing;
  c->GemvAsync("nope", TensorRef::F32(xs[0].data(), {cols}), v1::DTYPE_F32,
               [&](absl::StatusOr<HostTensor> r) { missing.set_value(r.status()); });
  EXPECT_EQ(missing.get_future().get().code(), absl::StatusCode::kNotFound);
}

TEST_F(EchoTest, StreamMatchesByRequestIdAndFailsOnlyTheOversizedItem) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  auto session = c->StartEchoSession({.max_in_flight = 8});
  ASSERT_TRUE(session.ok()) << session.status();
  constexpr int kItems = 100;
  constexpr int kOversized = 37;
  std::mutex mu;
  std::map<int, uint64_t> id_of_item;     // as Push returned it
  std::map<int, uint64_t> replied_id;     // as the callback saw it
  std::map<int, absl::StatusOr<HostTensor>> results;
  std::vector<std::string> payloads;
  for (int i = 0; i < kItems; ++i) {
    payloads.push_back(i == kOversized ? RandomBytes(kLimit + 4, 5)
                                       : RandomBytes(4 * (1 + (i * 131) % 900), 200 + i));
  }
  for (int i = 0; i < kItems; ++i) {
    const uint64_t id = (*session)->Push(AsF32(payloads[i]), [&, i](uint64_t rid, absl::StatusOr<HostTensor> r) {
      std::lock_guard<std::mutex> l(mu);
      replied_id[i] = rid;
      results.emplace(i, std::move(r));
    });
    ASSERT_NE(id, 0u);
    std::lock_guard<std::mutex> l(mu);
    id_of_item[i] = id;
  }
  ASSERT_TRUE((*session)->Finish().ok());
  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(results.size(), static_cast<size_t>(kItems));
  EXPECT_EQ(replied_id, id_of_item);
  for (int i = 0; i < kItems; ++i) {
    const auto& r = results.at(i);
    if (i == kOversized) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
    } else {
      ASSERT_TRUE(r.ok()) << i << ": " << r.status();
      EXPECT_TRUE(r->data == payloads[i]) << "item " << i << " came back changed";
    }
  }
  EXPECT_EQ(RequestsTotal("EchoStream", "OK"), kItems - 1);
  EXPECT_EQ(RequestsTotal("EchoStream", "RESOURCE_EXHAUSTED"), 1);
}

TEST_F(EchoTest, TokenIsRequiredWhenSet) {
  ASSERT_NO_FATAL_FAILURE(StartServer(kToken));
  const std::string bytes = RandomBytes(256, 8);
  auto anonymous = Connect();
  ASSERT_NE(anonymous, nullptr);
  EXPECT_EQ(anonymous->Echo(AsF32(bytes)).status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = Connect("not-the-token");
  ASSERT_NE(wrong, nullptr);
  EXPECT_EQ(wrong->Echo(AsF32(bytes)).status().code(), absl::StatusCode::kUnauthenticated);
  // The stream is refused as a whole: its item fails with the stream's status.
  auto session = anonymous->StartEchoSession();
  ASSERT_TRUE(session.ok());
  std::promise<absl::Status> item;
  (*session)->Push(AsF32(bytes), [&](uint64_t, absl::StatusOr<HostTensor> r) { item.set_value(r.status()); });
  EXPECT_EQ(item.get_future().get().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*session)->Finish().code(), absl::StatusCode::kUnauthenticated);

  auto good = Connect(kToken);
  ASSERT_NE(good, nullptr);
  auto r = good->Echo(AsF32(bytes));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->data == bytes);
}

TEST_F(EchoTest, DrainingServerRefusesNewEchoes) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Echo(AsF32(RandomBytes(64, 9))).ok());
  server_->Shutdown(std::chrono::milliseconds(0));
  auto r = c->Echo(AsF32(RandomBytes(64, 9)));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

}  // namespace
}  // namespace plume
