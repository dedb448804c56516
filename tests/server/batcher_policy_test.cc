// The Batcher's two policies (server/core/batching_options.h BatchPolicy).
// What both share: the queue limit, drops of expired and cancelled requests
// before the backend, results routed to their callers under concurrency,
// destruction running what still waits, and the queue of a deleted target
// forgotten once nothing waits or runs there. Then the adaptive policy: a
// lone request never waits, arrivals gather while a batch runs and launch
// when it finishes, a full batch does not wait for the running one, and
// max_queue_delay stays an upper bound.
//
// Under the adaptive policy requests gather only while their target has a
// batch running, so the shared tests first occupy the backend with a held
// call (Occupy) and let the gathered requests go with LaunchGathered: the
// held call returns (adaptive) or the delay passes (fixed).
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "tests/server/batcher_fixture.h"

namespace plume::core {
namespace {

using namespace batcher_testing;

// Each policy, over a backend whose GEMV returns when done (the CPU
// backend: the batch finishes on its worker) and over one that calls back
// from a thread of its own (as the CUDA backend's completion thread does).
class BatcherPolicyTest : public BatcherTest,
                          public ::testing::WithParamInterface<std::tuple<BatchPolicy, bool>> {
 protected:
  BatchPolicy policy() const { return std::get<0>(GetParam()); }
  bool adaptive() const { return policy() == BatchPolicy::kAdaptive; }
  bool async() const { return std::get<1>(GetParam()); }

  void StartPolicy(int64_t max_batch, std::chrono::microseconds delay, int64_t max_queue_size,
                   bool fake_clock, int workers = 2) {
    delay_ = delay;
    if (async()) backend_.SetAsync();
    Start({max_batch, delay, max_queue_size, policy()}, fake_clock, workers);
  }

  // Adaptive: a single-vector call runs and is held in the backend, so what
  // comes next gathers. Fixed: nothing to do, requests gather anyway.
  void Occupy() {
    if (!adaptive()) return;
    backend_.Hold();
    blocker_ = MakeCall(1, 4242);
    Submit(blocker_.get(), &blocker_done_);
    backend_.WaitForGemvCalls(1);
    occupied_ = true;
  }

  // The time passes to the delay bound; adaptive: the held call returns and
  // what gathered launches (no Poll); fixed: Poll closes the batch.
  void LaunchGathered() {
    Advance(delay_);
    if (adaptive()) {
      backend_.Release();
    } else {
      batcher_->Poll();
    }
  }

  // Submits `c` with nothing running: adaptive launches it at once; fixed:
  // the delay passes and Poll closes its batch.
  void SubmitAndClose(Call* c, Completions* done) {
    Submit(c, done);
    if (!adaptive()) {
      Advance(delay_);
      batcher_->Poll();
    }
  }

  // The backend's GEMV calls other than the blocker's.
  std::vector<CountingBackend::Call> Gathered() const {
    auto calls = backend_.gemv_calls();
    if (occupied_) calls.erase(calls.begin());
    return calls;
  }

  void TearDown() override {
    backend_.Release();
    BatcherTest::TearDown();
    if (occupied_) {
      EXPECT_EQ(blocker_done_.done(), 1);
      EXPECT_LE(RelErr(*blocker_), 1e-5);
    }
  }

  std::chrono::microseconds delay_{0};
  std::unique_ptr<Call> blocker_;
  Completions blocker_done_;
  bool occupied_ = false;
};

TEST_P(BatcherPolicyTest, FullQueueIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 4, /*fake_clock=*/true));
  Occupy();
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
  EXPECT_EQ(batcher_->waiting(), 4);
  LaunchGathered();
  done.WaitFor(5);
  ASSERT_EQ(Gathered().size(), 1u);
  EXPECT_EQ(Gathered()[0].batch, 4);
  // Once it drained, the queue takes requests again.
  calls.push_back(MakeCall(1, 70));
  Submit(calls.back().get(), &done);
  LaunchGathered();
  done.WaitFor(6);
  EXPECT_TRUE(done.statuses()[5].ok()) << done.statuses()[5];
  for (size_t i = 0; i < 4; ++i) EXPECT_LE(RelErr(*calls[i]), 1e-5);
}

