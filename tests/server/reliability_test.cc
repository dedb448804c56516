// Reliability of the real gRPC server on 127.0.0.1:0:
//  - a table of malformed requests, each with its exact code, and the
//    server healthy afterwards;
//  - a delete racing 1,000 in-flight GEMVs (run under ASan by test.sh);
//  - requests whose deadline passes while queued are never computed;
//  - the per-connection stream limit.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <future>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/synchronization/notification.h"
#include "plume/client/client.h"
#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/test_server.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/metrics_reader.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

using namespace std::chrono_literals;
using Code = absl::StatusCode;

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Sum of a counter family's samples whose labels contain `label` ("" = all).
double CounterValue(prometheus::Registry& r, const std::string& name, const std::string& label = "") {
  return testing::ReadMetric(r, name, label).sum;
}

struct ServerSetup {
  int64_t budget = int64_t{64} << 20;
  int worker_threads = 4;
  int max_message_bytes = 1 << 20;
  int max_concurrent_streams = 256;
  int max_stream_in_flight = 64;
  int64_t max_batch = 0;  // the batcher's; 0: its default
};

class ReliabilityTest : public ::testing::Test {
 protected:
  void Start(const ServerSetup& setup = {}) {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.budget_bytes = setup.budget;
    eo.limits.max_vectors_per_request = 64;
    eo.limits.max_rows = 1 << 16;
    eo.limits.max_cols = 1 << 16;
    eo.limits.max_upload_bytes = 32 << 20;
    eo.work.worker_threads = setup.worker_threads;
    if (setup.max_batch > 0) eo.batching.max_batch = setup.max_batch;
    server::ServerOptions o;
    o.max_message_bytes = setup.max_message_bytes;
    o.max_concurrent_streams = setup.max_concurrent_streams;
    o.max_stream_in_flight = setup.max_stream_in_flight;
    auto t = testing::StartTestServer(eo, o);
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    metrics_ = engine_->metrics();
    store_ = engine_->matrix_store();
    client_ = MakeClient();
    stub_ = v1::MatrixService::NewStub(client_->channel());
  }
  void TearDown() override {
    stub_.reset();
    client_.reset();
    if (server_) server_->Shutdown(100ms);
  }
  std::unique_ptr<Client> MakeClient() {
    ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(server_->port());
    o.max_attempts = 1;
    o.max_message_bytes = 8 << 20;
    o.upload_chunk_bytes = 256 << 10;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok());
    return std::move(*c);
  }
  absl::Status Upload(const std::string& name, int64_t rows, int64_t cols, uint32_t seed) {
    std::vector<float> w = testing::RandomNormal(rows * cols, seed);
    return client_->UploadMatrix({.name = name}, TensorRef::F32(w.data(), {rows, cols})).status();
  }

  // Sends raw UploadMatrix messages; returns the call's code.
  Code RawUpload(const std::vector<v1::UploadMatrixRequest>& msgs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    v1::UploadMatrixResponse resp;
    auto w = stub_->UploadMatrix(&ctx, &resp);
    for (const auto& m : msgs) {
      if (!w->Write(m)) break;
    }
    w->WritesDone();
    return static_cast<Code>(w->Finish().error_code());
  }
  Code RawGemv(const v1::GemvRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    v1::GemvResponse resp;
    return static_cast<Code>(stub_->Gemv(&ctx, req, &resp).error_code());
  }

  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  core::Metrics* metrics_ = nullptr;
  core::MatrixStore* store_ = nullptr;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::MatrixService::Stub> stub_;
};

