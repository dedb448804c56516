// The Batcher (server/core/batcher.h) on the CPU backend: batch formation
// (max_batch, the delay bound, compatible arguments), the queue limit, drops
// of expired and cancelled requests before the backend, and results routed
// to the right caller under concurrency. An injected clock and Poll() make
// formation deterministic; a counting backend shows what reached it.
#include "server/core/batcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/core/attention_service.h"
#include "server/core/cpu_backend.h"
#include "server/core/kv_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/metrics_reader.h"

namespace plume::core {
namespace {

using namespace std::chrono_literals;

// A CPU backend that records every GEMV and attention call it gets.
class CountingBackend final : public Backend {
 public:
  struct Call {
    int64_t batch;
    DType x_dtype, y_dtype;
  };

  std::string_view name() const override { return "counting-cpu"; }
  int64_t memory_capacity_bytes() const override { return int64_t{1} << 30; }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape, const void* src,
                                                          DType src_dtype) override {
    return cpu_.Quantize(shape, src, src_dtype);
  }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                            const uint32_t* words,
                                                            const float* scales) override {
    return cpu_.FromPacked(shape, words, scales);
  }
  absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) override {
    {
      absl::MutexLock lock(&mu_);
      gemv_calls_.push_back({args.batch, args.x_dtype, args.y_dtype});
    }
    return cpu_.Gemv(w, args);
  }
  absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKv(const KvShape& shape) override {
    return cpu_.CreateKv(shape);
  }
  absl::Status AppendKv(BackendKvCache& cache, const KvAppendArgs& args) override {
    return cpu_.AppendKv(cache, args);
  }
  absl::Status Attention(const BackendKvCache& cache, const AttentionArgs& args) override {
    {
      absl::MutexLock lock(&mu_);
      attention_batches_.push_back(args.batch);
    }
    return cpu_.Attention(cache, args);
  }

  std::vector<Call> gemv_calls() const {
    absl::MutexLock lock(&mu_);
    return gemv_calls_;
  }
  std::vector<int64_t> attention_batches() const {
    absl::MutexLock lock(&mu_);
    return attention_batches_;
  }

 private:
  CpuBackend cpu_{2};
  mutable absl::Mutex mu_;
  std::vector<Call> gemv_calls_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> attention_batches_ ABSL_GUARDED_BY(mu_);
};

using testing::ReadMetric;

// Counts finished requests and waits for them.
class Completions {
 public:
  void Done(const absl::Status& s) {
    absl::MutexLock lock(&mu_);
    ++done_;
    statuses_.push_back(s);
  }
  void WaitFor(int n) {
    struct Arg {
      const int* done;
      int n;
    } arg{&done_, n};
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](Arg* a) { return *a->done >= a->n; }, &arg));
  }
  int done() const {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  std::vector<absl::Status> statuses() const {
    absl::MutexLock lock(&mu_);
    return statuses_;
  }

 private:
  mutable absl::Mutex mu_;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::Status> statuses_ ABSL_GUARDED_BY(mu_);
};

// One GEMV request and its response, alive until its done callback ran.
struct Call {
  v1::GemvRequest req;
  v1::GemvResponse resp;
  std::vector<float> x;
  int64_t batch = 1;
};

class BatcherTest : public ::testing::Test {
 protected:
  static constexpr int64_t kRows = 48, kCols = 72;

