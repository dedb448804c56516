// A delete during load does not stall GEMVs. 64 GemvStream clients (one
// item in flight each, a closed loop) multiply by matrix "hot" on the CPU
// backend with a durable store, while another matrix is deleted (its file
// unlinked, the directory fsynced) and uploaded again (a temp file written
// and fsynced, renamed, the directory fsynced) in a loop.
//
// What keeps the GEMVs going: a delete runs on the work queue (ahead of the
// batches waiting there, never on a gRPC thread), takes its matrix off the
// registry under the registry's lock and removes the file with no lock held
// (MatrixStore::Delete); GEMV lookups take that lock as readers
// (registry.h), and the other workers run batches while one waits for the
// disk. The store's disk is made slower by kDiskDelay per file (SlowDisk):
// a delete that waited for it in the wrong place would hold GEMVs that long
// on any machine, however fast its own disk.
//
// The same load without the server's deletes waiting for the disk is the
// control (F): the same calls (delete and re-upload of a matrix, "ctrl",
// whose files SlowDisk does not touch) and the same disk work (the delay,
// the unlink, the write, the fsyncs), done by the test's thread instead of
// the server. A bare "no deletes" would not do: an fsync slows every thread
// of a VM for a moment, whoever calls it (on the 2-core VM this was written
// on, a test thread writing and removing files at the loop's rate raised
// the GEMV p99 1.44x with no plume code involved), and the calls cost CPU.
// So F and D differ only in where the disk is waited for.
//
// Measured in 0.5 s windows, the control (F) or the deletes (D), in the
// order FDDF FDDF ..., so that drift in the machine's other load falls on
// both alike: each window's GEMV p99 (the items started in it). The
// statistic is the lower quartile of each kind's 12 per-window p99s: other
// load on the machine only ever adds latency, and in bursts, so the quieter
// windows show what the load itself costs, while a stall of the GEMVs would
// be in every D window. Bound: D within 1.2x of F. A machine loaded by
// other work can still spoil one round of windows, so up to three rounds
// run, until one is within the bound. With the registry's lock held across
// the file's removal (a local experiment), every round gave 1.4x to 2.3x
// (6 of 6, on a 2-core VM whose load average was 7 to 9).
//
// Built twice: on the CPU backend (delete_under_load_test, CI) and, with
// PLUME_DELETE_TEST_ON_CUDA, on the CUDA backend with the serving bench's
// 8192 x 8192 matrix as "hot" (gpu_delete_under_load_test, label gpu, run by
// scripts/gpu-test.sh). There batched and unbatched results come from
// different kernels, so a result is right within 2e-5 (rel. L2) of the
// unbatched one instead of equal to it.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "plume/client/client.h"
#if defined(PLUME_DELETE_TEST_ON_CUDA)
#include "server/backends/cuda/cuda_backend.h"
#endif
#include "server/core/durable_store.h"
#include "server/core/engine.h"
#include "server/grpc/server.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/sanitizers.h"
#include "tests/common/test_server.h"

namespace plume {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kStreams = 64;
#if defined(PLUME_DELETE_TEST_ON_CUDA)
constexpr int64_t kRows = 8192, kCols = 8192;      // "hot", the serving bench's matrix
#else
constexpr int64_t kRows = 1024, kCols = 1024;      // "hot"
#endif
constexpr int64_t kSmallRows = 64, kSmallCols = 64;  // "churn" (deleted) and "ctrl" (control)
constexpr auto kWindow = 500ms;
constexpr char kOrder[] = "FDDFFDDFFDDFFDDFFDDFFDDF";
constexpr double kBound = 1.2;
constexpr int kAttempts = 3;  // rounds of windows, until one is within the bound
// Deletes a D window must hold for its p99 to say anything: a delete and
// re-upload take about 60 ms here (8 a window), and the sanitizer builds'
// first round measured 4 a window on the 2-core CI machine.
constexpr int kMinDeletes = plume::testing::kSanitized ? 3 : 5;
// What the store's disk takes more than this machine's, per matrix file
// written or removed: a disk whose fsync takes milliseconds.
constexpr auto kDiskDelay = 10ms;

// The store's disk, slower by kDiskDelay per file written or removed; the
// control matrix "ctrl" has no file (the test does its disk work).
class SlowDisk final : public core::Persistence {
 public:
  explicit SlowDisk(core::Persistence* disk) : disk_(disk) {}
  absl::Status SaveMatrix(const core::StoredMatrixMeta& meta, const uint32_t* words,
                          const float* scales) override {
    if (meta.name == "ctrl") return absl::OkStatus();
    std::this_thread::sleep_for(kDiskDelay);
    return disk_->SaveMatrix(meta, words, scales);
  }
  absl::Status RemoveMatrix(std::string_view name) override {
    if (name == "ctrl") return absl::OkStatus();
    std::this_thread::sleep_for(kDiskDelay);
    return disk_->RemoveMatrix(name);
  }