v1::UploadMatrixRequest Header(const std::string& name, int64_t rows, int64_t cols,
                               v1::DType src = v1::DTYPE_F32, v1::DType fmt = v1::DTYPE_E4M3,
                               int mode = v1::SCALE_MODE_ROW) {
  v1::UploadMatrixRequest r;
  auto* h = r.mutable_header();
  h->set_name(name);
  h->set_rows(rows);
  h->set_cols(cols);
  h->set_source_dtype(src);
  h->set_format(fmt);
  h->set_scale_mode(static_cast<v1::ScaleMode>(mode));
  return r;
}
v1::UploadMatrixRequest Data(size_t bytes, char fill = 1) {
  v1::UploadMatrixRequest r;
  r.set_data(std::string(bytes, fill));
  return r;
}
v1::UploadMatrixRequest Scales(std::vector<float> s) {
  v1::UploadMatrixRequest r;
  r.set_scales(Bytes(s));
  return r;
}
// A header plus exactly the right amount of F32 data (small values).
std::vector<v1::UploadMatrixRequest> GoodUpload(v1::UploadMatrixRequest header) {
  const auto& h = header.header();
  return {header, Data(static_cast<size_t>(h.rows() * h.cols() * 4), 0x3c)};
}
// Pre-packed E4M3 upload, 2 x 20 with ROW scales.
std::vector<v1::UploadMatrixRequest> Packed(const std::string& name, std::vector<float> scales) {
  return {Header(name, 2, 20, v1::DTYPE_E4M3, v1::DTYPE_E4M3), Data(2 * 32, 0x38),
          Scales(std::move(scales))};
}
v1::GemvRequest GemvReq(const std::string& matrix, std::vector<int64_t> shape, size_t bytes,
                        v1::DType dtype = v1::DTYPE_F32, v1::DType out = v1::DTYPE_F32) {
  v1::GemvRequest r;
  r.set_matrix(matrix);
  r.mutable_input()->set_dtype(dtype);
  for (int64_t d : shape) r.mutable_input()->add_shape(d);
  r.mutable_input()->set_data(std::string(bytes, '\x01'));
  r.set_output_dtype(out);
  return r;
}