  // A batcher over a matrix "w" of kRows x kCols; with `fake_clock`, time
  // stands still until the test moves it and batches close on Poll().
  void Start(BatchingOptions defaults, bool fake_clock, int workers = 2,
             BatchingOptions per_matrix = {0, 0us, 0}) {
    queue_ = std::make_unique<WorkQueue>(workers, 1 << 16);
    Batcher::Options o;
    o.defaults = defaults;
    if (fake_clock) {
      o.now = [this] { return BatchClock::time_point(std::chrono::microseconds(now_us_.load())); };
      o.timer_thread = false;
    }
    batcher_ = std::make_unique<Batcher>(&backend_, queue_.get(), &metrics_, o);
    store_ = std::make_unique<MatrixStore>(int64_t{1} << 30, &metrics_);
    Limits limits;
    service_ = std::make_unique<MatrixService>(&backend_, store_.get(), &metrics_, limits);
    w_ = testing::RandomNormal(kRows * kCols, 7);
    v1::MatrixHeader h;
    h.set_name("w");
    h.set_rows(kRows);
    h.set_cols(kCols);
    h.set_source_dtype(v1::DTYPE_F32);
    h.mutable_batching()->set_max_batch(per_matrix.max_batch);
    h.mutable_batching()->set_max_queue_delay_us(per_matrix.max_queue_delay.count());
    h.mutable_batching()->set_max_queue_size(per_matrix.max_queue_size);
    auto up = service_->BeginUpload(h);
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE((*up)->AddData({reinterpret_cast<const char*>(w_.data()), w_.size() * 4}).ok());
    ASSERT_TRUE((*up)->Finish().ok());
    expected_ = std::make_unique<testing::ExpectedGemv>(w_, kRows, kCols, Fp8Format::kE4M3,
                                                        ScaleMode::kRow);
  }

  void TearDown() override {
    batcher_.reset();  // launches what waits, waits for its batches
    queue_.reset();
  }

  std::unique_ptr<Call> MakeCall(int64_t batch, uint32_t seed,
                                 v1::DType out = v1::DTYPE_F32) {
    auto c = std::make_unique<Call>();
    c->batch = batch;
    c->x = testing::RandomNormal(batch * kCols, seed);
    c->req.set_matrix("w");
    c->req.set_request_id(seed);
    c->req.set_output_dtype(out);
    v1::Tensor* in = c->req.mutable_input();
    in->set_dtype(v1::DTYPE_F32);
    in->add_shape(batch);
    in->add_shape(kCols);
    in->set_data(c->x.data(), c->x.size() * 4);
    return c;
  }

  void Submit(Call* c, Completions* done, RequestLife life = {}) {
    service_->GemvAsync(batcher_.get(), c->req, &c->resp, std::move(life),
                        [done](const absl::Status& s) { done->Done(s); });
  }

  // The result of `c` against the reference; infinity when it has none.
  double RelErr(const Call& c) const {
    const std::string& y = c.resp.output().data();
    if (y.size() != size_t(c.batch * kRows * 4)) return INFINITY;
    std::vector<float> yf(size_t(c.batch * kRows));
    std::memcpy(yf.data(), y.data(), y.size());
    return expected_->RelErr(c.x, c.batch, yf);
  }

  void Advance(std::chrono::microseconds d) { now_us_ += d.count(); }

  std::atomic<int64_t> now_us_{1'000'000};
  CountingBackend backend_;
  Metrics metrics_;
  std::unique_ptr<WorkQueue> queue_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<MatrixStore> store_;
  std::unique_ptr<MatrixService> service_;
  std::vector<float> w_;
  std::unique_ptr<testing::ExpectedGemv> expected_;
};