TEST_P(BatcherPolicyTest, ExpiredAndCancelledRequestsNeverReachTheBackend) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 1024, /*fake_clock=*/true));
  Occupy();
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
  EXPECT_EQ(done.done(), 0);
  LaunchGathered();
  done.WaitFor(3);
  ASSERT_EQ(Gathered().size(), 1u);
  EXPECT_EQ(Gathered()[0].batch, 2);  // the live request only
  EXPECT_LE(RelErr(*live), 1e-5);
  // Dropped before the backend: their results were never written.
  EXPECT_TRUE(expired->out.untouched());
  EXPECT_TRUE(cancelled->out.untouched());
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
  LaunchGathered();
  done.WaitFor(4);
  EXPECT_EQ(done.statuses()[3].code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(Gathered().size(), 1u);
}

TEST_P(BatcherPolicyTest, ResultsGoToTheirCallersUnderConcurrency) {
  // Real clock, timer thread, 4 workers: 8 threads submit 150 requests each
  // of 1..4 random vectors; every result is checked against the reference.
  ASSERT_NO_FATAL_FAILURE(StartPolicy(16, 300us, 4096, /*fake_clock=*/false, 4));
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
        // Bursts with gaps between them: arrival patterns, not synchronisation.
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
      ASSERT_EQ(c->out.shape, (std::vector<int64_t>{c->batch, kRows}));
      ASSERT_LE(RelErr(*c), 1e-5) << "request " << c->seed;
    }
  }
  for (const auto& s : done.statuses()) ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(vectors, expected_vectors);
  EXPECT_GT(max_batch, 1);  // batching happened
  EXPECT_LE(max_batch, 16);
  std::cout << (adaptive() ? "adaptive" : "fixed") << ": " << kThreads * kPerThread
            << " requests, " << vectors << " vectors in " << backend_.gemv_calls().size()
            << " backend calls (mean batch "
            << double(vectors) / double(backend_.gemv_calls().size()) << ")\n";
}

TEST_P(BatcherPolicyTest, DestructionRunsWhatStillWaits) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 1024, /*fake_clock=*/true));
  Occupy();
  Completions done;
  auto a = MakeCall(2, 90);
  Submit(a.get(), &done);
  EXPECT_EQ(batcher_->waiting(), 1);
  // No Poll: the destructor launches it and waits for every batch.
  std::thread destroy([this] { batcher_.reset(); });
  if (adaptive()) {
    backend_.WaitForGemvCalls(2);  // launched beside the held one
    backend_.Release();
  }
  destroy.join();
  EXPECT_EQ(done.done(), 1);
  EXPECT_LE(RelErr(*a), 1e-5);
}

// A deleted matrix's queue, with its pooled buffers, goes as soon as
// nothing waits or runs there: here when its running batch ends.
TEST_P(BatcherPolicyTest, TheQueueOfADeletedTargetGoesWhenItsLastBatchEnds) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 1024, /*fake_clock=*/true));
  backend_.Hold();
  Completions done;
  auto a = MakeCall(2, 91);
  SubmitAndClose(a.get(), &done);
  backend_.WaitForGemvCalls(1);  // running, holding the matrix
  ASSERT_TRUE(store_->Delete("w").ok());
  EXPECT_EQ(batcher_->queues(), 1);
  batcher_->Poll();  // the target lives on in the running batch
  EXPECT_EQ(batcher_->queues(), 1);
  backend_.Release();
  done.WaitFor(1);  // the queue went before the caller heard back
  EXPECT_EQ(batcher_->queues(), 0);
  EXPECT_TRUE(done.statuses()[0].ok()) << done.statuses()[0];
  EXPECT_LE(RelErr(*a), 1e-5);
}