TEST_F(ReliabilityTest, BadInputSweepEachGetsItsCodeAndTheServerStaysHealthy) {
  ASSERT_NO_FATAL_FAILURE(Start({.budget = 4 << 20}));
  ASSERT_TRUE(Upload("w", 8, 40, 1).ok());  // 8 x 40, for the GEMV cases
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t huge = int64_t{1} << 40;
  struct Case {
    std::string what;
    Code want;
    std::function<Code()> run;
  };
  auto up = [this](std::vector<v1::UploadMatrixRequest> m) { return [this, m] { return RawUpload(m); }; };
  auto gemv = [this](v1::GemvRequest r) { return [this, r] { return RawGemv(r); }; };
  v1::GemvRequest fp8_nan = GemvReq("w", {40}, 40, v1::DTYPE_E4M3);
  fp8_nan.set_input_scale(nan);
  v1::GemvRequest fp8_neg = GemvReq("w", {40}, 40, v1::DTYPE_E4M3);
  fp8_neg.set_input_scale(-2.0f);
  v1::GemvRequest fp8_inf = GemvReq("w", {40}, 40, v1::DTYPE_E4M3);
  fp8_inf.set_input_scale(inf);
  v1::UploadMatrixRequest no_payload;
  const Code IA = Code::kInvalidArgument;

  std::vector<Case> cases = {
      // names
      {"empty name", IA, up(GoodUpload(Header("", 2, 2)))},
      {"name with /", IA, up(GoodUpload(Header("a/b", 2, 2)))},
      {"name ..", IA, up(GoodUpload(Header("..", 2, 2)))},
      {"name .", IA, up(GoodUpload(Header(".", 2, 2)))},
      {"name ../etc/passwd", IA, up(GoodUpload(Header("../etc/passwd", 2, 2)))},
      {"name .hidden", IA, up(GoodUpload(Header(".hidden", 2, 2)))},
      {"name /abs", IA, up(GoodUpload(Header("/abs", 2, 2)))},
      {"name with space", IA, up(GoodUpload(Header("a b", 2, 2)))},
      {"name with NUL", IA, up(GoodUpload(Header(std::string("a\0b", 3), 2, 2)))},
      {"name with newline", IA, up(GoodUpload(Header("a\nb", 2, 2)))},
      {"name non-ASCII", IA, up(GoodUpload(Header("w\xc3\xbc", 2, 2)))},
      {"name 129 chars", IA, up(GoodUpload(Header(std::string(129, 'n'), 2, 2)))},
      // shapes
      {"rows 0", IA, up({Header("s", 0, 4)})},
      {"cols 0", IA, up({Header("s", 4, 0)})},
      {"rows -1", IA, up({Header("s", -1, 4)})},
      {"cols -7", IA, up({Header("s", 4, -7)})},
      {"rows 2^40", IA, up({Header("s", huge, 4)})},
      {"cols 2^40", IA, up({Header("s", 4, huge)})},
      {"rows INT64_MAX", IA, up({Header("s", std::numeric_limits<int64_t>::max(), 4)})},
      {"rows INT64_MIN", IA, up({Header("s", std::numeric_limits<int64_t>::min(), 4)})},
      // dtypes and modes
      {"format F32", IA, up({Header("s", 2, 2, v1::DTYPE_F32, v1::DTYPE_F32)})},
      {"format unknown 99", IA, up({Header("s", 2, 2, v1::DTYPE_F32, static_cast<v1::DType>(99))})},
      {"scale mode unknown 42", IA, up({Header("s", 2, 2, v1::DTYPE_F32, v1::DTYPE_E4M3, 42)})},
      {"scale mode negative", IA, up({Header("s", 2, 2, v1::DTYPE_F32, v1::DTYPE_E4M3, -3)})},
      {"source dtype unspecified", IA, up({Header("s", 2, 2, v1::DTYPE_UNSPECIFIED)})},
      {"source dtype unknown 77", IA, up({Header("s", 2, 2, static_cast<v1::DType>(77))})},
      {"pre-packed E5M2 into E4M3", IA, up({Header("s", 2, 2, v1::DTYPE_E5M2, v1::DTYPE_E4M3)})},
      // stream shape
      {"empty upload stream", IA, up({})},
      {"data before header", IA, up({Data(16)})},
      {"scales before header", IA, up({Scales({1.0f})})},
      {"message without payload", IA, up({no_payload})},
      {"two headers", IA, up({Header("s", 2, 2), Header("s", 2, 2)})},
      {"data too long", IA, up({Header("s", 2, 2), Data(17)})},
      {"data too short", IA, up({Header("s", 2, 2), Data(15)})},
      {"header only", IA, up({Header("s", 2, 2)})},
      {"scales on a quantizing upload", IA, up({Header("s", 2, 2), Data(16), Scales({1.0f})})},
      // pre-packed scales
      {"pre-packed NaN scale", IA, up(Packed("p", {1.0f, nan}))},
      {"pre-packed inf scale", IA, up(Packed("p", {inf, 1.0f}))},
      {"pre-packed negative scale", IA, up(Packed("p", {1.0f, -1.0f}))},
      {"pre-packed zero scale", IA, up(Packed("p", {0.0f, 1.0f}))},
      {"pre-packed too few scales", IA, up(Packed("p", {1.0f}))},
      {"pre-packed too many scales", IA, up(Packed("p", {1.0f, 1.0f, 1.0f}))},
      // limits
      {"upload over --max_upload_bytes", Code::kResourceExhausted, up({Header("big", 4096, 4096)})},
      {"upload over the memory budget", Code::kResourceExhausted, up({Header("big", 2048, 2048)})},
      {"message over --max_message_bytes", Code::kResourceExhausted,
       up({Header("m", 1024, 1024), Data(2 << 20)})},
      {"duplicate upload", Code::kAlreadyExists, up(GoodUpload(Header("w", 8, 40)))},
      // GEMV
      {"gemv unknown matrix", Code::kNotFound, gemv(GemvReq("nope", {40}, 160))},
      {"gemv empty matrix name", IA, gemv(GemvReq("", {40}, 160))},
      {"gemv matrix name ../w", IA, gemv(GemvReq("../w", {40}, 160))},
      {"gemv input dtype unspecified", IA, gemv(GemvReq("w", {40}, 160, v1::DTYPE_UNSPECIFIED))},
      {"gemv input dtype unknown 12", IA, gemv(GemvReq("w", {40}, 160, static_cast<v1::DType>(12)))},
      {"gemv rank 0", IA, gemv(GemvReq("w", {}, 160))},
      {"gemv rank 3", IA, gemv(GemvReq("w", {1, 1, 40}, 160))},
      {"gemv negative dim", IA, gemv(GemvReq("w", {-1, 40}, 160))},
      {"gemv zero dim", IA, gemv(GemvReq("w", {0, 40}, 0))},
      {"gemv wrong cols", IA, gemv(GemvReq("w", {41}, 164))},
      {"gemv data shorter than shape", IA, gemv(GemvReq("w", {40}, 159))},
      {"gemv data longer than shape", IA, gemv(GemvReq("w", {40}, 161))},
      {"gemv batch over --max_vectors_per_request", IA, gemv(GemvReq("w", {65, 40}, 65 * 160))},
      {"gemv batch 2^40", IA, gemv(GemvReq("w", {huge, 40}, 160))},
      {"gemv FP8 input NaN scale", IA, gemv(fp8_nan)},
      {"gemv FP8 input negative scale", IA, gemv(fp8_neg)},
      {"gemv FP8 input inf scale", IA, gemv(fp8_inf)},
      {"gemv output dtype E4M3", IA, gemv(GemvReq("w", {40}, 160, v1::DTYPE_F32, v1::DTYPE_E4M3))},
      {"gemv output dtype unknown 99", IA,
       gemv(GemvReq("w", {40}, 160, v1::DTYPE_F32, static_cast<v1::DType>(99)))},
      // lookups
      {"get unknown", Code::kNotFound, [this] { return client_->GetMatrix("nope").status().code(); }},
      {"get ..", IA, [this] { return client_->GetMatrix("..").status().code(); }},
      {"delete unknown", Code::kNotFound, [this] { return client_->DeleteMatrix("nope").code(); }},
      {"delete a/../b", IA, [this] { return client_->DeleteMatrix("a/../b").code(); }},
  };
  ASSERT_GE(cases.size(), 50u);
  int passed = 0;
  for (const auto& c : cases) {
    const Code got = c.run();
    EXPECT_EQ(got, c.want) << c.what << ": got " << absl::StatusCodeToString(got);
    passed += got == c.want;
  }
  // None of them left anything behind, and the server still serves.
  auto list = client_->ListMatrices();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ(store_->used_bytes(), (*list)[0].resident_bytes());
  auto health = client_->CheckHealth();
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(*health, HealthStatus::kServing);
  std::vector<float> x = testing::RandomNormal(40, 3);
  EXPECT_TRUE(client_->Gemv("w", TensorRef::F32(x.data(), {40})).ok());
  ASSERT_TRUE(Upload("after", 3, 5, 4).ok());
  std::cout << "bad-input sweep: " << passed << "/" << cases.size()
            << " malformed requests got their exact code; server healthy afterwards\n";
}

