// MemoryTrimmer: runs its trim every interval and stops at once; with the
// default (glibc's malloc_trim) the free pages under a live block go back to
// the OS. KeepFreedHeapMemory: large blocks come from the heap and stay
// there once freed.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "server/core/memory_trimmer.h"
#include "tests/common/sanitizers.h"

namespace plume::core {
namespace {

using namespace std::chrono_literals;

int64_t RssKiB() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

TEST(MemoryTrimmer, TrimsEveryIntervalAndStopsAtOnce) {
  std::atomic<int> calls{0};
  auto t0 = std::chrono::steady_clock::now();
  {
    MemoryTrimmer trimmer(5ms, [&] { ++calls; });
    while (trimmer.trims() < 3) std::this_thread::sleep_for(1ms);
    EXPECT_GE(calls.load(), 3);
    t0 = std::chrono::steady_clock::now();
  }  // the destructor wakes the thread: no wait for a whole interval
  const int after = calls.load();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(calls.load(), after);  // none after it is gone

  MemoryTrimmer slow(std::chrono::hours(1), [&] { ++calls; });
  EXPECT_EQ(slow.trims(), 0);  // the first one waits for the interval
}

#if defined(__GLIBC__) && !PLUME_SANITIZED
TEST(MemoryTrimmer, GivesBackTheFreePagesUnderALiveBlock) {
  // 64 MiB in 32 KiB blocks (below the mmap threshold: from the heap), one
  // small block above them, then the 64 MiB freed: glibc alone cannot trim
  // the heap's top past the live block.
  std::vector<char*> blocks;
  for (int i = 0; i < 2048; ++i) {
    blocks.push_back(static_cast<char*>(std::malloc(32 << 10)));
    for (int j = 0; j < (32 << 10); j += 4096) blocks.back()[j] = 1;  // make it resident
  }
  char* pin = static_cast<char*>(std::malloc(64));
  pin[0] = 1;
  for (char* b : blocks) std::free(b);
  const int64_t before = RssKiB();
  {
    MemoryTrimmer trimmer(1ms);
    while (trimmer.trims() < 1) std::this_thread::sleep_for(1ms);
  }
  const int64_t after = RssKiB();
  std::free(pin);
  // free() may hand some back itself; at least a quarter stays until the trim.
  EXPECT_LT(after, before - 16 * 1024) << "RSS " << before << " KiB before the trim, " << after
                                       << " KiB after";
}

// Last in this file: it changes the process's malloc settings for good.
TEST(KeepFreedHeapMemory, LargeBlocksComeFromTheHeapAndStayThereOnceFreed) {
  KeepFreedHeapMemory();
  const struct mallinfo2 m0 = mallinfo2();
  constexpr size_t kBlock = size_t{8} << 20;  // glibc maps one this size on its own by default
  char* b = static_cast<char*>(std::malloc(kBlock));
  ASSERT_NE(b, nullptr);
  for (size_t j = 0; j < kBlock; j += 4096) b[j] = 1;
  const struct mallinfo2 m1 = mallinfo2();
  EXPECT_EQ(m1.hblks, m0.hblks) << "the block got a mapping of its own";
  std::free(b);
  const struct mallinfo2 m2 = mallinfo2();
  EXPECT_GE(m2.fordblks, kBlock) << "the freed block was given back at once";
  // Taken again without growing the heap.
  char* again = static_cast<char*>(std::malloc(kBlock));
  EXPECT_LE(mallinfo2().arena, m2.arena);
  std::free(again);
}
#endif

}  // namespace
}  // namespace plume::core
