// What an absl::Mutex costs with abseil's lock-order (deadlock) check and
// without it. Debian's abseil is built without NDEBUG, so the check is on by
// default: each lock records its order against the locks the thread holds
// in one process-wide graph, under a global spin lock. plume-server turns it
// off at startup (server/main/main.cc); the tests keep it.
// Each thread takes two mutexes of its own, nested, in a loop: no mutex is
// shared, so what the threads contend for is the check's global lock alone.
// Usage: plume_mutex_bench [iterations per thread, default 1000000]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace {

struct alignas(128) Padded {  // one cache line (two, for the prefetcher) each
  absl::Mutex mu;
};

// Nanoseconds per nested lock / unlock pair, `threads` threads at once.
double NsPerPair(int threads, long iters) {
  std::vector<Padded> outer(static_cast<size_t>(threads)), inner(static_cast<size_t>(threads));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (long i = 0; i < iters; ++i) {
        absl::MutexLock a(&outer[static_cast<size_t>(t)].mu);
        absl::MutexLock b(&inner[static_cast<size_t>(t)].mu);
      }
    });
  }
  for (std::thread& th : pool) th.join();
  const auto dt = std::chrono::steady_clock::now() - t0;
  return std::chrono::duration<double, std::nano>(dt).count() / static_cast<double>(iters);
}

}  // namespace

int main(int argc, char** argv) {
  const long iters = argc > 1 ? std::atol(argv[1]) : 1000000;
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  std::vector<int> counts{1};
  for (int n = 2; n <= hw; n *= 2) counts.push_back(n);
  for (const bool check : {true, false}) {
    if (!check) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    for (int n : counts) {
      NsPerPair(n, iters / 10);  // warm-up
      std::printf("lock-order check %-3s threads %3d: %8.1f ns per nested lock/unlock pair\n",
                  check ? "on" : "off", n, NsPerPair(n, iters));
    }
  }
  return 0;
}