// A failed backend call: every caller of its batch hears the backend's
// status, nothing is copied into their results, and the queue goes on
// serving.
TEST_P(BatcherPolicyTest, ABackendErrorReachesEveryCallerOfItsBatch) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 1024, /*fake_clock=*/true));
  Occupy();
  backend_.FailCall(occupied_ ? 1 : 0, absl::InternalError("the device fell over"));
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(MakeCall(1 + i, 110 + i));
    Submit(calls.back().get(), &done);
  }
  LaunchGathered();
  done.WaitFor(3);
  for (const auto& st : done.statuses()) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
    EXPECT_NE(st.message().find("fell over"), std::string_view::npos) << st;
  }
  for (const auto& c : calls) EXPECT_TRUE(c->out.untouched()) << "call " << c->seed;
  ASSERT_EQ(Gathered().size(), 1u);
  EXPECT_EQ(Gathered()[0].batch, 6);
  Completions next;
  auto ok = MakeCall(2, 120);
  SubmitAndClose(ok.get(), &next);
  next.WaitFor(1);
  EXPECT_TRUE(next.statuses()[0].ok()) << next.statuses()[0];
  EXPECT_LE(RelErr(*ok), 1e-5);
  batcher_->Flush();
  EXPECT_EQ(batcher_->batches_in_flight(), 0);
}

// Deleted while idle: the next Poll forgets the queue, and never one whose
// target lives.
TEST_P(BatcherPolicyTest, PollForgetsTheQueueOfATargetDeletedWhileIdle) {
  ASSERT_NO_FATAL_FAILURE(StartPolicy(64, 200us, 1024, /*fake_clock=*/true));
  Completions done;
  auto a = MakeCall(1, 92);
  SubmitAndClose(a.get(), &done);
  done.WaitFor(1);
  EXPECT_LE(RelErr(*a), 1e-5);
  EXPECT_EQ(batcher_->queues(), 1);
  Advance(10s);
  batcher_->Poll();
  EXPECT_EQ(batcher_->queues(), 1);  // "w" lives: its queue and buffers stay
  ASSERT_TRUE(store_->Delete("w").ok());
  EXPECT_EQ(batcher_->queues(), 1);
  batcher_->Poll();
  EXPECT_EQ(batcher_->queues(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, BatcherPolicyTest,
    ::testing::Combine(::testing::Values(BatchPolicy::kAdaptive, BatchPolicy::kFixed),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<BatchPolicy, bool>>& info) {
      return std::string(std::get<0>(info.param) == BatchPolicy::kAdaptive ? "adaptive" : "fixed") +
             (std::get<1>(info.param) ? "_async" : "");
    });

// ------------------------------------------------------------ adaptive

// With the timer thread (the server's batcher), a target deleted while idle
// loses its queue within Batcher::kForgetEvery, with no request to wake it.
TEST_F(BatcherTest, TheTimerForgetsTheQueueOfATargetDeletedWhileIdle) {
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/false);
  Completions done;
  auto a = MakeCall(1, 93);
  Submit(a.get(), &done);
  done.WaitFor(1);
  EXPECT_LE(RelErr(*a), 1e-5);
  EXPECT_EQ(batcher_->queues(), 1);
  ASSERT_TRUE(store_->Delete("w").ok());
  const auto deleted = std::chrono::steady_clock::now();
  const auto limit = deleted + Batcher::kForgetEvery + 4s;
  while (batcher_->queues() != 0 && std::chrono::steady_clock::now() < limit) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(batcher_->queues(), 0) << "the queue outlived its deleted target";
  EXPECT_LE(std::chrono::steady_clock::now() - deleted, Batcher::kForgetEvery + 1s);
}

TEST_F(BatcherTest, AdaptiveLoneRequestsNeverWait) {
  // The clock stands still and nothing polls: each request launches at
  // Submit, alone, with zero queue time.
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true);
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 5; ++i) {
    Completions done;
    calls.push_back(MakeCall(1 + i % 2, 20 + i));
    Submit(calls.back().get(), &done);
    done.WaitFor(1);
    EXPECT_TRUE(done.statuses()[0].ok()) << done.statuses()[0];
    EXPECT_LE(RelErr(*calls.back()), 1e-5);
  }
  ASSERT_EQ(backend_.gemv_calls().size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(backend_.gemv_calls()[i].batch, 1 + int64_t(i % 2));
  const auto queued = ReadMetric(*metrics_.registry(), "plume_queue_duration_seconds");
  EXPECT_EQ(queued.count, 5);
  EXPECT_EQ(queued.sum, 0);
}

