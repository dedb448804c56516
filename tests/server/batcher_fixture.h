// The fixture of the batcher tests (batcher_test.cc: formation under the
// fixed policy and attention batches; batcher_policy_test.cc: what both
// policies share, and the adaptive policy): a matrix "w" on a CPU backend
// that records, and can hold, every call it gets; an injected clock.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/batcher.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"
#include "tests/common/core_calls.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/metrics_reader.h"

namespace plume::core::batcher_testing {

using namespace std::chrono_literals;

// A CPU backend that records every GEMV and attention call it gets. With
// SetAsync, GemvAsync returns at once and a thread of its own runs the call
// and calls back, as the CUDA backend's completion thread does: held calls
// then wait there, not on a worker.
class CountingBackend final : public Backend {
 public:
  struct Call {
    int64_t batch;
    DType x_dtype, y_dtype;
  };

  ~CountingBackend() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (device_.joinable()) device_.join();
  }

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
    size_t index;
    {
      absl::MutexLock lock(&mu_);
      index = gemv_calls_.size();
      gemv_calls_.push_back({args.batch, args.x_dtype, args.y_dtype});
    }
    return RunHeld(index, w, args);
  }

  void GemvAsync(const BackendMatrix& w, const GemvArgs& args, GemvDoneFn done) override {
    if (!async_) return Backend::GemvAsync(w, args, std::move(done));
    absl::MutexLock lock(&mu_);
    started_.push_back({gemv_calls_.size(), &w, args, std::move(done)});
    gemv_calls_.push_back({args.batch, args.x_dtype, args.y_dtype});
  }

  // GEMV call number `index` (from 0, in arrival order) fails with `s`,
  // computing nothing.
  void FailCall(size_t index, absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_index_ = index;
    fail_status_ = std::move(s);
  }

  // GemvAsync returns before the call ran (from now on; before any call).
  void SetAsync() {
    async_ = true;
    device_ = std::thread([this] { DeviceLoop(); });
  }

  // Reports this device time for every GEMV from now on, as a GPU backend
  // does (negative: none, like the CPU backend).
  void ReportDeviceSeconds(double s) {
    absl::MutexLock lock(&mu_);
    device_seconds_ = s;
  }

  // While held, every GEMV call is recorded and then waits for Release().
  void Hold() {
    absl::MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    held_ = false;
  }
  // Waits until `n` GEMV calls reached the backend.
  void WaitForGemvCalls(size_t n) const {
    struct Arg {
      const std::vector<Call>* calls;
      size_t n;
    } arg{&gemv_calls_, n};
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](Arg* a) { return a->calls->size() >= a->n; }, &arg));
  }
  // The same within `timeout`: whether they did.
  bool WaitForGemvCallsFor(size_t n, absl::Duration timeout) const {
    struct Arg {
      const std::vector<Call>* calls;
      size_t n;
    } arg{&gemv_calls_, n};
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(
        absl::Condition(+[](Arg* a) { return a->calls->size() >= a->n; }, &arg), timeout);
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
  // A GEMV call that has not run yet, as in the device's queue.
  struct Started {
    size_t index;
    const BackendMatrix* w;
    GemvArgs args;
    GemvDoneFn done;
  };

  // Waits while held, then runs the call on the CPU backend, reporting the
  // device time set by ReportDeviceSeconds.
  absl::Status RunHeld(size_t index, const BackendMatrix& w, const GemvArgs& args) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(+[](bool* held) { return !*held; }, &held_));
      if (index == fail_index_) return fail_status_;
      if (args.device_seconds != nullptr && device_seconds_ >= 0) {
        *args.device_seconds = device_seconds_;
      }
    }
    return cpu_.Gemv(w, args);
  }

  // The "device": runs the started calls in order and calls back.
  void DeviceLoop() {
    for (;;) {
      Started call;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](CountingBackend* b) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return !b->started_.empty() || b->stopping_;
            },
            this));
        if (started_.empty()) return;
        call = std::move(started_.front());
        started_.pop_front();
      }
      double device = -1;
      GemvArgs timed = call.args;
      timed.device_seconds = &device;
      const absl::Status s = RunHeld(call.index, *call.w, timed);
      call.done(s, device);
    }
  }

  CpuBackend cpu_{2};
  bool async_ = false;
  std::thread device_;
  mutable absl::Mutex mu_;
  std::deque<Started> started_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Call> gemv_calls_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> attention_batches_ ABSL_GUARDED_BY(mu_);
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  double device_seconds_ ABSL_GUARDED_BY(mu_) = -1;
  size_t fail_index_ ABSL_GUARDED_BY(mu_) = SIZE_MAX;
  absl::Status fail_status_ ABSL_GUARDED_BY(mu_);
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

// One GEMV call and its result, alive until its done callback ran.
struct Call {
  uint32_t seed = 0;  // names it in messages
  int64_t batch = 1;
  std::vector<float> x;
  testing::HostTensor input;  // the bytes `call` views
  GemvCall call;
  testing::HeldResult out;
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
    service_ = std::make_unique<MatrixService>(&backend_, store_.get(), limits);
    w_ = testing::RandomNormal(kRows * kCols, 7);
    MatrixHeader h = testing::F32Header("w", kRows, kCols);
    h.max_batch = per_matrix.max_batch;
    h.max_queue_delay_us = per_matrix.max_queue_delay.count();
    h.max_queue_size = per_matrix.max_queue_size;
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

  std::unique_ptr<Call> MakeCall(int64_t batch, uint32_t seed, DType out = DType::kF32) {
    auto c = std::make_unique<Call>();
    c->seed = seed;
    c->batch = batch;
    c->x = testing::RandomNormal(batch * kCols, seed);
    c->input = testing::F32Tensor({batch, kCols}, c->x);
    c->call.matrix = "w";
    c->call.input = c->input.view();
    c->call.output_dtype = static_cast<int>(out);
    return c;
  }

  void Submit(Call* c, Completions* done, RequestLife life = {}) {
    service_->GemvAsync(batcher_.get(), c->call, &c->out, std::move(life),
                        [done](const absl::Status& s) { done->Done(s); });
  }

  // Bytes of `c`'s result: [batch, kRows] of its output dtype.
  static size_t ResultBytes(const Call& c) {
    return size_t(c.batch * kRows * DTypeSize(static_cast<DType>(c.call.output_dtype)));
  }

  // The result of `c` against the reference; infinity when it has none.
  double RelErr(const Call& c) const {
    if (c.out.data.size() != size_t(c.batch * kRows * 4) || c.out.untouched()) return INFINITY;
    return expected_->RelErr(c.x, c.batch, c.out.floats());
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

}  // namespace plume::core::batcher_testing