TEST_F(BatcherTest, MaxBatchIsRespected) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  // 150 single vectors with the clock standing still: two full batches of 64
  // close on their own; 22 wait for the delay.
  for (int i = 0; i < 150; ++i) {
    calls.push_back(MakeCall(1, 100 + i));
    Submit(calls.back().get(), &done);
  }
  done.WaitFor(128);
  EXPECT_EQ(batcher_->waiting(), 22);
  auto after_full = backend_.gemv_calls();
  ASSERT_EQ(after_full.size(), 2u);
  EXPECT_EQ(after_full[0].batch, 64);
  EXPECT_EQ(after_full[1].batch, 64);
  // Requests of 3 vectors: a batch never exceeds 64 vectors (21 x 3 = 63).
  for (int i = 0; i < 30; ++i) {
    calls.push_back(MakeCall(3, 300 + i));
    Submit(calls.back().get(), &done);
  }
  // A single request larger than max_batch runs alone.
  calls.push_back(MakeCall(100, 999));
  Submit(calls.back().get(), &done);
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(int(calls.size()));
  int64_t vectors = 0;
  for (const auto& call : backend_.gemv_calls()) {
    vectors += call.batch;
    if (call.batch != 100) EXPECT_LE(call.batch, 64);
  }
  EXPECT_EQ(vectors, 150 + 90 + 100);
  for (const auto& c : calls) EXPECT_LE(RelErr(*c), 1e-5) << c->req.request_id();
  for (const auto& s : done.statuses()) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_batch_size").count,
            double(backend_.gemv_calls().size()));
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_queue_duration_seconds").count, double(calls.size()));
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_queue_depth").sum, 0);
}

TEST_F(BatcherTest, DelayBoundWithInjectedClock) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  Completions done;
  auto a = MakeCall(1, 1);
  const BatchClock::time_point t0 = BatchClock::time_point(std::chrono::microseconds(now_us_.load()));
  Submit(a.get(), &done);
  Advance(150us);
  auto b = MakeCall(2, 2);
  Submit(b.get(), &done);
  // The batch is due 200 us after its FIRST request, not its last.
  EXPECT_EQ(batcher_->Poll(), t0 + 200us);
  Advance(49us);
  EXPECT_EQ(batcher_->Poll(), t0 + 200us);
  EXPECT_EQ(batcher_->waiting(), 2);
  EXPECT_TRUE(backend_.gemv_calls().empty());
  Advance(1us);
  EXPECT_EQ(batcher_->Poll(), BatchClock::time_point::max());
  done.WaitFor(2);
  ASSERT_EQ(backend_.gemv_calls().size(), 1u);
  EXPECT_EQ(backend_.gemv_calls()[0].batch, 3);
  EXPECT_LE(RelErr(*a), 1e-5);
  EXPECT_LE(RelErr(*b), 1e-5);
}

TEST_F(BatcherTest, DelayBoundInRealTime) {
  // The timer thread closes a lone request's batch after max_queue_delay:
  // never before it, and not long after (a generous bound for loaded CI).
  Start({64, 5ms, 1024}, /*fake_clock=*/false);
  for (int i = 0; i < 5; ++i) {
    Completions done;
    auto c = MakeCall(1, 10 + i);
    const auto t0 = std::chrono::steady_clock::now();
    Submit(c.get(), &done);
    done.WaitFor(1);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 5ms);
    EXPECT_LT(waited, 500ms);
    EXPECT_LE(RelErr(*c), 1e-5);
  }
  EXPECT_EQ(backend_.gemv_calls().size(), 5u);
}

TEST_F(BatcherTest, PerMatrixOptionsOverrideTheDefaults) {
  Start({64, 200us, 1024}, /*fake_clock=*/true, 2, {4, 0us, 0});
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 8; ++i) {
    calls.push_back(MakeCall(1, 40 + i));
    Submit(calls.back().get(), &done);
  }
  done.WaitFor(8);  // two batches of 4 closed without any Poll
  ASSERT_EQ(backend_.gemv_calls().size(), 2u);
  EXPECT_EQ(backend_.gemv_calls()[0].batch, 4);
}

TEST_F(BatcherTest, IncompatibleArgumentsDoNotShareABatch) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(MakeCall(1, 50 + i, i % 2 ? v1::DTYPE_F16 : v1::DTYPE_F32));
    Submit(calls.back().get(), &done);
  }
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(6);
  auto got = backend_.gemv_calls();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].batch, 3);
  EXPECT_EQ(got[1].batch, 3);
  EXPECT_NE(got[0].y_dtype, got[1].y_dtype);
  for (const auto& c : calls) {
    EXPECT_EQ(c->resp.output().data().size(),
              size_t(kRows * (c->req.output_dtype() == v1::DTYPE_F16 ? 2 : 4)));
  }
}