TEST_F(BatcherTest, AdaptiveArrivalsGatherWhileABatchRunsAndLaunchWhenItFinishes) {
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true);
  backend_.Hold();
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  calls.push_back(MakeCall(1, 30));
  Submit(calls.back().get(), &done);
  backend_.WaitForGemvCalls(1);
  // Ten more, of 1..3 vectors and two argument kinds, while it runs: they
  // wait (no time passes, nothing polls).
  int64_t f32_vectors = 0, f16_vectors = 0;
  for (int i = 0; i < 10; ++i) {
    const int64_t batch = 1 + i % 3;
    const bool f16 = i % 4 == 3;
    (f16 ? f16_vectors : f32_vectors) += batch;
    calls.push_back(MakeCall(batch, 31 + i, f16 ? DType::kF16 : DType::kF32));
    Submit(calls.back().get(), &done);
  }
  EXPECT_EQ(batcher_->waiting(), 10);
  EXPECT_EQ(backend_.gemv_calls().size(), 1u);
  backend_.Release();
  done.WaitFor(11);
  // The running batch finished: one batch per argument kind launched.
  auto got = backend_.gemv_calls();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].batch, 1);
  std::vector<int64_t> gathered{got[1].batch, got[2].batch};
  std::sort(gathered.begin(), gathered.end());
  EXPECT_EQ(gathered, (std::vector<int64_t>{std::min(f32_vectors, f16_vectors),
                                            std::max(f32_vectors, f16_vectors)}));
  for (const auto& s : done.statuses()) EXPECT_TRUE(s.ok()) << s;
  for (const auto& c : calls) {
    if (c->call.output_dtype == static_cast<int>(DType::kF32)) EXPECT_LE(RelErr(*c), 1e-5);
    EXPECT_EQ(c->out.data.size(), ResultBytes(*c));
    EXPECT_FALSE(c->out.untouched());
  }
  EXPECT_EQ(batcher_->waiting(), 0);
}

TEST_F(BatcherTest, AdaptiveFullBatchDoesNotWaitForTheRunningOne) {
  Start({8, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true, /*workers=*/2);
  backend_.Hold();
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  calls.push_back(MakeCall(1, 50));
  Submit(calls.back().get(), &done);
  backend_.WaitForGemvCalls(1);
  for (int i = 0; i < 11; ++i) {
    calls.push_back(MakeCall(1, 51 + i));
    Submit(calls.back().get(), &done);
  }
  // Eight filled a batch that launched beside the held one; three wait.
  backend_.WaitForGemvCalls(2);
  EXPECT_EQ(backend_.gemv_calls()[1].batch, 8);
  EXPECT_EQ(batcher_->waiting(), 3);
  backend_.Release();
  done.WaitFor(12);
  auto got = backend_.gemv_calls();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].batch, 3);
  for (const auto& c : calls) EXPECT_LE(RelErr(*c), 1e-5);
}

TEST_F(BatcherTest, AdaptiveDelayIsAnUpperBound) {
  // A batch runs for longer than max_queue_delay: what gathered behind it
  // launches at the delay, beside it, not when it finishes.
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true, /*workers=*/2);
  backend_.Hold();
  Completions done;
  auto first = MakeCall(1, 70);
  Submit(first.get(), &done);
  backend_.WaitForGemvCalls(1);
  const BatchClock::time_point t0 = BatchClock::time_point(std::chrono::microseconds(now_us_.load()));
  auto second = MakeCall(2, 71);
  Submit(second.get(), &done);
  EXPECT_EQ(batcher_->Poll(), t0 + 200us);
  Advance(199us);
  EXPECT_EQ(batcher_->Poll(), t0 + 200us);
  EXPECT_EQ(batcher_->waiting(), 1);
  Advance(1us);
  EXPECT_EQ(batcher_->Poll(), BatchClock::time_point::max());
  backend_.WaitForGemvCalls(2);
  EXPECT_EQ(backend_.gemv_calls()[1].batch, 2);
  EXPECT_EQ(done.done(), 0);  // both still held
  backend_.Release();
  done.WaitFor(2);
  EXPECT_LE(RelErr(*first), 1e-5);
  EXPECT_LE(RelErr(*second), 1e-5);
  EXPECT_DOUBLE_EQ(ReadMetric(*metrics_.registry(), "plume_queue_duration_seconds").sum, 200e-6);
}

