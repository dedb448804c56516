// The CUDA backend's completion thread (server/backends/cuda/cuda_completions.h)
// with calls that need no device: the order it finishes them in, the drain
// on destruction, and the polling window that keeps it awake for a call
// that comes soon after the last one.
#include "server/backends/cuda/cuda_completions.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace plume::core::cuda_internal {
namespace {

using namespace std::chrono_literals;

struct Log {
  std::mutex mu;
  std::vector<int> finished;
  std::atomic<int> count{0};
};

class FakeCall final : public Completions::Call {
 public:
  FakeCall(Log* log, int id, std::chrono::microseconds work) : log_(log), id_(id), work_(work) {}
  void Finish() override {
    if (work_.count() > 0) std::this_thread::sleep_for(work_);
    {
      std::lock_guard<std::mutex> l(log_->mu);
      log_->finished.push_back(id_);
    }
    log_->count.fetch_add(1);
  }

 private:
  Log* log_;
  int id_;
  std::chrono::microseconds work_;
};

// Waits up to 10 s for `pred`.
template <class Pred>
bool Eventually(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

TEST(Completions, FinishesCallsInOrderAndDrainsThemOnDestruction) {
  Log log;
  {
    Completions c(-1, 0us);
    for (int i = 0; i < 50; ++i) c.Add(std::make_unique<FakeCall>(&log, i, i % 7 == 0 ? 200us : 0us));
  }  // the destructor finishes what is queued
  ASSERT_EQ(log.finished.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(log.finished[static_cast<size_t>(i)], i);
}

TEST(Completions, PollsForTheNextCallBeforeItSleeps) {
  Log log;
  Completions c(-1, std::chrono::microseconds(2s));
  ASSERT_TRUE(Eventually([&] { return c.sleeps() == 1; }));  // asleep before the first call
  c.Add(std::make_unique<FakeCall>(&log, 0, 0us));
  ASSERT_TRUE(Eventually([&] { return log.count.load() == 1; }));
  std::this_thread::sleep_for(1ms);  // a lone client's next request, well inside the window
  c.Add(std::make_unique<FakeCall>(&log, 1, 0us));
  ASSERT_TRUE(Eventually([&] { return log.count.load() == 2; }));
  EXPECT_EQ(c.sleeps(), 1) << "the thread slept between two calls 1 ms apart with a 2 s window";
}

TEST(Completions, WithNoWindowItSleepsBetweenCalls) {
  Log log;
  Completions c(-1, 0us);
  ASSERT_TRUE(Eventually([&] { return c.sleeps() == 1; }));
  for (int i = 0; i < 3; ++i) {
    c.Add(std::make_unique<FakeCall>(&log, i, 0us));
    ASSERT_TRUE(Eventually([&] { return log.count.load() == i + 1; }));
    ASSERT_TRUE(Eventually([&] { return c.sleeps() == i + 2; })) << "call " << i;
  }
}

TEST(Completions, StopsWithoutWaitingOutTheWindow) {
  Log log;
  const auto t0 = std::chrono::steady_clock::now();
  {
    Completions c(-1, std::chrono::microseconds(60s));
    c.Add(std::make_unique<FakeCall>(&log, 0, 0us));
    ASSERT_TRUE(Eventually([&] { return log.count.load() == 1; }));
  }  // the thread is polling now: the destructor must not wait a minute
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);
  EXPECT_EQ(log.count.load(), 1);
}

}  // namespace
}  // namespace plume::core::cuda_internal