TEST_F(BatcherTest, FullQueueIsResourceExhausted) {
  Start({64, 200us, 4}, /*fake_clock=*/true);
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 5; ++i) {
    calls.push_back(MakeCall(1, 60 + i));
    Submit(calls.back().get(), &done);
  }
  // The fifth is refused at once, the four others still wait.
  ASSERT_EQ(done.done(), 1);
  const absl::Status refused = done.statuses()[0];
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("matrix \"w\""), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("max_queue_size 4"), std::string::npos) << refused;
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_requests_dropped_total", "queue_full").sum, 1);
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_queue_depth").sum, 4);
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(5);
  ASSERT_EQ(backend_.gemv_calls().size(), 1u);
  EXPECT_EQ(backend_.gemv_calls()[0].batch, 4);
  // Once it drained, the queue takes requests again.
  calls.push_back(MakeCall(1, 70));
  Submit(calls.back().get(), &done);
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(6);
  EXPECT_TRUE(done.statuses()[5].ok()) << done.statuses()[5];
}

TEST_F(BatcherTest, ExpiredAndCancelledRequestsNeverReachTheBackend) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  Completions done;
  auto expired = MakeCall(1, 80);
  auto cancelled = MakeCall(1, 81);
  auto live = MakeCall(2, 82);
  const BatchClock::time_point now = BatchClock::time_point(std::chrono::microseconds(now_us_.load()));
  // Its deadline passes while it waits for the batch.
  Submit(expired.get(), &done, RequestLife{now + 100us, nullptr});
  std::atomic<bool> gone{false};
  Submit(cancelled.get(), &done, RequestLife{BatchClock::time_point::max(), [&gone] { return gone.load(); }});
  Submit(live.get(), &done, RequestLife{now + 1s, [] { return false; }});
  gone = true;  // the caller leaves after queueing
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(3);
  ASSERT_EQ(backend_.gemv_calls().size(), 1u);
  EXPECT_EQ(backend_.gemv_calls()[0].batch, 2);  // the live request only
  EXPECT_LE(RelErr(*live), 1e-5);
  EXPECT_FALSE(expired->resp.has_output());
  EXPECT_FALSE(cancelled->resp.has_output());
  int deadline = 0, cancel = 0;
  for (const auto& s : done.statuses()) {
    deadline += s.code() == absl::StatusCode::kDeadlineExceeded;
    cancel += s.code() == absl::StatusCode::kCancelled;
  }
  EXPECT_EQ(deadline, 1);
  EXPECT_EQ(cancel, 1);
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_requests_dropped_total", "deadline").sum, 1);
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_requests_dropped_total", "cancelled").sum, 1);

  // A batch of nothing but dropped requests makes no backend call at all.
  auto late = MakeCall(1, 83);
  Submit(late.get(), &done, RequestLife{now, nullptr});
  Advance(200us);
  batcher_->Poll();
  done.WaitFor(4);
  EXPECT_EQ(backend_.gemv_calls().size(), 1u);
}