// A backend that calls back from its own thread: the worker only starts a
// batch, so one worker keeps several batches in flight, and the batch
// finishes (results copied out, callers told, what gathered launched)
// where the backend calls back.
TEST_F(BatcherTest, AsyncBackendCallsHoldNoWorker) {
  backend_.SetAsync();
  Start({1, 200us, 1024, BatchPolicy::kFixed}, /*fake_clock=*/true, /*workers=*/1);
  backend_.Hold();
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(MakeCall(1, 80 + i));
    Submit(calls.back().get(), &done);  // max_batch 1: each its own batch, at once
  }
  // With a worker held per call this would stay at one.
  EXPECT_TRUE(backend_.WaitForGemvCallsFor(3, absl::Seconds(10)))
      << backend_.gemv_calls().size() << " of 3 batches started on one worker";
  EXPECT_EQ(batcher_->batches_in_flight(), 3);
  EXPECT_EQ(done.done(), 0);
  backend_.Release();
  done.WaitFor(3);
  for (const auto& st : done.statuses()) EXPECT_TRUE(st.ok()) << st;
  for (const auto& c : calls) EXPECT_LE(RelErr(*c), 1e-5);
  batcher_->Flush();
  EXPECT_EQ(batcher_->batches_in_flight(), 0);
}

TEST_F(BatcherTest, AsyncAdaptiveGathersUntilTheCallFinishes) {
  backend_.SetAsync();
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true, /*workers=*/1);
  backend_.Hold();
  Completions done;
  std::vector<std::unique_ptr<Call>> calls;
  calls.push_back(MakeCall(1, 90));
  Submit(calls.back().get(), &done);
  backend_.WaitForGemvCalls(1);
  for (int i = 0; i < 5; ++i) {
    calls.push_back(MakeCall(1 + i % 2, 91 + i));
    Submit(calls.back().get(), &done);
  }
  // The worker is free, yet the five wait for the running batch.
  EXPECT_FALSE(backend_.WaitForGemvCallsFor(2, absl::Milliseconds(50)));
  EXPECT_EQ(batcher_->waiting(), 5);
  backend_.Release();
  done.WaitFor(6);
  const auto got = backend_.gemv_calls();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].batch, 1 + 2 + 1 + 2 + 1);
  for (const auto& st : done.statuses()) EXPECT_TRUE(st.ok()) << st;
  for (const auto& c : calls) EXPECT_LE(RelErr(*c), 1e-5);
  // The host part is the call's wall time less the device's part.
  EXPECT_EQ(ReadMetric(*metrics_.registry(), "plume_host_duration_seconds").count, 2);
}

TEST_F(BatcherTest, FlushWaitsForAsyncCalls) {
  backend_.SetAsync();
  Start({64, 200us, 1024, BatchPolicy::kAdaptive}, /*fake_clock=*/true, /*workers=*/1);
  backend_.Hold();
  Completions done;
  auto c = MakeCall(2, 99);
  Submit(c.get(), &done);
  backend_.WaitForGemvCalls(1);
  std::atomic<bool> flushed{false};
  std::thread flush([&] {
    batcher_->Flush();
    flushed = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(flushed.load()) << "Flush returned with a batch in flight";
  backend_.Release();
  flush.join();
  EXPECT_EQ(done.done(), 1);
  EXPECT_LE(RelErr(*c), 1e-5);
}

}  // namespace
}  // namespace plume::core
