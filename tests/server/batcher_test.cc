// The Batcher (server/core/batcher.h) on the CPU backend, fixed policy:
// batch formation (max_batch, the delay bound, compatible arguments,
// per-matrix options) and attention batches. An injected clock and Poll()
// make formation deterministic; a counting backend shows what reached it.
// What both policies share (queue limit, drops, routing under concurrency,
// destruction) and the adaptive policy: batcher_policy_test.cc.
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
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/kv_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/metrics_reader.h"
#include "tests/server/batcher_fixture.h"

namespace plume::core {
namespace {

using namespace batcher_testing;

// Formation under the fixed policy: every batch that is not full waits
// max_queue_delay (batcher_policy_test.cc has the adaptive policy).
TEST_F(BatcherTest, MaxBatchIsRespected) {
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
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
  for (const auto& c : calls) EXPECT_LE(RelErr(*c), 1e-5) << c->seed;
  for (const auto& s : done.statuses()) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_batch_size").count,
            double(backend_.gemv_calls().size()));
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_queue_duration_seconds").count, double(calls.size()));
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_queue_depth").sum, 0);
}

TEST_F(BatcherTest, DelayBoundWithInjectedClock) {
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
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
  Start({64, 5ms, 1024, BatchPolicy::kFixed}, /*fake_clock=*/false);
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

TEST_F(BatcherTest, KernelAndHostPartsSplitEachBackendCall) {
  // A backend without device timing: the kernel metric is the whole call and
  // the host part is zero. One that reports a device time: the kernel metric
  // is that time, the host part the rest of the call.
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
  auto run = [&](uint32_t seed) {
    Completions done;
    auto c = MakeCall(2, seed);
    Submit(c.get(), &done);
    Advance(200us);
    batcher_->Poll();
    done.WaitFor(1);
    EXPECT_LE(RelErr(*c), 1e-5);
  };
  run(1);
  auto kernel = ReadMetric(*metrics_.registry(), "plume_kernel_duration_seconds");
  auto host = ReadMetric(*metrics_.registry(), "plume_host_duration_seconds");
  EXPECT_EQ(kernel.count, 1);
  EXPECT_GT(kernel.sum, 0);
  EXPECT_EQ(host.count, 1);
  EXPECT_EQ(host.sum, 0);
  backend_.ReportDeviceSeconds(0);
  run(2);
  kernel = ReadMetric(*metrics_.registry(), "plume_kernel_duration_seconds");
  const auto host2 = ReadMetric(*metrics_.registry(), "plume_host_duration_seconds");
  EXPECT_EQ(kernel.count, 2);
  EXPECT_EQ(host2.count, 2);
  EXPECT_GT(host2.sum, 0);  // the whole second call
}

TEST_F(BatcherTest, PerMatrixOptionsOverrideTheDefaults) {
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true, 2, {4, 0us, 0});
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
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(MakeCall(1, 50 + i, i % 2 ? DType::kF16 : DType::kF32));
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
    EXPECT_EQ(c->out.data.size(), ResultBytes(*c));
    EXPECT_FALSE(c->out.untouched());
  }
}

// Attention requests on a cache "kv" (2 kv heads, 40 tokens, head_dim 32)
// with queries of 4 heads.
class AttentionBatchTest : public BatcherTest {
 protected:
  static constexpr int64_t kKvHeads = 2, kSeq = 40, kDim = 32, kHeads = 4;

  struct ACall {
    uint32_t seed = 0;
    testing::HostTensor query;  // the bytes `call` views
    AttentionCall call;
    testing::HeldResult out;
    int64_t seq = -1;
  };

  void StartAttention(const Limits& limits) {
    Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
    kv_store_ = std::make_unique<KvStore>(store_->budget(), &metrics_);
    attention_ = std::make_unique<AttentionService>(&backend_, kv_store_.get(), limits);
    const auto k = testing::RandomNormal(kKvHeads * kSeq * kDim, 11, 0.3f);
    const auto v = testing::RandomNormal(kKvHeads * kSeq * kDim, 12);
    KvHeader h;
    h.name = "kv";
    h.kv_heads = kKvHeads;
    h.seq = kSeq;
    h.head_dim = kDim;
    h.source_dtype = static_cast<int>(DType::kF32);
    auto up = attention_->BeginUpload(h);
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE((*up)->AddK({reinterpret_cast<const char*>(k.data()), k.size() * 4}).ok());
    ASSERT_TRUE((*up)->AddV({reinterpret_cast<const char*>(v.data()), v.size() * 4}).ok());
    ASSERT_TRUE((*up)->Finish().ok());
  }

  std::unique_ptr<ACall> MakeAttention(int64_t batch, int64_t q_len, uint32_t seed) {
    auto c = std::make_unique<ACall>();
    const auto q = testing::RandomNormal(batch * kHeads * q_len * kDim, seed, 0.3f);
    c->seed = seed;
    c->query = testing::F32Tensor({batch, kHeads, q_len, kDim}, q);
    c->call.cache = "kv";
    c->call.causal = true;
    c->call.query = c->query.view();
    return c;
  }

  // Queues every call, closes the batches and waits for them.
  void RunAll(const std::vector<std::unique_ptr<ACall>>& calls) {
    Completions done;
    for (auto& c : calls) {
      attention_->AttentionAsync(batcher_.get(), c->call, &c->out, {},
                                 [&done, c = c.get()](const absl::Status& s, int64_t seq) {
                                   c->seq = seq;
                                   done.Done(s);
                                 });
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
  // Each against the same request run alone (a batch of its own on a
  // fresh batcher, which launches a lone request at once).
  testing::CoreCalls one_at_a_time(&backend_);
  for (const auto& c : calls) {
    testing::HeldResult alone;
    ASSERT_TRUE(one_at_a_time.Attention(*attention_, c->call, &alone).ok());
    EXPECT_EQ(c->seq, kSeq);
    EXPECT_EQ(c->out.shape, alone.shape);
    ASSERT_EQ(c->out.data.size(), alone.data.size());
    const std::vector<float> got = c->out.floats(), want = alone.floats();
    double err = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      err += (got[i] - want[i]) * double(got[i] - want[i]);
      norm += double(want[i]) * want[i];
    }
    EXPECT_GT(norm, 0);
    EXPECT_LE(std::sqrt(err / norm), 1e-6) << "request " << c->seed;
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
  Start({64, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true);
  auto c = MakeCall(2, 95);
  absl::Notification done;
  int64_t used_when_done = -1;
  absl::Status status;
  service_->GemvAsync(batcher_.get(), c->call, &c->out, {}, [&](const absl::Status& s) {
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

}  // namespace
}  // namespace plume::core