 private:
  core::Persistence* const disk_;
};

// The p-quantile of `v` by nearest rank.
double Quantile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * double(v.size()))) - 1);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// One GemvStream client, which pushes its next item from the callback of
// the last, so that one item is always in flight. Its samples are under the
// fixture's samples_mu_; only its session's reader thread touches the rest
// until the session is finished.
struct StreamClient {
  std::vector<std::pair<Clock::time_point, double>> samples;  // start, latency (ms)
  int errors = 0, wrong = 0;
  std::string first_error;
  std::unique_ptr<GemvSession> session;  // last: goes first, with its reader
};

class DeleteUnderLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("plume_delete_under_load_" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.dir = (dir_ / "store").string();
#if defined(PLUME_DELETE_TEST_ON_CUDA)
    auto cuda = core::CudaBackend::Create(core::CudaBackendOptions{});
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    auto t = testing::StartTestServer(eo, {}, std::move(*cuda));
#else
    auto t = testing::StartTestServer(eo);
#endif
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    // Before any call: matrix files go through the slower disk.
    slow_disk_ = std::make_unique<SlowDisk>(engine_->disk());
    engine_->matrix_store()->set_persistence(slow_disk_.get());
  }
  void TearDown() override {
    if (server_) server_->Shutdown(1s);
    server_.reset();
    engine_.reset();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<Client> Connect() {
    ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(server_->port());
    o.max_attempts = 1;
    o.default_timeout = 120s;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  void PushNext(StreamClient& s) {
    const Clock::time_point t0 = Clock::now();
    s.session->Push(TensorRef::F32(x_.data(), {kCols}),
                    [this, &s, t0](uint64_t, absl::StatusOr<GemvResult> r) {
                      const Clock::time_point t1 = Clock::now();
                      {
                        std::lock_guard<std::mutex> l(samples_mu_);
                        s.samples.emplace_back(
                            t0, std::chrono::duration<double, std::milli>(t1 - t0).count());
                      }
                      if (!r.ok()) {
                        if (s.errors++ == 0) s.first_error = r.status().ToString();
                        return;  // a failed stream gets no more items
                      }
                      if (!SameResult(r->output.data)) ++s.wrong;
                      if (running_.load()) PushNext(s);
                    });
  }

  // Whether a result is the unbatched one's: equal on the CPU, whose
  // vectors never interact; within 2e-5 on the GPU (see the top).
  bool SameResult(const std::string& got) const {
#if defined(PLUME_DELETE_TEST_ON_CUDA)
    if (got.size() != want_.size()) return false;
    const size_t n = got.size() / sizeof(float);
    std::vector<float> a(n), b(n);
    std::memcpy(a.data(), got.data(), got.size());
    std::memcpy(b.data(), want_.data(), want_.size());
    double err = 0, norm = 0;
    for (size_t i = 0; i < n; ++i) {
      err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      norm += double(b[i]) * b[i];
    }
    return norm > 0 && std::sqrt(err / norm) <= 2e-5;
#else
    return got == want_;
#endif
  }

  std::filesystem::path dir_;
  std::unique_ptr<SlowDisk> slow_disk_;  // outlives the engine
  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  std::mutex samples_mu_;  // every stream's samples
  std::vector<float> x_;
  std::string want_;  // "hot" times x_, unbatched
  std::atomic<bool> running_{true};
};

TEST_F(DeleteUnderLoadTest, DeletesAndReuploadsOfAnotherMatrixDoNotRaiseGemvP99) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::vector<float> hot = testing::RandomNormal(kRows * kCols, 1);
  const std::vector<float> small = testing::RandomNormal(kSmallRows * kSmallCols, 2);
  const TensorRef small_ref = TensorRef::F32(small.data(), {kSmallRows, kSmallCols});
  ASSERT_TRUE(client->UploadMatrix({.name = "hot"}, TensorRef::F32(hot.data(), {kRows, kCols})).ok());
  ASSERT_TRUE(client->UploadMatrix({.name = "churn"}, small_ref).ok());
  ASSERT_TRUE(client->UploadMatrix({.name = "ctrl"}, small_ref).ok());
  const std::filesystem::path churn_file = dir_ / "store" / "churn.pmx";
  ASSERT_TRUE(std::filesystem::exists(churn_file));
  ASSERT_FALSE(std::filesystem::exists(dir_ / "store" / "ctrl.pmx"));
  x_ = testing::RandomNormal(kCols, 3);
  auto want = client->Gemv("hot", TensorRef::F32(x_.data(), {kCols}));
  ASSERT_TRUE(want.ok()) << want.status();
  want_ = want->data;

  // The control's disk work: a file as large as churn's, in a directory of
  // its own on the same disk.
  auto control_disk = core::DirectoryStore::Open((dir_ / "control").string());
  ASSERT_TRUE(control_disk.ok()) << control_disk.status();
  const std::string control_bytes(std::filesystem::file_size(churn_file), 'c');

  std::vector<StreamClient> streams(kStreams);
  for (StreamClient& s : streams) {
    auto session = client->StartGemvSession("hot", {.max_in_flight = 2});
    ASSERT_TRUE(session.ok()) << session.status();
    s.session = std::move(*session);
  }
  for (StreamClient& s : streams) PushNext(s);

  // The loop, on a connection of its own, switched per window; `busy` while
  // a cycle runs.
  auto loop_client = Connect();
  ASSERT_NE(loop_client, nullptr);
  std::mutex mu;
  std::condition_variable cv;
  char kind = 0;  // 'F', 'D', or 0: neither
  bool busy = false, quit = false;
  std::vector<Clock::time_point> delete_starts;  // under mu
  std::vector<double> delete_ms, upload_ms;      // the loop's until it quits
  std::string loop_error;
  std::thread loop([&] {
    for (;;) {
      char k;
      {
        std::unique_lock<std::mutex> l(mu);
        busy = false;
        cv.notify_all();
        cv.wait(l, [&] { return kind != 0 || quit; });
        if (quit) return;
        busy = true;
        k = kind;
      }
      // D: the server waits for the disk; F: this thread does.
      const std::string name = k == 'D' ? "churn" : "ctrl";
      const Clock::time_point t0 = Clock::now();
      absl::Status s = loop_client->DeleteMatrix(name);
      if (s.ok() && k == 'F') {
        std::this_thread::sleep_for(kDiskDelay);
        s = (*control_disk)->RemoveFile("ctrl.pmx");
      }
      const Clock::time_point t1 = Clock::now();
      if (s.ok()) s = loop_client->UploadMatrix({.name = name}, small_ref).status();
      if (s.ok() && k == 'F') {
        std::this_thread::sleep_for(kDiskDelay);
        s = (*control_disk)->WriteFileDurably("ctrl.pmx", {control_bytes});
      }
      if (k == 'D') {
        std::lock_guard<std::mutex> l(mu);
        delete_starts.push_back(t0);
        delete_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        upload_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t1).count());
      }
      if (!s.ok()) {
        std::lock_guard<std::mutex> l(mu);
        loop_error = std::string(1, k) + ": " + s.ToString();
        busy = false;
        cv.notify_all();
        return;
      }
    }
  });
  auto switch_to = [&](char k) {
    std::unique_lock<std::mutex> l(mu);
    kind = 0;
    cv.wait(l, [&] { return !busy; });  // the cycle under way has ended
    kind = k;
    cv.notify_all();
  };

  switch_to('F');
  std::this_thread::sleep_for(1s);  // warm-up, not measured
  // Up to kAttempts rounds of windows, until one is within the bound.
  std::vector<double> ratios;
  std::vector<std::pair<Clock::time_point, Clock::time_point>> windows;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    const size_t first = windows.size();
    for (const char k : std::string(kOrder)) {
      switch_to(k);
      const Clock::time_point start = Clock::now();
      std::this_thread::sleep_for(kWindow);  // the window: the load is measured over it
      windows.emplace_back(start, Clock::now());
    }
    switch_to('F');
    // The samples so far (taken, so that the streams go on at once).
    std::vector<std::vector<std::pair<Clock::time_point, double>>> taken(streams.size());
    {
      std::lock_guard<std::mutex> l(samples_mu_);
      for (size_t i = 0; i < streams.size(); ++i) taken[i].swap(streams[i].samples);
    }
    std::vector<Clock::time_point> deletes_at;
    {
      std::lock_guard<std::mutex> l(mu);
      deletes_at = delete_starts;
    }
    std::vector<double> p99_f, p99_d;
    std::ostringstream per_window;
    per_window << std::fixed << std::setprecision(1);
    for (size_t w = first; w < windows.size(); ++w) {
      const Clock::time_point start = windows[w].first, end = windows[w].second;
      const char k = kOrder[w - first];
      std::vector<double> lat;
      for (const auto& samples : taken) {
        for (const auto& [t, ms] : samples) {
          if (t >= start && t < end) lat.push_back(ms);
        }
      }
      const int deletes = static_cast<int>(std::count_if(
          deletes_at.begin(), deletes_at.end(),
          [&](Clock::time_point t) { return t >= start && t < end; }));
      const double p99 = Quantile(lat, 0.99);
      (k == 'D' ? p99_d : p99_f).push_back(p99);
      EXPECT_GE(lat.size(), 500u) << "window " << w << ": too few GEMVs to take a p99";
      if (k == 'D') {
        EXPECT_GE(deletes, kMinDeletes) << "window " << w << ": too few deletes";
      } else {
        EXPECT_EQ(deletes, 0) << "window " << w;
      }
      per_window << " " << k << " " << p99 << " (" << lat.size() << ", " << deletes << ")";
    }
    const double f = Quantile(p99_f, 0.25), d = Quantile(p99_d, 0.25);
    ratios.push_back(d / f);
    std::cout << std::fixed << std::setprecision(2) << "attempt " << attempt
              << ", per window: kind, GEMV p99 ms (GEMVs, deletes):" << per_window.str() << "\n"
              << "attempt " << attempt << ": GEMV p99, lower quartile of " << p99_f.size()
              << " windows each: " << f << " ms with the control, " << d
              << " ms with the deletes (" << d / f << "x, bound " << kBound << "x); medians "
              << Quantile(p99_f, 0.5) << " and " << Quantile(p99_d, 0.5) << " ms\n";
    if (d <= kBound * f) break;
  }
  switch_to(0);
  running_.store(false);
  {
    std::lock_guard<std::mutex> l(mu);
    quit = true;
    cv.notify_all();
  }
  loop.join();
  for (StreamClient& s : streams) EXPECT_TRUE(s.session->Finish().ok());

  int errors = 0, wrong = 0;
  std::string first_error;
  for (const StreamClient& s : streams) {
    errors += s.errors;
    wrong += s.wrong;
    if (first_error.empty()) first_error = s.first_error;
  }
  EXPECT_EQ(errors, 0) << "GEMVs failed; the first: " << first_error;
  EXPECT_EQ(wrong, 0) << "GEMV results differ from the unbatched one";
  EXPECT_TRUE(loop_error.empty()) << loop_error;
  std::cout << delete_starts.size() << " deletes (file unlinked, directory fsynced), p50 "
            << Quantile(delete_ms, 0.5) << " ms, p99 " << Quantile(delete_ms, 0.99)
            << " ms; re-uploads p50 " << Quantile(upload_ms, 0.5) << " ms\n";
  std::ostringstream all;
  for (double r : ratios) all << " " << r << "x";
  EXPECT_LE(ratios.back(), kBound)
      << "GEMV p99 with deletes over the control's, each attempt:" << all.str();

  // The last cycle left churn's file; a delete removes it.
  EXPECT_TRUE(std::filesystem::exists(churn_file));
  ASSERT_TRUE(client->DeleteMatrix("churn").ok());
  EXPECT_FALSE(std::filesystem::exists(churn_file));
}

}  // namespace
}  // namespace plume