TEST_F(BatcherTest, ResultsGoToTheirCallersUnderConcurrency) {
  // Real clock, timer thread, 4 workers: 8 threads submit 150 requests each
  // of 1..4 random vectors; every result is checked against the reference.
  Start({16, 300us, 4096}, /*fake_clock=*/false, 4);
  constexpr int kThreads = 8, kPerThread = 150;
  std::vector<std::vector<std::unique_ptr<Call>>> calls(kThreads);
  Completions done;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      for (int i = 0; i < kPerThread; ++i) {
        calls[size_t(t)].push_back(MakeCall(1 + int64_t(rng() % 4), uint32_t(t * 10000 + i)));
        Submit(calls[size_t(t)].back().get(), &done);
        if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 400));
      }
    });
  }
  for (auto& th : threads) th.join();
  done.WaitFor(kThreads * kPerThread);
  int64_t max_batch = 0, vectors = 0, expected_vectors = 0;
  for (const auto& call : backend_.gemv_calls()) {
    max_batch = std::max(max_batch, call.batch);
    vectors += call.batch;
  }
  for (const auto& per_thread : calls) {
    for (const auto& c : per_thread) {
      expected_vectors += c->batch;
      ASSERT_EQ(c->resp.request_id(), c->req.request_id());
      ASSERT_LE(RelErr(*c), 1e-5) << "request " << c->req.request_id();
    }
  }
  EXPECT_EQ(vectors, expected_vectors);
  EXPECT_GT(max_batch, 1);  // batching happened
  EXPECT_LE(max_batch, 16);
  std::cout << "concurrency: " << kThreads * kPerThread << " requests, " << vectors
            << " vectors in " << backend_.gemv_calls().size() << " backend calls (mean batch "
            << double(vectors) / double(backend_.gemv_calls().size()) << ")\n";
}

// Attention requests on a cache "kv" (2 kv heads, 40 tokens, head_dim 32)
// with queries of 4 heads.
class AttentionBatchTest : public BatcherTest {
 protected:
  static constexpr int64_t kKvHeads = 2, kSeq = 40, kDim = 32, kHeads = 4;

  struct ACall {
    v1::AttentionRequest req;
    v1::AttentionResponse resp;
  };

  void StartAttention(const Limits& limits) {
    Start({64, 200us, 1024}, /*fake_clock=*/true);
    kv_store_ = std::make_unique<KvStore>(store_->budget(), &metrics_);
    attention_ = std::make_unique<AttentionService>(&backend_, kv_store_.get(), &metrics_, limits);
    const auto k = testing::RandomNormal(kKvHeads * kSeq * kDim, 11, 0.3f);
    const auto v = testing::RandomNormal(kKvHeads * kSeq * kDim, 12);
    v1::KVHeader h;
    h.set_name("kv");
    h.set_kv_heads(kKvHeads);
    h.set_seq(kSeq);
    h.set_head_dim(kDim);
    h.set_source_dtype(v1::DTYPE_F32);
    auto up = attention_->BeginUpload(h);
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE((*up)->AddK({reinterpret_cast<const char*>(k.data()), k.size() * 4}).ok());
    ASSERT_TRUE((*up)->AddV({reinterpret_cast<const char*>(v.data()), v.size() * 4}).ok());
    ASSERT_TRUE((*up)->Finish().ok());
  }

  std::unique_ptr<ACall> MakeAttention(int64_t batch, int64_t q_len, uint32_t seed) {
    auto c = std::make_unique<ACall>();
    const auto q = testing::RandomNormal(batch * kHeads * q_len * kDim, seed, 0.3f);
    c->req.set_cache("kv");
    c->req.set_request_id(seed);
    c->req.set_causal(true);
    v1::Tensor* t = c->req.mutable_query();
    t->set_dtype(v1::DTYPE_F32);
    for (int64_t d : {batch, kHeads, q_len, kDim}) t->add_shape(d);
    t->set_data(q.data(), q.size() * 4);
    return c;
  }

  // Queues every call, closes the batches and waits for them.
  void RunAll(const std::vector<std::unique_ptr<ACall>>& calls) {
    Completions done;
    for (auto& c : calls) {
      attention_->AttentionAsync(batcher_.get(), c->req, &c->resp, {},
                                 [&done](const absl::Status& s) { done.Done(s); });
    }
    Advance(200us);
    batcher_->Poll();
    done.WaitFor(int(calls.size()));
    for (const auto& s : done.statuses()) EXPECT_TRUE(s.ok()) << s;
  }

