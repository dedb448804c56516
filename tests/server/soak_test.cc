// Soak: PLUME_SOAK_REQUESTS (default 10^6) small GEMV requests through the
// real server on 127.0.0.1:0 and the SDK, 90% over GemvStream (pipelined) and
// 10% unary, on the CPU backend. The process's RSS (server and client share
// it) may grow by less than 5% from 10% to 100% of the run. Not built under
// sanitizers (their allocators hold freed memory on purpose).
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "tests/common/test_server.h"
#include "server/grpc/server.h"
#include "tests/common/gemv_reference.h"

namespace plume {
namespace {

using namespace std::chrono_literals;

int64_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

TEST(Soak, MillionSmallGemvsKeepRssFlat) {
  const char* env = std::getenv("PLUME_SOAK_REQUESTS");
  const int64_t total = env != nullptr ? std::atoll(env) : 1000000;
  ASSERT_GE(total, 1000);
  core::EngineOptions eo = testing::TestEngineOptions();
  eo.store.budget_bytes = int64_t{1} << 28;
  eo.work.worker_threads = 2;
  server::ServerOptions o;
  o.max_stream_in_flight = 256;
  auto test_server = testing::StartTestServer(eo, o, std::make_unique<core::CpuBackend>(1));
  ASSERT_TRUE(test_server.ok()) << test_server.status();
  std::unique_ptr<server::Server>& server = test_server->server;
  ClientOptions co;
  co.target = test_server->address();
  co.default_timeout = 600s;
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok());

  const int64_t rows = 8, cols = 32;
  std::vector<float> w = testing::RandomNormal(rows * cols, 1);
  ASSERT_TRUE((*client)->UploadMatrix({.name = "w"}, TensorRef::F32(w.data(), {rows, cols})).ok());
  std::vector<float> x = testing::RandomNormal(cols, 2);
  auto want = (*client)->Gemv("w", TensorRef::F32(x.data(), {cols}));
  ASSERT_TRUE(want.ok());

  const int64_t unary_total = total / 10, stream_total = total - unary_total;
  std::atomic<int64_t> done{0}, bad{0};
  std::atomic<int64_t> rss_at_10{0};
  auto count = [&](bool ok) {
    if (!ok) bad++;
    if (++done == total / 10) rss_at_10 = RssBytes();
  };
  const auto t0 = std::chrono::steady_clock::now();
  // Two streams, pipelined with callbacks; one unary thread.
  std::vector<std::thread> threads;
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      const int64_t n = stream_total / 2 + (s == 0 ? stream_total % 2 : 0);
      auto session = (*client)->StartGemvSession("w", {.max_in_flight = 256});
      ASSERT_TRUE(session.ok());
      for (int64_t i = 0; i < n; ++i) {
        (*session)->Push(TensorRef::F32(x.data(), {cols}),
                         [&](uint64_t, absl::StatusOr<GemvResult> r) {
                           count(r.ok() && r->output.data == want->data);
                         });
      }
      EXPECT_TRUE((*session)->Finish().ok());
    });
  }
  threads.emplace_back([&] {
    for (int64_t i = 0; i < unary_total; ++i) {
      auto y = (*client)->Gemv("w", TensorRef::F32(x.data(), {cols}));
      count(y.ok() && y->data == want->data);
    }
  });
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t rss_end = RssBytes();
  EXPECT_EQ(done.load(), total);
  EXPECT_EQ(bad.load(), 0);
  ASSERT_GT(rss_at_10.load(), 0);
  const double growth = double(rss_end - rss_at_10) / double(rss_at_10);
  std::printf("soak: %lld requests (%lld streamed, %lld unary) in %.1f s (%.0f/s); RSS %.1f MiB at "
              "10%%, %.1f MiB at 100%%: growth %+.2f%%\n",
              static_cast<long long>(total), static_cast<long long>(stream_total),
              static_cast<long long>(unary_total), secs, double(total) / secs,
              double(rss_at_10) / (1 << 20), double(rss_end) / (1 << 20), 100 * growth);
  EXPECT_LT(growth, 0.05);
  server->Shutdown(1s);
}

}  // namespace
}  // namespace plume