// Deletes race 1,000 GEMVs in flight (4 streams x 250): every one finishes
// with the right answer or NOT_FOUND, nothing else; ASan (test.sh's second
// pass) sees no use-after-free.
TEST_F(ReliabilityTest, DeleteDuringAThousandInFlightGemvs) {
  // One vector per backend call: batched 64 at a time, the 1016 could all be
  // done before the delete lands on a loaded machine, and nothing would race.
  ASSERT_NO_FATAL_FAILURE(
      Start({.budget = 256 << 20, .max_stream_in_flight = 256, .max_batch = 1}));
  // Heavy enough (4 MiB of weights each) that the delete lands while most are queued.
  const int64_t rows = 4096, cols = 1024;
  std::vector<float> w = testing::RandomNormal(rows * cols, 21);
  std::vector<float> x = testing::RandomNormal(cols, 22);
  ASSERT_TRUE(client_->UploadMatrix({.name = "victim"}, TensorRef::F32(w.data(), {rows, cols})).ok());
  auto want = client_->Gemv("victim", TensorRef::F32(x.data(), {cols}));
  ASSERT_TRUE(want.ok());

  std::atomic<int> ok{0}, not_found{0}, other{0}, wrong{0};
  std::vector<std::thread> threads;
  std::atomic<int> pushed{0};
  std::atomic<bool> deleted{false};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      auto session = client_->StartGemvSession("victim", {.max_in_flight = 250});
      ASSERT_TRUE(session.ok());
      std::vector<std::future<absl::StatusOr<GemvResult>>> fs;
      for (int i = 0; i < 250; ++i) {
        // Half before the delete (most still in flight when it runs: the
        // delete waits on the work queue behind one batch at most), half
        // after it was answered.
        if (i == 125) {
          while (!deleted) std::this_thread::yield();
        }
        fs.push_back((*session)->Push(TensorRef::F32(x.data(), {cols})));
        pushed++;
      }
      for (auto& f : fs) {
        auto r = f.get();
        if (r.ok()) {
          ok++;
          if (r->output.data != want->data) wrong++;
        } else if (r.status().code() == Code::kNotFound) {
          not_found++;
        } else {
          other++;
          ADD_FAILURE() << r.status();
        }
      }
      EXPECT_TRUE((*session)->Finish().ok());
    });
  }
  // Unary calls in flight too.
  std::vector<std::future<absl::StatusOr<HostTensor>>> unary;
  for (int i = 0; i < 16; ++i) {
    unary.push_back(std::async(std::launch::async, [&] {
      return client_->Gemv("victim", TensorRef::F32(x.data(), {cols}));
    }));
  }
  // Delete once the first halves are pushed.
  while (pushed < 500) std::this_thread::yield();
  const absl::Status del = client_->DeleteMatrix("victim");
  deleted = true;
  ASSERT_TRUE(del.ok()) << del;
  for (auto& t : threads) t.join();
  for (auto& f : unary) {
    auto r = f.get();
    if (r.ok()) {
      ok++;
      if (r->data != want->data) wrong++;
    } else if (r.status().code() == Code::kNotFound) {
      not_found++;
    } else {
      other++;
    }
  }
  EXPECT_EQ(ok + not_found, 1016);
  EXPECT_EQ(other, 0);
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(ok, 0);
  EXPECT_GT(not_found, 0);  // the delete really raced the requests
  EXPECT_EQ(store_->used_bytes(), 0);  // the matrix was freed once the last user let go
  ASSERT_TRUE(client_->UploadMatrix({.name = "victim"}, TensorRef::F32(w.data(), {rows, cols})).ok());
  std::cout << "use-after-free: 1016 GEMVs in flight during a delete: " << ok << " OK, "
            << not_found << " NOT_FOUND, " << other << " other\n";
}