  void TearDown() override {
    BatcherTest::TearDown();  // batches finish before the cache goes
    attention_.reset();
    kv_store_.reset();
  }

  std::unique_ptr<KvStore> kv_store_;
  std::unique_ptr<AttentionService> attention_;
};

TEST_F(AttentionBatchTest, CompatibleRequestsShareOneLaunch) {
  ASSERT_NO_FATAL_FAILURE(StartAttention(Limits{}));
  // Requests of 1, 2 and 1 batch elements, and one with another q_len.
  std::vector<std::unique_ptr<ACall>> calls;
  calls.push_back(MakeAttention(1, 3, 20));
  calls.push_back(MakeAttention(2, 3, 21));
  calls.push_back(MakeAttention(1, 3, 22));
  calls.push_back(MakeAttention(1, 1, 23));
  RunAll(calls);
  auto launches = backend_.attention_batches();
  std::sort(launches.begin(), launches.end());
  ASSERT_EQ(launches, (std::vector<int64_t>{1, 4}));  // 1 + 2 + 1 together; q_len 1 apart
  for (const auto& c : calls) {
    v1::AttentionResponse alone;
    ASSERT_TRUE(attention_->Attention(c->req, &alone).ok());
    EXPECT_EQ(c->resp.seq(), kSeq);
    EXPECT_EQ(c->resp.request_id(), c->req.request_id());
    ASSERT_EQ(c->resp.output().data().size(), alone.output().data().size());
    const auto* got = reinterpret_cast<const float*>(c->resp.output().data().data());
    const auto* want = reinterpret_cast<const float*>(alone.output().data().data());
    double err = 0, norm = 0;
    for (size_t i = 0; i < alone.output().data().size() / 4; ++i) {
      err += (got[i] - want[i]) * double(got[i] - want[i]);
      norm += double(want[i]) * want[i];
    }
    EXPECT_GT(norm, 0);
    EXPECT_LE(std::sqrt(err / norm), 1e-6) << "request " << c->req.request_id();
  }
}

TEST_F(AttentionBatchTest, ABatchStaysWithinMaxAttentionRows) {
  Limits limits;
  limits.max_attention_rows = 24;  // 2 batch elements of 4 heads x 3 queries
  ASSERT_NO_FATAL_FAILURE(StartAttention(limits));
  std::vector<std::unique_ptr<ACall>> calls;
  for (int i = 0; i < 5; ++i) calls.push_back(MakeAttention(1, 3, 30 + i));
  RunAll(calls);
  auto launches = backend_.attention_batches();
  std::sort(launches.begin(), launches.end());
  EXPECT_EQ(launches, (std::vector<int64_t>{1, 2, 2}));
}

TEST_F(BatcherTest, ADeletedMatrixIsFreedBeforeItsLastCallerHearsBack) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  auto c = MakeCall(2, 95);
  absl::Notification done;
  int64_t used_when_done = -1;
  absl::Status status;
  service_->GemvAsync(batcher_.get(), c->req, &c->resp, {}, [&](const absl::Status& s) {
    status = s;
    used_when_done = store_->used_bytes();
    done.Notify();
  });
  ASSERT_TRUE(store_->Delete("w").ok());
  EXPECT_GT(store_->used_bytes(), 0);  // the waiting request holds it
  Advance(200us);
  batcher_->Poll();
  done.WaitForNotification();
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_LE(RelErr(*c), 1e-5);
  EXPECT_EQ(used_when_done, 0);
}

TEST_F(BatcherTest, DestructionRunsWhatStillWaits) {
  Start({64, 200us, 1024}, /*fake_clock=*/true);
  Completions done;
  auto a = MakeCall(2, 90);
  Submit(a.get(), &done);
  batcher_.reset();  // no Poll: the destructor launches it and waits
  EXPECT_EQ(done.done(), 1);
  EXPECT_LE(RelErr(*a), 1e-5);
}

}  // namespace
}  // namespace plume::core