// The one worker is held by a task the test controls while slow GEMVs, then
// 20 calls with a 1 s deadline, queue behind it (plume_queue_depth shows
// each one arrive); once the 20 clients got DEADLINE_EXCEEDED the worker is
// let go. The slow calls (>= 200 ms of work ahead of the 20) run; the 20 are
// never computed: plume_vectors_total counts only the slow calls,
// plume_requests_dropped_total counts the 20.
TEST_F(ReliabilityTest, ExpiredRequestsNeverRun) {
  ASSERT_NO_FATAL_FAILURE(
      Start({.budget = 256 << 20, .worker_threads = 1, .max_message_bytes = 8 << 20}));
  const int64_t rows = 4096, cols = 1024;
  ASSERT_TRUE(Upload("big", rows, cols, 5).ok());
  // Enough batch-64 GEMVs for >= 200 ms of work: the server's deadline of a
  // doomed call can be a few ms later than its client's (reactors.h), and
  // all of it passes while the slow calls run.
  const int64_t batch = 64;
  std::vector<float> x = testing::RandomNormal(batch * cols, 6);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(client_->Gemv("big", TensorRef::F32(x.data(), {batch, cols})).ok());
  const double one_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int n_slow = std::clamp(static_cast<int>(std::ceil(0.2 / one_s)), 2, 200);
  auto& reg = *metrics_->registry();
  const double vectors0 = CounterValue(reg, "plume_vectors_total");
  const double dropped0 = CounterValue(reg, "plume_requests_dropped_total");
  auto depth = [&] { return CounterValue(reg, "plume_queue_depth"); };
  ASSERT_EQ(depth(), 0);

  // The worker's gate, opened at the latest when the test ends (the server
  // drains its queue on shutdown).
  auto gate = std::make_shared<absl::Notification>();
  struct Opener {
    std::shared_ptr<absl::Notification> n;
    ~Opener() {
      if (!n->HasBeenNotified()) n->Notify();
    }
  } opener{gate};
  ASSERT_TRUE(engine_->work_queue()->Submit([gate] { gate->WaitForNotification(); }));

  std::vector<std::future<absl::StatusOr<HostTensor>>> slow;
  for (int i = 0; i < n_slow; ++i) {
    slow.push_back(std::async(std::launch::async, [&] {
      return client_->Gemv("big", TensorRef::F32(x.data(), {batch, cols}), v1::DTYPE_F32,
                           CallOptions{.timeout = 120s});
    }));
  }
  // Every slow call in the queue before the doomed ones are sent.
  ASSERT_TRUE(testing::WaitUntil("the slow calls to queue", [&] { return depth() == n_slow; }))
      << depth() << " of " << n_slow << " queued";
  std::vector<float> one = testing::RandomNormal(cols, 7);
  std::vector<std::future<absl::StatusOr<HostTensor>>> doomed;
  for (int i = 0; i < 20; ++i) {
    doomed.push_back(std::async(std::launch::async, [&] {
      return client_->Gemv("big", TensorRef::F32(one.data(), {cols}), v1::DTYPE_F32,
                           CallOptions{.timeout = 1s});
    }));
  }
  // Each doomed call reached the server (one whose deadline passed on the
  // way would never be seen, so never counted as dropped).
  ASSERT_TRUE(testing::WaitUntil("the doomed calls to queue",
                                 [&] { return depth() == n_slow + 20; }))
      << depth() - n_slow << " of 20 queued";
  for (auto& f : doomed) EXPECT_EQ(f.get().status().code(), Code::kDeadlineExceeded);
  gate->Notify();
  for (auto& f : slow) ASSERT_TRUE(f.get().ok());
  // The worker reaches (and drops) the 20 after the slow calls.
  double dropped = 0;
  EXPECT_TRUE(testing::WaitUntil("the doomed calls to be dropped", [&] {
    dropped = CounterValue(reg, "plume_requests_dropped_total") - dropped0;
    return dropped >= 20;
  })) << dropped << " dropped";
  EXPECT_EQ(dropped, 20);
  EXPECT_EQ(depth(), 0);
  // Only the slow ones ran.
  EXPECT_EQ(CounterValue(reg, "plume_vectors_total") - vectors0, n_slow * batch);
  std::cout << "deadlines: 20 requests expired in the queue behind " << n_slow
            << " slow calls, " << dropped << " dropped, "
            << (CounterValue(reg, "plume_vectors_total") - vectors0 - n_slow * batch)
            << " of their vectors computed\n";
}

// --max_concurrent_streams: a third call on a connection that holds two open
// streams waits for a free stream (here: until its deadline).
TEST_F(ReliabilityTest, ConcurrentStreamsPerConnectionAreLimited) {
  ASSERT_NO_FATAL_FAILURE(Start({.max_concurrent_streams = 2}));
  ASSERT_TRUE(Upload("w", 4, 16, 8).ok());
  std::vector<float> x = testing::RandomNormal(16, 9);
  auto s1 = client_->StartGemvSession("w");
  auto s2 = client_->StartGemvSession("w");
  ASSERT_TRUE(s1.ok() && s2.ok());
  ASSERT_TRUE((*s1)->Push(TensorRef::F32(x.data(), {16})).get().ok());
  ASSERT_TRUE((*s2)->Push(TensorRef::F32(x.data(), {16})).get().ok());
  EXPECT_EQ(client_->ListMatrices(CallOptions{.timeout = 300ms}).status().code(),
            Code::kDeadlineExceeded);
  ASSERT_TRUE((*s1)->Finish().ok());
  EXPECT_TRUE(client_->ListMatrices(CallOptions{.timeout = 10s}).ok());
  ASSERT_TRUE((*s2)->Finish().ok());
}

}  // namespace
}  // namespace plume
